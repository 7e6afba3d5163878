"""Facts that live on both sides of the image boundary and must not drift apart.

The replica image carries no infrastructure code, so a few values exist twice: the replica's
own defaults (used when it runs outside the stack) and the stack's defaults in Pulumi.yaml; the
images' HEALTHCHECKs and the healthchecks the program declares. These tests keep each pair equal.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from app import contract
from app.server import config as replica_config
from mockrun import DeclaredStack
from stackconfig.names import ROLE_MLFLOW, ROLE_REPLICA
from stackconfig.settings import DEFAULTS

APP = Path(__file__).resolve().parents[2] / "app"

# Replica env default -> (stack key, how the program turns the key into the env value).
SERVING_DEFAULTS = [
    (replica_config.DEFAULT_POLL_INTERVAL_S, "pollIntervalSeconds", float),
    (replica_config.DEFAULT_MAX_BATCH_SIZE, "maxBatchSize", int),
    (replica_config.DEFAULT_MAX_BATCH_WAIT_MS, "maxBatchWaitMs", float),
    (replica_config.DEFAULT_MAX_QUEUE, "maxQueue", int),
    (replica_config.DEFAULT_MAX_BODY_BYTES, "maxBodyMb", lambda mb: mb * 2**20),
    (replica_config.DEFAULT_SHUTDOWN_GRACE_S, "shutdownGraceSeconds", float),
    (replica_config.DEFAULT_SCORING_TIMEOUT_S, "scoringTimeoutSeconds", float),
    (replica_config.DEFAULT_PAYLOAD_LOG_PERCENT, "payloadLogPercent", float),
]


def test_replica_default_group_is_the_stack_default_group() -> None:
    from stackconfig.names import DEFAULT_GROUP

    assert replica_config.DEFAULT_GROUP == DEFAULT_GROUP


@pytest.mark.parametrize(("replica_default", "key", "convert"), SERVING_DEFAULTS, ids=[k for _, k, _ in SERVING_DEFAULTS])
def test_replica_defaults_equal_the_stack_defaults(replica_default: object, key: str, convert: object) -> None:
    assert callable(convert)
    assert replica_default == convert(DEFAULTS[key]), f"app/server/config.py and Pulumi.yaml disagree on {key}"


def test_one_serving_process_is_the_replicas_default_and_what_the_program_leaves_unset() -> None:
    """The program sets MLSERVE_WORKERS only for other counts (components/replicas.py)."""
    env = {contract.ENV_TRACKING_URI: "x", contract.ENV_MODEL_NAME: "m", contract.ENV_MODEL_ALIAS: "a"}
    assert replica_config.from_env(env).workers == 1


def test_replica_kernels_default_equals_the_stack_default() -> None:
    assert replica_config.from_env({contract.ENV_TRACKING_URI: "x", contract.ENV_MODEL_NAME: "m",
                                    contract.ENV_MODEL_ALIAS: "a"}).predict_kernels is DEFAULTS["predictKernels"]


def dockerfile_healthcheck(dockerfile: str) -> dict[str, object]:
    """The HEALTHCHECK of one of our Dockerfiles: its options and its exec-form command."""
    text = (APP / dockerfile).read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK\s+(.*?)\s+CMD\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"{dockerfile} has no exec-form HEALTHCHECK"
    options = dict(option.removeprefix("--").split("=", 1) for option in shlex.split(match.group(1)))
    return {**options, "tests": ["CMD", *json.loads(match.group(2))]}


@pytest.mark.parametrize(("dockerfile", "role"), [(contract.REPLICA_DOCKERFILE, ROLE_REPLICA), (contract.TRACKING_DOCKERFILE, ROLE_MLFLOW)])
def test_image_healthcheck_equals_the_declared_one(any_stack: DeclaredStack, dockerfile: str, role: str) -> None:
    containers = any_stack.by_role(role)
    assert containers, f"no {role} container declared"
    image = dockerfile_healthcheck(dockerfile)
    for container in containers:
        declared = container.inputs["healthcheck"]
        assert image == {
            "interval": declared["interval"],
            "timeout": declared["timeout"],
            "start-period": declared["startPeriod"],
            "retries": str(declared["retries"]),
            "tests": declared["tests"],
        }, f"{dockerfile} and {container.name}"


def test_every_long_running_service_gets_a_graceful_stop(any_stack: DeclaredStack) -> None:
    services = [c for c in any_stack.containers() if c.inputs.get("restart") == "unless-stopped"]
    assert {c.role for c in services} >= {"mysql", "minio", "mlflow", "replica", "balancer"}
    for container in services:
        grace = container.inputs.get("stopTimeout")
        assert isinstance(grace, int) and grace > 0, f"{container.name} is killed at once on stop"
        assert container.inputs["destroyGraceSeconds"] == grace, container.name
