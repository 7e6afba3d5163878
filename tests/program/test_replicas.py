"""Replicas: inputs, GPU assignment, rolling order, and what scaling and re-weighting change."""

from __future__ import annotations

import re

import pytest

from app import contract
from app.server import probe
from components.replicas import HEALTH_TIMEOUT_S
from mockrun import CONTAINER_TYPE, DeclaredStack, run_program
from stackconfig.settings import DEFAULTS
from tests.program.helpers import env_map


def inputs_by_key(stack: DeclaredStack) -> dict[tuple[str, str], dict[str, object]]:
    return {(r.type, r.name): r.inputs for r in stack.resources}


def test_replica_container(any_stack: DeclaredStack) -> None:
    replicas = any_stack.replicas()
    assert replicas
    for index, replica in enumerate(replicas):
        inputs = replica.inputs
        name = f"mlserve-{any_stack.stack}-replica-{index}"
        assert replica.parent == "replicas"
        assert inputs["name"] == name
        assert inputs["image"].startswith("sha256:")  # the built image's ID (see test_components)
        assert inputs["command"] == ["python", "-m", contract.REPLICA_MODULE]
        env = env_map(inputs["envs"])
        assert env[contract.ENV_TRACKING_URI] == f"http://{contract.MLFLOW_HOST}:{contract.MLFLOW_PORT}"
        assert env[contract.ENV_MODEL_NAME] == "iris-classifier" and env[contract.ENV_MODEL_ALIAS] == "champion"
        assert env[contract.ENV_INSTANCE_ID] == name
        assert env[contract.ENV_PORT] == str(contract.REPLICA_PORT) and env[contract.ENV_BIND_HOST] == "0.0.0.0"
        assert env[contract.ENV_MAX_BODY_BYTES] == str(16 * 2**20)
        assert env[contract.ENV_DEVICE] == contract.DEVICE_AUTO
        assert env[contract.ENV_SHUTDOWN_GRACE_S] == "30"
        assert env[contract.ENV_PREDICT_KERNELS] == "true"
        # The image's probe module, which finds the replica's port in the container's env.
        assert inputs["healthcheck"]["tests"] == ["CMD", "python", "-m", contract.PROBE_MODULE]
        assert probe.ready_url(env) == f"http://127.0.0.1:{contract.REPLICA_PORT}{contract.ROUTE_READY}"
        # modelLoadTimeoutSeconds (default 120) is the start period.
        assert inputs["healthcheck"]["startPeriod"] == "120s"
        assert inputs["restart"] == "unless-stopped"
        assert inputs["destroyGraceSeconds"] == 35 and inputs["stopTimeout"] == 35
        assert inputs["memorySwap"] == inputs["memory"]
        assert inputs["logDriver"] == "json-file"


def test_replica_env_names_are_all_from_the_contract(any_stack: DeclaredStack) -> None:
    names = {value for key, value in vars(contract).items() if key.startswith("ENV_")}
    for replica in any_stack.replicas():
        assert set(env_map(replica.inputs["envs"])) <= names


def test_prediction_kernels_can_be_switched_off() -> None:
    stack = run_program("dev", {"predictKernels": False})
    replicas = stack.replicas()
    assert len(replicas) == 2
    for replica in replicas:
        assert env_map(replica.inputs["envs"])[contract.ENV_PREDICT_KERNELS] == "false"


def test_dev_stack_is_small_cpu_only(dev: DeclaredStack) -> None:
    replicas = dev.replicas()
    assert len(replicas) == 2
    for replica in replicas:
        assert replica.inputs["cpus"] == "1" and replica.inputs["memory"] == 1024
        assert "gpus" not in replica.inputs and "deviceRequests" not in replica.inputs
        assert env_map(replica.inputs["envs"])[contract.ENV_POLL_INTERVAL_S] == "5"
    assert dev.container("balancer").inputs["ports"][0]["ip"] == "127.0.0.1"
    assert dev.output("entryUrl") == "http://127.0.0.1:8080"


def test_prod_stack_is_three_gpu_replicas_like_the_compose_files(prod: DeclaredStack) -> None:
    replicas = prod.replicas()
    assert len(replicas) == 3
    for replica in replicas:
        assert replica.inputs["cpus"] == "2" and replica.inputs["memory"] == 4096
        assert replica.inputs["shmSize"] == 1024
    aliases = [r.inputs["networksAdvanced"][0]["aliases"] for r in replicas]
    assert aliases == [["replica-0", "replica-w3"], ["replica-1", "replica-w2"], ["replica-2", "replica-w1"]]
    assert prod.container("balancer").inputs["uploads"][0]["content"].count("least_conn;") == 1


