"""The declared stack on a real Docker engine: the scenarios of the process stack's e2e tests,
and those only an engine can show (restart policy, `docker stop`, cgroup limits, users, volumes,
published ports). Load goes only to the balancer's published 127.0.0.1 port; containers talk
to each other on the network the stack creates.

Latency bound while replicas come and go: no request slower than SLOW_BOUND_S (a retry on
another replica costs milliseconds; the 2 s connect timeout to a vanished address would not fit).
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from app import contract
from enginestack.build import build_image
from procstack.loadgen import Load, LoadRun
from stackconfig.names import LABEL_ROLE, ONE_SHOT_ROLES, ROLE_BALANCER, ROLE_MLFLOW, ROLE_REPLICA, ROLES
from tests.engine.conftest import STACK, Running

pytestmark = pytest.mark.engine

SLOW_BOUND_S = 1.5
LOAD = {"concurrency": 4, "max_requests": 200_000, "timeout_s": 30.0}


def _failed(run: LoadRun) -> list[Any]:
    return run.failures


def _slowest(run: LoadRun) -> float:
    return max((a.duration for a in run.answers), default=0.0)


def _under_load(running: Running, action: Any, *, settle_s: float = 3.0, max_s: float = 600.0) -> LoadRun:
    load = Load(running.entry, max_seconds=max_s, **LOAD).start()
    try:
        time.sleep(settle_s)
        action()
        time.sleep(settle_s)
    finally:
        run = load.stop()
    assert run.answers, "the load loop sent nothing"
    return run


def _wait(predicate: Any, what: str, deadline_s: float = 180.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def _health(c: Any) -> str:
    return str((c.attrs["State"].get("Health") or {}).get("Status", "-"))


def test_every_container_healthy(running: Running) -> None:
    containers = running.containers()
    roles = {(c.labels or {}).get(LABEL_ROLE) for c in containers}
    assert roles == set(ROLES)
    for c in containers:
        role = c.labels[LABEL_ROLE]
        if role in ONE_SHOT_ROLES:
            assert c.attrs["State"]["Status"] == "exited" and c.attrs["State"]["ExitCode"] == 0, c.name
        else:
            assert c.status == "running" and _health(c) == "healthy", (c.name, c.status, _health(c))


def test_only_the_balancer_publishes_a_port(running: Running) -> None:
    for c in running.containers():
        bindings = c.attrs["HostConfig"].get("PortBindings") or {}
        if c.labels[LABEL_ROLE] == ROLE_BALANCER:
            assert bindings == {f"{contract.BALANCER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(running.port)}]}
        else:
            assert not bindings, c.name
        assert c.attrs["HostConfig"]["NetworkMode"] != "host"
        assert set(c.attrs["NetworkSettings"]["Networks"]) <= {f"mlserve-{STACK}"}, c.name


def test_declared_limits_are_in_force(running: Running) -> None:
    declared = {r.inputs["name"]: r.inputs for r in running.stack.declare(running.config, build=False)[0].replicas()}
    for c in running.containers(ROLE_REPLICA):
        inputs = declared[c.name]
        host = c.attrs["HostConfig"]
        assert host["Memory"] == inputs["memory"] * 2**20 and host["MemorySwap"] == inputs["memorySwap"] * 2**20
        assert host["NanoCpus"] == int(float(inputs["cpus"]) * 1e9)
        assert host["ShmSize"] == inputs["shmSize"] * 2**20
        # What the kernel enforces, read inside the container (cgroup v1 on this engine).
        out = c.exec_run(["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
                                        " /sys/fs/cgroup/cpu/cpu.cfs_period_us; df -B1 /dev/shm | tail -1"])
        assert out.exit_code == 0, out.output
        memory, quota, period, shm = out.output.decode().split("\n")[:4]
        assert int(memory) == inputs["memory"] * 2**20
        assert int(quota) / int(period) == pytest.approx(float(inputs["cpus"]))
        assert int(shm.split()[1]) == inputs["shmSize"] * 2**20


def test_cpu_sets_pin_the_replicas_in_place_and_size_the_balancers_workers(running: Running) -> None:
    """replicaCpuSet is a `docker update` of the running replicas, as the provider makes it;
    balancerCpuSet also sets nginx's worker count, so the balancer is re-created."""
    from components.balancer import CONF_PATH

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("a single CPU: nothing to keep apart")
    every = ",".join(str(c) for c in cpus)
    replica_ids = {c.name: c.id for c in running.containers(ROLE_REPLICA)}
    assert len(replica_ids) == 2
    try:
        running.up(replicaCpuSet=str(cpus[0]), balancerCpuSet=str(cpus[1]))
        pinned = [(c, str(cpus[0])) for c in running.containers(ROLE_REPLICA)] + [(running.container("balancer"), str(cpus[1]))]
        for c, want in pinned:
            assert c.attrs["HostConfig"]["CpusetCpus"] == want, c.name
            # What the kernel enforces (cgroup v1 on this engine).
            out = c.exec_run(["cat", "/sys/fs/cgroup/cpuset/cpuset.cpus"])
            assert out.exit_code == 0 and out.output.decode().strip() == want, (c.name, out.output)
        assert {c.name: c.id for c in running.containers(ROLE_REPLICA)} == replica_ids
        conf = running.container("balancer").exec_run(["cat", CONF_PATH]).output.decode()
        assert "\nworker_processes 1;\n" in conf
    finally:
        # Unsetting the keys would leave the containers pinned: Docker's update ignores an
        # empty cpuset, and the provider sends one. Every CPU first, then unset.
        running.up(replicaCpuSet=every, balancerCpuSet=every)
        running.up(replicaCpuSet=None, balancerCpuSet=None)
    assert {c.name: c.id for c in running.containers(ROLE_REPLICA)} == replica_ids


