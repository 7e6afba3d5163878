"""The engine stand-in's mapping of declared inputs to Docker API fields (no engine needed):
each check restates what pulumi-docker's container create does with that input."""

from __future__ import annotations

import io
import tarfile
import threading
from types import SimpleNamespace

import pytest

from enginestack import mapping
from enginestack.apply import ApplyError, EngineStack, Step, _graph, _order, inputs_digest
from mockrun import DeclaredResource, DeclaredStack, run_program
from stackconfig.names import ROLE_BALANCER, ROLE_REPLICA


@pytest.fixture(scope="module")
def dev() -> DeclaredStack:
    return run_program("dev")


@pytest.mark.parametrize(("text", "nanos"), [("10s", 10 * 10**9), ("2s", 2 * 10**9), ("1m30s", 90 * 10**9), ("500ms", 5 * 10**8), ("1.5s", 15 * 10**8), ("0", 0)])
def test_durations_parse_like_go(text: str, nanos: int) -> None:
    assert mapping.parse_duration(text) == nanos


@pytest.mark.parametrize("bad", ["10", "s", "1x", "10s5"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(mapping.MappingError):
        mapping.parse_duration(bad)


def test_cpus_become_nano_cpus_exactly() -> None:
    assert mapping.parse_cpus("1") == 10**9
    assert mapping.parse_cpus("1.5") == 1_500_000_000
    assert mapping.parse_cpus("0.25") == 250_000_000
    with pytest.raises(mapping.MappingError):
        mapping.parse_cpus("0.0000000001")


def test_replica_body(dev: DeclaredStack) -> None:
    replica = dev.replicas()[0]
    inputs = replica.inputs
    spec = mapping.container_spec(inputs)
    body, host = spec.body, spec.body["HostConfig"]
    assert body["Image"] == inputs["image"] and body["Cmd"] == inputs["command"] and body["Env"] == inputs["envs"]
    assert body["Hostname"] == inputs["hostname"]
    assert host["Memory"] == inputs["memory"] * 2**20 and host["MemorySwap"] == inputs["memorySwap"] * 2**20
    assert host["ShmSize"] == inputs["shmSize"] * 2**20
    assert host["NanoCpus"] == int(float(inputs["cpus"]) * 10**9)
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["LogConfig"] == {"Type": inputs["logDriver"], "Config": inputs["logOpts"]}
    assert host["Init"] is False
    hc = inputs["healthcheck"]
    assert body["Healthcheck"] == {
        "Test": hc["tests"],
        "Interval": mapping.parse_duration(hc["interval"]),
        "Timeout": mapping.parse_duration(hc["timeout"]),
        "StartPeriod": mapping.parse_duration(hc["startPeriod"]),
        "StartInterval": mapping.parse_duration(hc["startInterval"]),
        "Retries": hc["retries"],
    }
    assert body["StopTimeout"] == inputs["stopTimeout"] and spec.destroy_grace_s == inputs["destroyGraceSeconds"]
    assert body["Labels"]["mlserve.role"] == ROLE_REPLICA
    assert "PortBindings" not in host and "ExposedPorts" not in body
    (net,) = spec.networks
    assert net.name == inputs["networksAdvanced"][0]["name"] and list(net.aliases) == inputs["networksAdvanced"][0]["aliases"]
    assert spec.wait and spec.wait_timeout_s == inputs["waitTimeout"] and spec.must_run and not spec.attach


def test_balancer_publishes_and_uploads(dev: DeclaredStack) -> None:
    (balancer,) = dev.by_role(ROLE_BALANCER)
    spec = mapping.container_spec(balancer.inputs)
    port = balancer.inputs["ports"][0]
    key = f"{port['internal']}/tcp"
    assert spec.body["ExposedPorts"] == {key: {}}
    assert spec.body["HostConfig"]["PortBindings"] == {key: [{"HostPort": str(port["external"]), "HostIp": port["ip"]}]}
    assert spec.body["StopSignal"] == balancer.inputs["stopSignal"]
    assert {u.file for u in spec.uploads} == {u["file"] for u in balancer.inputs["uploads"]}
    upload = spec.uploads[0]
    with tarfile.open(fileobj=io.BytesIO(mapping.upload_tar(upload))) as tar:
        (member,) = tar.getmembers()
        assert member.name == upload.file and member.mode == 0o644  # the provider names the entry by its absolute path
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == upload.content


def test_volumes_bind_named_volumes(dev: DeclaredStack) -> None:
    mysql = dev.by_role("mysql")[0]
    spec = mapping.container_spec(mysql.inputs)
    volume = mysql.inputs["volumes"][0]
    assert spec.body["HostConfig"]["Binds"] == [f"{volume['volumeName']}:{volume['containerPath']}:rw"]


def test_jobs_attach_and_need_not_run(dev: DeclaredStack) -> None:
    for job in dev.by_role("minio-bucket") + dev.by_role("trainer"):
        spec = mapping.container_spec(job.inputs)
        assert spec.attach and not spec.must_run and not spec.wait
        assert spec.body["HostConfig"]["RestartPolicy"]["Name"] == "no"


def test_gpu_requests_pass_through() -> None:
    every = run_program("dev", {"gpuMode": "all"}).replicas()[0]
    assert mapping.container_spec(every.inputs).body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
    ]
    devices = run_program("dev", {"gpuMode": "devices", "gpuCount": 1, "gpuDeviceIds": ["0", "1"]}).replicas()
    requests = [mapping.container_spec(r.inputs).body["HostConfig"]["DeviceRequests"] for r in devices]
    assert requests[0] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["0"], "Capabilities": [["gpu"]], "Options": {}}]
    assert requests[1][0]["DeviceIDs"] == ["1"]


