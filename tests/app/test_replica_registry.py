"""The registry goes away and comes back: a replica keeps serving what it has, says so in
/health and /metrics within a few polls, and clears it once the registry answers again.

Runs its own tracking server (the session's is shared by the other suites), stops it with
the replica under traffic, and starts it again on the same port and database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import contract
from procstack import solo as rp

pytestmark = pytest.mark.live

MODEL = "iris-registry-outage"
ALIAS = "champion"
COLS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
BODY = {"dataframe_split": {"columns": COLS, "data": [[5.9, 3.0, 4.2, 1.5]]}}
POLL_S = "0.5"
DEADLINE_S = 60.0  # for each state change; a poll fails at once when nothing listens


@pytest.fixture(scope="module")
def own_tracking(workdir: Path) -> Iterator[list[rp.Proc]]:
    """A list holding the tracking server that runs now (the test replaces it)."""
    procs = [rp.start_tracking_server(workdir / "mlflow-outage")]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def _restart(old: rp.Proc) -> rp.Proc:
    """The same server (command, port, database) started again."""
    new = rp.Proc(old.name, old.cmd, old.env, old.log_path.with_name(old.log_path.stem + "-again.log"),
                  port=old.port).start()
    try:
        new.wait_http("/health", DEADLINE_S)
    except BaseException:
        new.stop()
        raise
    return new


def _health(p: rp.Proc) -> dict[str, Any]:
    return httpx.get(p.url + contract.ROUTE_HEALTH, timeout=10).json()


def _metric(p: rp.Proc, name: str) -> float:
    for line in httpx.get(p.url + contract.ROUTE_METRICS, timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def _until(cond: Any, what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # poll interval


def _predict(p: rp.Proc) -> httpx.Response:
    return httpx.post(p.url + contract.ROUTE_INVOCATIONS, json=BODY, timeout=10)


def test_registry_outage_is_reported_while_the_replica_keeps_serving(own_tracking: list[rp.Proc],
                                                                      workdir: Path) -> None:
    tracking = own_tracking[0]
    assert rp.train(tracking.url, MODEL, ALIAS)["version"] == "1"
    replica = rp.start_replica(tracking.url, MODEL, ALIAS, workdir, **{contract.ENV_POLL_INTERVAL_S: POLL_S})
    try:
        _until(lambda: (_health(replica).get("registry") or {}).get("ok") is True, "a first successful poll")
        before = _health(replica)
        assert before["state"] == "ready" and before["registry"]["consecutive_failures"] == 0

        stopping_at = time.time()
        tracking.stop()
        _until(lambda: _health(replica)["state"] == "degraded", "/health to say degraded")
        _until(lambda: _health(replica)["registry"]["consecutive_failures"] >= 3, "three failed polls")
        during = _health(replica)
        reg = during["registry"]
        assert reg["ok"] is False
        assert reg["failing_since"] >= stopping_at and reg["last_error"]["at"] >= reg["failing_since"]
        assert reg["last_error"]["message"] and reg["last_success_at"] <= reg["failing_since"]
        assert during["model"]["version"] == "1"
        # Still serving, and still routed to: readiness is about this replica, not the registry.
        assert httpx.get(replica.url + contract.ROUTE_READY, timeout=10).status_code == 200
        r = _predict(replica)
        assert r.status_code == 200 and r.headers[contract.HEADER_MODEL_VERSION] == "1"
        assert _metric(replica, "mlserve_replica_registry_poll_failures_total") >= 3
        assert _metric(replica, "mlserve_replica_registry_poll_ok") == 0.0

        own_tracking[0] = tracking = _restart(tracking)
        _until(lambda: _health(replica)["state"] == "ready", "/health to say ready again")
        after = _health(replica)["registry"]
        assert after["ok"] is True and after["consecutive_failures"] == 0 and after["failing_since"] is None
        assert after["last_success_at"] > reg["last_error"]["at"]
        assert after["last_error"]["message"]  # the outage stays on record
        assert _metric(replica, "mlserve_replica_registry_poll_ok") == 1.0
        assert _predict(replica).status_code == 200
    finally:
        replica.stop()
