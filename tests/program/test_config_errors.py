"""Every invalid config value stops the program, naming the key and what is allowed, before any resource."""

from __future__ import annotations

import pytest

from mockrun import attempt, run_program
from stackconfig.settings import ConfigError

# (overrides, key the message must name, words the message must contain: the allowed values)
INVALID: list[tuple[dict[str, object], str, tuple[str, ...]]] = [
    ({"replicas": 0}, "replicas", ("1 to 200",)),
    ({"replicas": -3}, "replicas", ("1 to 200",)),
    ({"replicas": "three"}, "replicas", ("whole number", "1 to 200")),
    ({"replicas": 2.5}, "replicas", ("whole number",)),
    ({"replicas": 201}, "replicas", ("1 to 200",)),
    ({"replicas": 2, "weights": [1, 0]}, "weights", ("1 to 10",)),
    ({"replicas": 2, "weights": [1, -2]}, "weights", ("1 to 10",)),
    ({"replicas": 2, "weights": [1, 11]}, "weights", ("1 to 10",)),
    ({"replicas": 2, "weights": "heavy"}, "weights", ("list",)),
    ({"replicas": 2, "weights": [1, 2, 0]}, "weights", ("1 to 10",)),  # an unused entry is still checked
    ({"gpuMode": "some"}, "gpuMode", ("none, all, count, devices",)),
    ({"gpuMode": "devices"}, "gpuDeviceIds", ("non-empty list",)),
    ({"gpuMode": "none", "gpuDeviceIds": ["0"]}, "gpuDeviceIds", ("only used when gpuMode is 'devices'",)),
    ({"gpuMode": "devices", "gpuDeviceIds": ["0"], "gpuCount": 2}, "gpuCount", ("at most",)),
    ({"gpuMode": "count", "gpuCount": 0}, "gpuCount", ("1 to 16",)),
    ({"replicaMemoryMb": 256}, "replicaMemoryMb", ("512",)),
    ({"replicaShmMb": 8}, "replicaShmMb", ("64",)),
    ({"replicaCpus": "0"}, "replicaCpus", ("positive number",)),
    ({"replicaCpus": "two"}, "replicaCpus", ("positive number",)),
    ({"balancerPort": 0}, "balancerPort", ("1 to 65535",)),
    ({"balancerPort": 70000}, "balancerPort", ("1 to 65535",)),
    ({"mlflowUiPort": 65536}, "mlflowUiPort", ("1 to 65535",)),
    ({"balancerAlgorithm": "random"}, "balancerAlgorithm", ("round_robin, least_conn",)),
    ({"balancerBindIp": "256.0.0.1"}, "balancerBindIp", ("IPv4",)),
    ({"balancerWorkerProcesses": "0"}, "balancerWorkerProcesses", ("auto or a whole number from 1 to 64",)),
    ({"balancerWorkerProcesses": 65}, "balancerWorkerProcesses", ("auto or a whole number from 1 to 64", "65")),
    ({"balancerWorkerProcesses": "two"}, "balancerWorkerProcesses", ("auto or a whole number",)),
    ({"balancerWorkerProcesses": True}, "balancerWorkerProcesses", ("auto or a whole number",)),
    ({"replicaCpuSet": "0-"}, "replicaCpuSet", ("--cpuset-cpus", "0-3")),
    ({"replicaCpuSet": "cores 1"}, "replicaCpuSet", ("--cpuset-cpus",)),
    ({"replicaCpuSet": "3-1"}, "replicaCpuSet", ("runs backwards", "1-3")),
    ({"replicaCpuSet": True}, "replicaCpuSet", ("--cpuset-cpus",)),
    ({"replicaCpus": "2", "replicaCpuSet": "3"}, "replicaCpuSet", ("holds 1 CPU", "fewer than replicaCpus (2)")),
    ({"replicaCpus": "1", "replicaCpuSet": "0", "groups": [
        {"name": "challenger", "role": "canary", "alias": "challenger", "trafficPercent": 5, "replicaCpus": "1.5"}]},
     "replicaCpuSet", ("fewer than groups[0].replicaCpus (1.5)",)),
    ({"balancerCpuSet": "0,,1"}, "balancerCpuSet", ("--cpuset-cpus",)),
    ({"modelAlias": "v3"}, "modelAlias", ("version",)),
    ({"nginxImage": "nginx:latest"}, "nginxImage", ("pinned",)),
    ({"nginxImage": "nginx"}, "nginxImage", ("explicit tag",)),
    ({"dockerHost": "gpu-box"}, "dockerHost", ("ssh://",)),
    ({"trainDemoModel": "yes"}, "trainDemoModel", ("true or false",)),
    ({"predictKernels": "maybe"}, "predictKernels", ("true or false",)),
    ({"healthIntervalSeconds": 0}, "healthIntervalSeconds", ("1 to 300",)),
    ({"healthIntervalSeconds": "often"}, "healthIntervalSeconds", ("whole number", "1 to 300")),
    ({"replicsa": 3}, "replicsa", ("not a known key", "replicas")),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), INVALID, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(INVALID)])
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_invalid_value_fails_naming_the_key_and_registers_nothing(
    stack: str, overrides: dict[str, object], key: str, allowed: tuple[str, ...]
) -> None:
    if key.startswith("gpu"):
        # Start from no GPU keys at all (prod sets some), so that only the case's values count.
        overrides = {"gpuMode": None, "gpuCount": None, "gpuDeviceIds": None, **overrides}
    if key == "weights":
        overrides = {"weights": None, **overrides}
    result = attempt(stack, overrides)
    assert isinstance(result.error, ConfigError), f"expected a ConfigError, got {result.error!r}"
    assert result.error.key == key
    message = str(result.error)
    assert f"'{key}'" in message
    for word in allowed:
        assert word in message, f"{message!r} should mention {word!r}"
    assert len(result.declared) == 0, f"registered before failing: {[r.name for r in result.declared]}"


def test_run_program_raises_the_config_error_itself() -> None:
    with pytest.raises(ConfigError, match="'replicas'"):
        run_program("dev", {"replicas": 0})


def test_the_same_overrides_made_valid_register_the_stack() -> None:
    """The failing cases fail because of the value, not because the harness breaks."""
    assert len(run_program("dev", {"replicas": 3, "weights": [1, 2, 3]}).replicas()) == 3
