"""app/server/manager.py in process, with a fake registry client and loader: what a failing
registry does to /health's registry state and to the metrics, and what a recovery does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app import contract
from app.server import config as config_mod
from app.server.manager import MLFLOW_CLIENT_ENV, ModelManager, bound_mlflow_client
from app.server.metrics import Metrics

from .helpers import BASE_ENV


class _Registry:
    """Answers the alias's version, or raises what an unreachable server makes MLflow raise."""

    def __init__(self) -> None:
        self.down = False
        self.version = "1"

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        if self.down:
            raise ConnectionError("API request to http://mlflow:5000 failed: Connection refused")
        return type("MV", (), {"version": self.version})()


class _Model:
    def __init__(self, version: str) -> None:
        self.name, self.version, self.device, self.flavor, self.fast, self.local_dir = "m", version, "cpu", "f", None, None


def _manager() -> tuple[ModelManager, _Registry, Metrics]:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_INSTANCE_ID: "r-test"})
    metrics = Metrics("r-test", "m", "champion")
    mgr = ModelManager(cfg, metrics, loader=lambda name, version, *a: _Model(version))  # type: ignore[arg-type, return-value]
    registry = _Registry()
    mgr._client = registry
    return mgr, registry, metrics


def _metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_registry_failures_are_counted_and_reported_and_cleared_by_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    mgr, registry, metrics = _manager()
    clock = [1000.0]
    monkeypatch.setattr("app.server.manager.time.time", lambda: clock[0])

    async def scenario() -> None:
        try:
            assert await mgr._check_once()
            assert mgr.current is not None and mgr.current.version == "1"
            assert mgr.registry.ok and mgr.registry.last_success_at == 1000.0
            assert mgr.registry.consecutive_failures == 0 and mgr.registry.failing_since is None
            assert _metric(metrics, "mlserve_replica_registry_poll_ok") == 1.0

            registry.down = True
            for t in (1010.0, 1020.0, 1030.0):
                clock[0] = t
                assert not await mgr._check_once()
            state = mgr.registry
            assert not state.ok and state.consecutive_failures == 3
            assert state.failing_since == 1010.0 and state.last_error_at == 1030.0
            assert state.last_success_at == 1000.0
            assert state.last_error is not None and "Connection refused" in state.last_error
            assert mgr.current.version == "1"  # still serving what it had
            assert _metric(metrics, "mlserve_replica_registry_poll_failures_total") == 3.0
            assert _metric(metrics, "mlserve_replica_registry_poll_ok") == 0.0
            assert _metric(metrics, "mlserve_replica_registry_last_success_timestamp_seconds") == 1000.0

            registry.down = False
            clock[0] = 1040.0
            assert await mgr._check_once()
            state = mgr.registry
            assert state.ok and state.consecutive_failures == 0 and state.failing_since is None
            assert state.last_success_at == 1040.0
            # The last error stays on record (with its time) after the recovery.
            assert state.last_error is not None and state.last_error_at == 1030.0
            assert mgr.last_error is None
            assert _metric(metrics, "mlserve_replica_registry_poll_failures_total") == 3.0
            assert _metric(metrics, "mlserve_replica_registry_poll_ok") == 1.0
            assert _metric(metrics, "mlserve_replica_registry_last_success_timestamp_seconds") == 1040.0
        finally:
            await mgr.stop()

    asyncio.run(scenario())


def test_before_the_first_poll_the_registry_state_is_unknown() -> None:
    mgr, _, metrics = _manager()
    state = mgr.registry
    assert state.ok is None and state.last_success_at is None and state.last_error is None
    assert state.consecutive_failures == 0
    assert _metric(metrics, "mlserve_replica_registry_poll_failures_total") == 0.0
    asyncio.run(mgr.stop())


def test_mlflow_client_calls_are_bounded_unless_the_environment_says_otherwise() -> None:
    env: dict[str, str] = {}
    bound_mlflow_client(env)
    assert env == MLFLOW_CLIENT_ENV and env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    bound_mlflow_client(env)
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