def test_replicas_watch_their_own_cpu_quota(running: Running) -> None:
    """The throttled batch wait (app/server/throttle.py) reads the cpu.stat of the container's
    own cgroup: the cgroup whose quota is the declared `cpus`, not the host's root."""
    declared = {r.inputs["name"]: r.inputs for r in running.stack.declare(running.config, build=False)[0].replicas()}
    script = ("from app.server.throttle import QuotaWatch\n"
              "path = QuotaWatch.for_this_process().path\n"
              "print(path)\n"
              "print(int((path.parent / 'cpu.cfs_quota_us').read_text()) / int((path.parent / 'cpu.cfs_period_us').read_text()))")
    replicas = running.containers(ROLE_REPLICA)
    assert replicas
    for c in replicas:
        out = c.exec_run(["python", "-c", script])
        assert out.exit_code == 0, out.output
        path, cpus = out.output.decode().split()
        assert path.startswith("/sys/fs/cgroup/cpu") and path.endswith("/cpu.stat"), path
        assert float(cpus) == pytest.approx(float(declared[c.name]["cpus"])), c.name


def test_processes_are_not_root(running: Running) -> None:
    for c in running.containers(ROLE_REPLICA) + running.containers(ROLE_MLFLOW):
        top = c.top(ps_args="-o pid,uid,comm")
        column = top["Titles"].index("UID")
        uids = {int(p[column]) for p in top["Processes"]}
        assert uids == {10001}, (c.name, top["Processes"])


def _model_dir_of(replica: Any, tmp_path: Path) -> Path:
    """The model the replica serves, copied out of the container (its per-version directory)."""
    found = replica.exec_run(["sh", "-c", "dirname $(ls /tmp/mlserve-v1-*/MLmodel /tmp/mlserve-v1-*/*/MLmodel 2>/dev/null | head -1)"]).output.decode().strip()
    assert found, "no model directory in the replica"
    stream, _ = replica.get_archive(found)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / Path(found).name