def test_dependency_order_follows_the_declared_chain(dev: DeclaredStack) -> None:
    order = [r.name for r in _order(dev)]
    assert order.index("net") < order.index("mysql") < order.index("mlflow") < order.index("trainer") < order.index("replica-0")
    assert order.index("minio") < order.index("minio-bucket") < order.index("mlflow")
    assert order.index("replica-0") < order.index("replica-1")
    assert order.index("replica-image") < order.index("trainer")


class Recording(EngineStack):
    """The applier's scheduling with every step recorded instead of sent to an engine."""

    def __init__(self, hold: dict[str, str] | None = None, fail: str | None = None) -> None:
        super().__init__("dev", client=SimpleNamespace(api=None), log=lambda line: None)  # type: ignore[arg-type]
        self.hold = hold or {}  # step -> the step that must have started before it may finish
        self.fail = fail
        self.lock = threading.Lock()
        self.started: dict[str, threading.Event] = {}
        self.events: list[tuple[str, str]] = []
        self.waited_in_vain: list[str] = []

    def _event(self, name: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(name, threading.Event())

    def _apply_one(self, r: DeclaredResource) -> Step | None:
        with self.lock:
            self.events.append(("start", r.name))
        self._event(r.name).set()
        if r.name in self.hold and not self._event(self.hold[r.name]).wait(timeout=10):
            self.waited_in_vain.append(r.name)
        if r.name == self.fail:
            raise ApplyError(f"{r.name} failed")
        with self.lock:
            self.events.append(("end", r.name))
        return Step("create", r.name)

    def running(self) -> list[object]:
        return []


def test_independent_steps_run_side_by_side_and_each_waits_for_what_it_depends_on(dev: DeclaredStack) -> None:
    # mysql finishes only once minio has started: run one at a time, it would wait in vain.
    stack = Recording(hold={"mysql": "minio", "minio": "mysql"})
    steps = stack.apply(dev).steps
    assert stack.waited_in_vain == []
    nodes, deps = _graph(dev)
    names = {r.urn: r.name for r in nodes}
    assert {s.name for s in steps} == set(names.values()) >= {"net", "mysql", "minio", "balancer", "replica-0"}
    ends = [name for kind, name in stack.events if kind == "end"]
    for r in nodes:
        start = stack.events.index(("start", r.name))
        for dep in deps[r.urn]:
            assert stack.events.index(("end", names[dep])) < start, f"{r.name} started before {names[dep]} was done"
    assert ends.index("replica-0") < [n for k, n in stack.events if k == "start"].index("replica-1")
    assert [s.name for s in steps] == [r.name for r in _order(dev) if r.name in {s.name for s in steps}]


def test_after_a_failed_step_nothing_new_starts_and_the_error_is_raised(dev: DeclaredStack) -> None:
    stack = Recording(fail="mysql")
    with pytest.raises(ApplyError, match="mysql failed"):
        stack.apply(dev)
    started = {name for kind, name in stack.events if kind == "start"}
    assert "mysql" in started
    assert not started & {"mlflow", "trainer", "replica-0", "replica-1"}, started


def test_in_place_inputs_do_not_replace() -> None:
    base = run_program("dev").replicas()[0].inputs
    assert inputs_digest({**base, "memory": 4096, "memorySwap": 4096, "restart": "always"}) == inputs_digest(base)
    assert inputs_digest({**base, "cpus": "2"}) != inputs_digest(base)
    assert inputs_digest({**base, "envs": [*base["envs"], "X=1"]}) != inputs_digest(base)


def test_the_test_stack_is_valid_and_names_only_standins() -> None:
    """Pulumi.enginetest.yaml passes the program's validation (caught here, not minutes into an
    engine run) and selects a stand-in for every image a registry would serve."""
    from enginestack import standins

    stack = run_program("enginetest")
    images = standins.test_stack_images()
    settings = stack.settings()
    assert (settings.images.mysql, settings.images.minio, settings.images.minio_client, settings.images.nginx, settings.images.python) == (
        images["mysqlImage"], images["minioImage"], images["minioClientImage"], images["nginxImage"], images["pythonImage"])
    assert settings.balancer.bind_ip == "127.0.0.1"