def test_prod_gpus_round_robin_over_device_ids(prod: DeclaredStack) -> None:
    requests = [r.inputs["deviceRequests"] for r in prod.replicas()]
    assert [req[0]["deviceIds"] for req in requests] == [["0"], ["1"], ["0"]]
    for replica, req in zip(prod.replicas(), requests, strict=True):
        assert req[0]["driver"] == "nvidia" and req[0]["capabilities"] == ["gpu"]
        assert "gpus" not in replica.inputs  # pulumi-docker rejects gpus together with device_requests


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"gpuMode": "devices", "gpuDeviceIds": ["0", "1", "2"], "gpuCount": 2, "replicas": 4},
         [["0", "1"], ["2", "0"], ["1", "2"], ["0", "1"]]),
        ({"gpuMode": "devices", "gpuDeviceIds": ["GPU-a1", "GPU-b2"], "gpuCount": 1, "replicas": 5},
         [["GPU-a1"], ["GPU-b2"], ["GPU-a1"], ["GPU-b2"], ["GPU-a1"]]),
    ],
)
def test_gpu_devices_round_robin(overrides: dict[str, object], expected: list[list[str]]) -> None:
    stack = run_program("dev", overrides)
    assert [r.inputs["deviceRequests"][0]["deviceIds"] for r in stack.replicas()] == expected