def test_scoring_matches_mlflow_models_serve(running: Running, tmp_path: Path) -> None:
    """The conformance inputs (tests/app: 18 accepted and 24 refused inputs answered as
    MLflow answers them, and the 4 where we differ on purpose) through the published entry,
    against `mlflow models serve` on the very model the replicas serve."""
    from procstack import solo
    from tests.app import test_replica_conformance as conf

    model = _model_dir_of(running.containers(ROLE_REPLICA)[0], tmp_path)
    serve = solo.start_mlflow_serve("", str(model), tmp_path)
    try:
        cases = {**conf.GOOD, **conf.BAD}
        for name, (ct, body) in sorted(cases.items()):
            theirs = conf._post(serve.url, ct, body)
            ours = conf._post(running.entry, ct, body)
            try:
                conf._compare(ours, theirs)
            except AssertionError as exc:
                raise AssertionError(f"case {name}: {exc}") from exc
        # Deliberate differences (app/README.md, "Errors"): MLflow's answer as the suite
        # records it, ours always JSON in MLflow's error shape, the balancer passing it on.
        for name, (ct, body, (their_status, their_json), (our_status, our_code)) in sorted(conf.DIFFERENT.items()):
            theirs = conf._post(serve.url, ct, body)
            ours = conf._post(running.entry, ct, body)
            assert theirs.status_code == their_status, (name, theirs.text[:300])
            assert theirs.headers.get("content-type", "").startswith("application/json") == their_json, name
            assert ours.status_code == our_status and ours.headers["content-type"] == "application/json", (name, ours.text[:300])
            assert ours.json()["error_code"] == our_code and ours.json()["message"], (name, ours.text[:300])
    finally:
        serve.stop()


def test_weights_split_the_traffic(running: Running) -> None:
    balancer = running.container("balancer").id
    first = running.container("replica-0").id
    running.up(weights=[1, 3])
    assert running.container("balancer").id == balancer and running.container("replica-0").id == first
    from procstack.loadgen import run_for

    _wait(lambda: len(run_for(running.entry, 1.0, concurrency=2, max_requests=50).instances()) == 2, "both replicas in rotation")
    run = run_for(running.entry, 6.0, concurrency=4, max_requests=2000)
    counts = run.instances()
    n = sum(counts.values())
    assert not run.failures
    share = counts[f"mlserve-{STACK}-replica-1"] / n
    assert abs(share - 0.75) < 0.1, counts


def test_sigkill_of_a_replica_under_load(running: Running) -> None:
    victim = running.container("replica-0")
    restarts = victim.attrs["RestartCount"]
    # The process, killed from the host: `docker kill` would count as a stop by hand, which
    # unless-stopped never restarts.
    pid = victim.attrs["State"]["Pid"]
    run = _under_load(running, lambda: os.kill(pid, signal.SIGKILL))
    assert not _failed(run), _failed(run)[:5]
    _wait(lambda: running.container("replica-0").attrs["RestartCount"] == restarts + 1
          and _health(running.container("replica-0")) == "healthy", "the restart policy to bring replica-0 back")


def test_docker_stop_of_a_replica_under_load(running: Running) -> None:
    victim = running.container("replica-1")
    run = _under_load(running, lambda: victim.stop(timeout=60))
    stopped = running.container("replica-1")
    assert stopped.attrs["State"]["ExitCode"] == 0 and stopped.status == "exited"
    assert not _failed(run), _failed(run)[:5]
    assert _slowest(run) < SLOW_BOUND_S
    # A replica stopped by hand stays stopped (unless-stopped) until the next `up` starts it.
    steps = running.up().changed()
    assert [(s.op, s.name) for s in steps] == [("start", f"mlserve-{STACK}-replica-1")]
    _wait(lambda: _health(running.container("replica-1")) == "healthy", "replica-1 healthy again")


def test_scaling_out_and_in_under_load(running: Running) -> None:
    balancer = running.container("balancer")
    started = balancer.attrs["State"]["StartedAt"]
    out = _under_load(running, lambda: running.up(replicas=4, weights=[1, 3, 1, 1]))
    assert len(running.containers(ROLE_REPLICA)) == 4
    back = _under_load(running, lambda: running.up(replicas=2, weights=[1, 3]))
    assert [c.name for c in running.containers(ROLE_REPLICA)] == [f"mlserve-{STACK}-replica-0", f"mlserve-{STACK}-replica-1"]
    after = running.container("balancer")
    assert after.id == balancer.id and after.attrs["State"]["StartedAt"] == started
    for run in (out, back):
        assert not _failed(run), _failed(run)[:5]
        assert _slowest(run) < SLOW_BOUND_S, _slowest(run)


