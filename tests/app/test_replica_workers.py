"""A replica of several serving processes (MLSERVE_WORKERS, app/server/supervisor.py) keeps
every promise of a one-process replica for the replica as a whole: metrics add up across its
processes and survive one that dies, a killed process is replaced while the replica stays
ready, the processes never outlive the supervisor, and shadow comparison and payload logs
count every request once. Promotion and drain with several processes are the one-process
tests, parametrized (test_replica_promotion.py, test_replica_shutdown.py); the conformance
suite runs against two processes too (conftest.py)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import contract
from app.replay import read_records
from procstack import solo as rp
from tests.support import wait_until

pytestmark = pytest.mark.live

COLS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
BODY = json.dumps({"dataframe_split": {"columns": COLS, "data": [[6.1, 2.8, 4.7, 1.2]]}}).encode()
BAD = b'{"dataframe_split": {"columns": ["nope"], "data": [[1]]}}'
WORKERS = 2


def _post(p: rp.Proc, body: bytes = BODY, headers: dict[str, str] | None = None) -> httpx.Response:
    # A new connection each time: the supervisor gives each to the process with the fewest.
    return httpx.post(p.url + contract.ROUTE_INVOCATIONS, content=body,
                      headers={"Content-Type": "application/json", **(headers or {})}, timeout=30)


def _health(p: rp.Proc) -> dict[str, Any]:
    return httpx.get(p.url + contract.ROUTE_HEALTH, timeout=10).json()


def _metrics(p: rp.Proc) -> dict[str, float]:
    out = {}
    for line in httpx.get(p.url + contract.ROUTE_METRICS, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _pids(p: rp.Proc) -> dict[int, int | None]:
    return {w["index"]: w["pid"] for w in _health(p)["workers"]["processes"]}


def _all_serving(p: rp.Proc, n: int = WORKERS) -> bool:
    workers = _health(p)["workers"]
    return workers["serving"] == n and all(w["state"] == "serving" for w in workers["processes"])


@pytest.fixture
def replica2(tracking: rp.Proc, trained: dict[str, object], workdir: Path) -> Iterator[rp.Proc]:
    proc = rp.start_replica(tracking.url, str(trained["model"]), str(trained["alias"]), workdir,
                            **{contract.ENV_WORKERS: str(WORKERS)})
    try:
        wait_until(lambda: _all_serving(proc), 60, "every process serving")
        yield proc
    finally:
        proc.stop()


def test_metrics_add_up_across_processes_and_survive_a_dead_one(replica2: rp.Proc) -> None:
    good, bad = 120, 7
    for _ in range(good):
        assert _post(replica2).status_code == 200
    for _ in range(bad):
        assert _post(replica2, BAD).status_code == 400
    served = [w["served"] for w in _health(replica2)["workers"]["processes"]]
    assert len(served) == WORKERS and sum(served) == good and min(served) > 0, served
    key_ok = 'mlserve_replica_requests_total{route="/invocations",status="200"}'
    key_bad = 'mlserve_replica_requests_total{route="/invocations",status="400"}'
    # Scraped over fresh connections, i.e. from each process in turn: the same replica totals.
    for _ in range(2 * WORKERS):
        m = _metrics(replica2)
        assert m[key_ok] == good and m[key_bad] == bad, {k: v for k, v in m.items() if "requests_total" in k}
        assert m['mlserve_replica_request_duration_seconds_count{route="/invocations"}'] == good + bad
        assert m['mlserve_replica_workers{state="configured"}'] == WORKERS
        assert m['mlserve_replica_workers{state="serving"}'] == WORKERS
        assert m["mlserve_replica_model_version"] == 1.0
        assert m["mlserve_replica_in_flight_requests"] == 0.0
        assert m["mlserve_replica_worker_restarts_total"] == 0.0

    victim = _pids(replica2)[0]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: _pids(replica2)[0] not in (None, victim) and _all_serving(replica2), 60, "the replacement")
    m = _metrics(replica2)
    # The dead process's figures stay in the totals (counters must never go back).
    assert m[key_ok] == good and m[key_bad] == bad
    assert m["mlserve_replica_worker_restarts_total"] == 1.0
    health = _health(replica2)
    assert health["state"] == "ready" and health["workers"]["restarts"] == 1
    last = health["workers"]["processes"][0]["last_exit"]
    assert last["pid"] == victim and last["signal"] == "SIGKILL"


def test_a_killed_process_is_replaced_while_the_replica_stays_ready_under_load(replica2: rp.Proc) -> None:
    """Without a balancer in front, the requests the killed process held fail (nginx retries
    those elsewhere: tests/app/test_replica_kill.py); nothing else does, and /ready goes on
    answering 200 (Docker's healthcheck and the rollout keep the replica)."""
    stop = threading.Event()
    answers: list[rp.Answer] = []
    ready: list[int | str] = []

    def probe() -> None:
        while not stop.is_set():
            try:
                ready.append(httpx.get(replica2.url + contract.ROUTE_READY, timeout=5).status_code)
            except httpx.HTTPError as exc:
                ready.append(repr(exc))
            time.sleep(0.02)  # probe interval

    threads = 8
    loader = threading.Thread(target=lambda: answers.extend(
        rp.run_load(replica2.url, BODY, threads=threads, max_requests=1_000_000, max_seconds=90, stop=stop)))
    prober = threading.Thread(target=probe)
    loader.start()
    prober.start()
    try:
        wait_until(lambda: sum(w["served"] for w in _health(replica2)["workers"]["processes"]) > 500, 30, "load")
        victim = _pids(replica2)[1]
        assert victim is not None
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _pids(replica2)[1] not in (None, victim) and _all_serving(replica2), 60, "the replacement")
        # /ready probed after the replacement too (the prober's count, not a duration).
        probed = len(ready)
        wait_until(lambda: len(ready) >= probed + 10, 30, "probes after the replacement")
        # The replacement takes connections once it is ready: fresh ones go to it first.
        before = _health(replica2)["workers"]["processes"][1]["served"]
        for _ in range(4):
            assert _post(replica2).status_code == 200
    finally:
        stop.set()
        loader.join(120)
        prober.join(30)
    assert _health(replica2)["workers"]["processes"][1]["served"] > before
    # /ready answered throughout, but for at most the probe in flight on the killed process.
    assert sum(1 for s in ready if s != 200) <= 1, [s for s in ready if s != 200][:5]
    statuses = {a.status for a in answers}
    assert statuses <= {200, None}, statuses  # no error answer, only broken connections
    lost = [a for a in answers if a.status is None]
    # At most what the killed process held: one request per connection it had.
    assert len(lost) <= threads, lost[:5]
    assert sum(1 for a in answers if a.sent > killed_at and a.status == 200) > 100