def test_gpu_modes_all_and_count() -> None:
    every = run_program("dev", {"gpuMode": "all"}).replicas()
    assert every and all(r.inputs["gpus"] == "all" and "deviceRequests" not in r.inputs for r in every)
    counted = run_program("dev", {"gpuMode": "count", "gpuCount": 2}).replicas()
    assert counted and all(r.inputs["deviceRequests"] == [{"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}] for r in counted)
    cpu = run_program("dev", {"gpuMode": "all"}).by_name("replica-image").inputs
    assert cpu["build"]["args"][contract.BUILD_ARG_VARIANT] == "cuda"


def test_replicas_roll_one_at_a_time(any_stack: DeclaredStack) -> None:
    """A chain of depends_on + healthcheck + wait: see the docstring of components/replicas.py."""
    replicas = any_stack.replicas()
    assert len(replicas) >= 2
    assert "trainer" in replicas[0].depends_on
    for previous, replica in zip(replicas, replicas[1:], strict=False):
        assert previous.name in replica.depends_on
        assert [d for d in replica.depends_on if re.fullmatch(r"replica-\d+", d)] == [previous.name]
    for replica in replicas:
        assert replica.inputs["wait"] is True and replica.inputs["waitTimeout"] == 120 + DEFAULTS["healthIntervalSeconds"] + HEALTH_TIMEOUT_S
        assert replica.inputs["healthcheck"]["tests"]


def assert_scaling_touches_only(before: DeclaredStack, after: DeclaredStack, added: set[str], removed: set[str]) -> None:
    """Containers named in `added` appear, those in `removed` go, every other resource keeps its
    inputs and options byte for byte (the balancer included)."""
    old, new = inputs_by_key(before), inputs_by_key(after)
    assert {key[1] for key in set(new) - set(old)} == added
    assert {key[1] for key in set(old) - set(new)} == removed
    assert all(key[0] == CONTAINER_TYPE for key in set(new) ^ set(old))
    changed = [key for key in set(old) & set(new) if old[key] != new[key]]
    assert changed == [], f"inputs changed: {changed}"
    # Options count too: protect, dependencies and parents of existing resources stay as they were.
    before_opts = {(r.type, r.name): (r.parent, r.protect, r.depends_on) for r in before.resources}
    after_opts = {(r.type, r.name): (r.parent, r.protect, r.depends_on) for r in after.resources}
    assert all(before_opts[k] == after_opts[k] for k in set(before_opts) & set(after_opts))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_config_set_replicas_alone_scales_every_shipped_stack_up(stack: str) -> None:
    """`pulumi config set replicas N`, nothing else: the new replicas get weight 1 where the
    stack's weights list ends (prod's has three entries)."""
    before = run_program(stack)
    count = len(before.replicas())
    after = run_program(stack, {"replicas": count + 2})
    assert len(after.replicas()) == count + 2
    assert_scaling_touches_only(before, after, {f"replica-{count}", f"replica-{count + 1}"}, set())
    for name in (f"replica-{count}", f"replica-{count + 1}"):
        assert after.container(name).inputs["networksAdvanced"][0]["aliases"] == [name, "replica-w1"]
    assert f"replica-{count - 1}" in after.container(f"replica-{count}").depends_on


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_config_set_replicas_alone_scales_every_shipped_stack_down(stack: str) -> None:
    before = run_program(stack)
    count = len(before.replicas())
    after = run_program(stack, {"replicas": count - 1})
    assert len(after.replicas()) == count - 1
    assert_scaling_touches_only(before, after, set(), {f"replica-{count - 1}"})


def test_prod_scales_three_to_five_and_back_with_its_weights_kept() -> None:
    """The weights past the count are kept in config: growing back restores them."""
    prod = run_program("prod")
    assert [r.inputs["networksAdvanced"][0]["aliases"][1] for r in prod.replicas()] == ["replica-w3", "replica-w2", "replica-w1"]
    down = run_program("prod", {"replicas": 2})
    assert_scaling_touches_only(prod, down, set(), {"replica-2"})
    assert_scaling_touches_only(down, run_program("prod", {"replicas": 3}), {"replica-2"}, set())
    explicit = run_program("prod", {"replicas": 5, "weights": [3, 2, 1, 1, 2]})
    assert_scaling_touches_only(prod, explicit, {"replica-3", "replica-4"}, set())


def test_changing_one_weight_touches_only_that_replica() -> None:
    before = run_program("prod")
    after = run_program("prod", {"weights": [3, 5, 1]})
    old, new = inputs_by_key(before), inputs_by_key(after)
    assert set(old) == set(new)
    changed = sorted(key[1] for key in old if old[key] != new[key])
    assert changed == ["replica-1"]
    diff = {k for k in old[("docker:index/container:Container", "replica-1")]
            if old[("docker:index/container:Container", "replica-1")][k] != new[("docker:index/container:Container", "replica-1")][k]}
    assert diff == {"networksAdvanced"}
    assert after.container("replica-1").inputs["networksAdvanced"][0]["aliases"] == ["replica-1", "replica-w5"]


def test_fifty_replicas() -> None:
    stack = run_program("dev", {"replicas": 50})
    assert len(stack.replicas()) == 50
    assert stack.output("replicaNames") == [f"mlserve-dev-replica-{i}" for i in range(50)]


def test_replicas_wait_for_rotation_as_long_as_nginx_shuts_a_failed_one_out() -> None:
    """The probe's grace is the balancer's fail_timeout plus its DNS refresh period (and a second)."""
    from app import contract
    from nginx.render import RESOLVER_VALID_S

    stack = run_program("dev", {"balancerFailTimeoutSeconds": 7})
    for replica in stack.replicas():
        env = dict(e.split("=", 1) for e in replica.inputs["envs"])
        assert env[contract.ENV_ROTATION_GRACE_S] == str(7 + RESOLVER_VALID_S + 1)


def test_serving_processes_reach_the_replica_only_when_more_than_one() -> None:
    """MLSERVE_WORKERS is set for 2 or more processes (and per-gpu for gpuMode all); for one,
    the replica's own default, it is absent, so replicas of stacks from before the key keep
    their inputs (prod: one GPU each, one process)."""
    for stack in ("dev", "prod"):
        for replica in run_program(stack, {}).replicas():
            assert contract.ENV_WORKERS not in env_map(replica.inputs["envs"]), stack
    two = run_program("dev", {"replicaCpus": "2"}).replicas()
    assert two and all(env_map(r.inputs["envs"])[contract.ENV_WORKERS] == "2" for r in two)
    every_gpu = run_program("dev", {"gpuMode": "all"}).replicas()
    assert every_gpu and all(env_map(r.inputs["envs"])[contract.ENV_WORKERS] == contract.WORKERS_PER_GPU
                             for r in every_gpu)
    groups = run_program("dev", {"groups": [{"name": "big", "role": "canary", "alias": "challenger",
                                             "trafficPercent": 10, "replicaCpus": "4"}]}).replicas()
    workers = {r.name: env_map(r.inputs["envs"]).get(contract.ENV_WORKERS) for r in groups}
    assert workers == {"replica-0": None, "replica-1": None, "replica-big-0": "4"}