def test_alias_promotion_under_load(running: Running) -> None:
    ids = {c.name: c.id for c in running.containers()}
    replica = running.container("replica-0")
    env = dict(e.split("=", 1) for e in replica.attrs["Config"]["Env"])
    keep = (contract.ENV_TRACKING_URI, contract.ENV_MODEL_NAME, contract.ENV_MODEL_ALIAS)

    promoted: list[str] = []

    def serving(name: str) -> str:
        probe = ("import urllib.request, json; print(json.load(urllib.request.urlopen("
                 f"'http://127.0.0.1:{contract.REPLICA_PORT}{contract.ROUTE_HEALTH}'))['model']['version'])")
        return str(running.container(name).exec_run(["python", "-c", probe]).output.decode().strip())

    def promote() -> None:
        out = running.engine.containers.run(
            replica.image.id, ["python", "-m", contract.TRAINER_MODULE, "--c", "0.05", "--promote"],
            environment={k: env[k] for k in keep}, network=f"mlserve-{STACK}", remove=True, stderr=True,
        )
        report = json.loads(out.decode().strip().splitlines()[-1])
        promoted.append(str(report["version"]))
        for name in ("replica-0", "replica-1"):
            _wait(lambda name=name: serving(name) == promoted[0], f"{name} serving version {promoted[0]}", 60)

    run = _under_load(running, promote)
    assert not _failed(run), _failed(run)[:5]
    assert {a.version for a in run.answers[-20:]} == set(promoted)
    assert {c.name: c.id for c in running.containers()} == ids


def test_an_image_change_rolls_the_replicas_one_at_a_time(running: Running) -> None:
    from mockrun import run_program

    declared, built = running.stack.declare(running.config)
    replica_tag = next(name for name in built if "replica" in name)
    # The same build with one more label: another image ID, what a code change gives. Built
    # with BuildKit as the app images are: the classic builder would leave an intermediate
    # container of the replica image behind whenever removing it fails.
    rebuilt = build_image(running.engine, context=Path(__file__).parent, dockerfile="rebuild.Dockerfile",
                          tag=f"{replica_tag}-rebuilt", args={"BASE": replica_tag}, log=lambda line: None)
    image = running.engine.images.get(rebuilt.image_id)
    ids = {name: b.image_id for name, b in built.items()} | {replica_tag: image.id}
    before = {c.name: c.id for c in running.containers(ROLE_REPLICA)}
    changed = run_program(STACK, running.config, image_ids=ids)
    try:
        run = _under_load(running, lambda: running.stack.apply(changed))
        replicas = running.containers(ROLE_REPLICA)
        assert all(c.image.id == image.id for c in replicas)
        assert all(before[c.name] != c.id for c in replicas)
        assert not _failed(run), _failed(run)[:5]
        # One at a time: every moment of the rollout some replica answered.
        seconds = {int(a.t) for a in run.answers if a.status == 200}
        assert seconds >= set(range(int(run.answers[0].t) + 1, int(run.answers[-1].t))), "a second without answers"
    finally:
        running.stack.apply(declared)  # back to the image of the declared build
        running.engine.images.remove(f"{replica_tag}-rebuilt", force=True)


def test_mariadb_data_survives_recreating_its_container(running: Running) -> None:
    mysql = running.container("mysql")
    env = dict(e.split("=", 1) for e in mysql.attrs["Config"]["Env"])
    running.stack.delete_container(mysql)
    steps = running.up().changed()
    assert ("create", f"mlserve-{STACK}-mysql") in [(s.op, s.name) for s in steps]
    again = running.container("mysql")
    assert again.id != mysql.id
    out = again.exec_run(["mariadb", "-uroot", f"-p{env['MYSQL_ROOT_PASSWORD']}", "-N", "-e",
                          "SELECT name FROM mlflow.registered_models"])
    assert out.exit_code == 0, out.output
    assert b"iris-classifier" in out.output.split()