def _accept_queue(port: int) -> int:
    """Connections waiting in the listening socket's accept queue (/proc/net/tcp's rx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def test_a_connection_handed_to_a_process_that_dies_before_taking_it_goes_to_another(replica2: rp.Proc) -> None:
    """A process that stops reading its control socket and then dies: the connections handed to
    it meanwhile were never its (still queued on its control socket, whose end the supervisor
    holds too), so the other process answers them instead of their being reset."""
    victim = _pids(replica2)[1]
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)
    count = 4  # least-connections with every one held open: the stopped process gets some
    conns = [http.client.HTTPConnection(rp.HOST, replica2.port, timeout=60) for _ in range(count)]
    statuses: list[int | str | None] = [None] * count
    try:
        for conn in conns:
            conn.request("POST", contract.ROUTE_INVOCATIONS, body=BODY, headers={"Content-Type": "application/json"})

        def answer(i: int) -> None:
            try:
                response = conns[i].getresponse()
                response.read()
                statuses[i] = response.status
            except OSError as exc:
                statuses[i] = repr(exc)

        readers = [threading.Thread(target=answer, args=(i,)) for i in range(count)]
        for t in readers:
            t.start()
        # Every connection accepted, so handed to one process or the other.
        wait_until(lambda: _accept_queue(replica2.port) == 0, 30, "the supervisor to accept every connection")
        wait_until(lambda: sum(s is not None for s in statuses) >= 1, 30, "the live process to answer")
        os.kill(victim, signal.SIGKILL)
        for t in readers:
            t.join(60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        for conn in conns:
            conn.close()
    assert statuses == [200] * count, statuses
    handed_on = [json.loads(line) for line in replica2.log_path.read_text().splitlines()
                 if "never received handed to another" in line]
    assert handed_on and handed_on[0]["connections"] >= 1, handed_on
    wait_until(lambda: _pids(replica2)[1] not in (None, victim) and _all_serving(replica2), 60, "the replacement")


def test_a_replica_pinned_to_fewer_cpus_than_processes_says_so(tracking: rp.Proc, trained: dict[str, object],
                                                                 workdir: Path) -> None:
    proc = rp.start_replica(tracking.url, str(trained["model"]), str(trained["alias"]), workdir, cpus="0",
                            **{contract.ENV_WORKERS: str(WORKERS)})
    try:
        wait_until(lambda: _all_serving(proc), 60, "every process serving")
        said = [json.loads(line) for line in proc.log_path.read_text().splitlines() if "take turns" in line]
        assert said and (said[0]["workers"], said[0]["cpus"]) == (WORKERS, 1), said
        assert said[0]["level"] == "warning", said
    finally:
        proc.stop()


def test_the_workers_never_outlive_the_supervisor(tracking: rp.Proc, trained: dict[str, object],
                                                  workdir: Path) -> None:
    proc = rp.start_replica(tracking.url, str(trained["model"]), str(trained["alias"]), workdir,
                            **{contract.ENV_WORKERS: str(WORKERS)})
    try:
        wait_until(lambda: _all_serving(proc), 60, "every process serving")
        pids = [p for p in _pids(proc).values() if p is not None]
        assert len(pids) == WORKERS
        proc.signal(signal.SIGKILL)
        assert proc.popen is not None
        proc.popen.wait(10)

        def gone() -> bool:
            for pid in pids:
                with contextlib.suppress(OSError):
                    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        return False
            return True

        wait_until(gone, 30, "the workers to exit")
        # Nothing listens on the replica's port any more.
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((rp.HOST, proc.port))
    finally:
        proc.stop()


def test_shadow_comparison_and_payload_logs_count_each_request_once(tracking: rp.Proc, trained: dict[str, object],
                                                                     workdir: Path) -> None:
    """A shadow of two processes: each mirrored copy is compared once, by the process that got it,
    with the primary's version (loaded by every process), and every sampled request lands in
    the payload log once, in objects the processes name apart."""
    model, alias = str(trained["model"]), str(trained["alias"])
    group = "shadow2"
    proc = rp.start_replica(tracking.url, model, alias, workdir,
                            **{contract.ENV_WORKERS: str(WORKERS), contract.ENV_COMPARE_ALIAS: alias,
                               contract.ENV_GROUP: group, contract.ENV_PAYLOAD_LOG_PERCENT: "100",
                               contract.ENV_PAYLOAD_LOG_FLUSH_S: "0.2"})
    n = 40
    try:
        wait_until(lambda: _all_serving(proc), 60, "every process serving")
        agree = 'mlserve_replica_shadow_requests_total{outcome="agree",primary_version="1",version="1"}'

        def compared() -> tuple[float, float]:
            m = _metrics(proc)
            return m.get(agree, 0.0), sum(v for k, v in m.items() if k.startswith("mlserve_replica_shadow_requests_total"))

        # The primary's version loads after the replica's own (as in one process): until it
        # serves, a copy counts as `error`. Warm-up copies until one agrees.
        def warm() -> bool:
            _post(proc, headers={contract.HEADER_MIRRORED: "1", contract.HEADER_REQUEST_ID: "warm-up"})
            return compared()[0] > 0

        wait_until(warm, 60, "the primary's version in the shadow")
        wait_until(lambda: _all_serving(proc), 60, "every process serving")
        base = compared()
        for i in range(n):
            r = _post(proc, headers={contract.HEADER_MIRRORED: "1", contract.HEADER_REQUEST_ID: f"w-{i}"})
            assert r.status_code == 200
        served = [w["served"] for w in _health(proc)["workers"]["processes"]]
        assert min(served) > 0, served
        assert compared() == (base[0] + n, base[1] + n), (base, compared())

        def logged() -> list[dict[str, Any]]:
            return [r for r in read_records(tracking.url, model, group, "1", 10_000) if r["request_id"].startswith("w-")]

        wait_until(lambda: len(logged()) >= n, 30, "the payload logs")
        ids = sorted(r["request_id"] for r in logged())
        assert ids == sorted(f"w-{i}" for i in range(n))
    finally:
        proc.stop()
