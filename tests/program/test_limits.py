"""The limits as declared: healthcheck start period and rollout wait from the model load timeout,
nginx's timeouts from the scoring timeout; contradictions register nothing."""

from __future__ import annotations

import pytest

from components.replicas import HEALTH_TIMEOUT_S
from mockrun import attempt, run_program
from stackconfig.settings import ConfigError


def test_model_load_timeout_is_the_start_period_and_bounds_the_rollout_wait() -> None:
    stack = run_program("dev", {"modelLoadTimeoutSeconds": 900, "healthIntervalSeconds": 3, "groups": [
        {"name": "challenger", "role": "canary", "alias": "challenger", "trafficPercent": 5}]})
    replicas = stack.replicas()
    assert len(replicas) == 3
    for replica in replicas:
        assert replica.inputs["healthcheck"]["startPeriod"] == "900s"
        assert replica.inputs["waitTimeout"] == 900 + 3 + HEALTH_TIMEOUT_S


def test_health_interval_is_every_healthchecks_interval() -> None:
    default = run_program("dev")
    stack = run_program("dev", {"healthIntervalSeconds": 2})
    checked = [c for c in stack.containers() if c.inputs.get("healthcheck")]
    assert {c.role for c in checked} >= {"mysql", "minio", "mlflow", "replica", "balancer"}
    assert {c.inputs["healthcheck"]["interval"] for c in checked} == {"2s"}
    assert {c.inputs["healthcheck"]["interval"] for c in default.containers() if c.inputs.get("healthcheck")} == {"10s"}


def test_the_balancer_waits_longer_than_a_replica_may_score() -> None:
    conf = run_program("dev", {"scoringTimeoutSeconds": 20, "shutdownGraceSeconds": 20}).container("balancer").inputs["uploads"][0]["content"]
    assert "proxy_read_timeout 21s;" in conf and "proxy_send_timeout 21s;" in conf


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"balancerReadTimeoutSeconds": 10}, "balancerReadTimeoutSeconds"),
        ({"scoringTimeoutSeconds": 45}, "shutdownGraceSeconds"),
        ({"scoringTimeoutSeconds": 1, "maxBatchWaitMs": 1000}, "maxBatchWaitMs"),
    ],
)
def test_contradicting_limits_register_nothing(overrides: dict[str, object], key: str) -> None:
    result = attempt("prod", overrides)
    assert isinstance(result.error, ConfigError) and result.error.key == key, result.error
    assert len(result.declared) == 0
