"""Promotion without restarts: the alias moves under load and nothing fails; a version that
cannot be loaded leaves the old one serving and is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import contract
from mockrun import PROJECT_ROOT
from procstack import solo as rp
from tests.support import wait_until

pytestmark = pytest.mark.live

MODEL = "iris-promotion"
ALIAS = "champion"
COLS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
BODY = json.dumps({"dataframe_split": {"columns": COLS, "data": [[5.9, 3.0, 4.2, 1.5]]}}).encode()


def _client(tracking: rp.Proc) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking.url)


@pytest.fixture(scope="module")
def versions(tracking: rp.Proc) -> dict[str, str]:
    """v1 (alias), v2 registered by a second training with other hyper-parameters (alias
    left alone), and a broken v3 whose flavour cannot be imported. (What the trainer itself
    promises is tested in test_trainer.py.)"""
    first = rp.train(tracking.url, MODEL, ALIAS)
    assert first["version"] == "1" and first["alias_version"] == "1", first
    second = rp.train(tracking.url, MODEL, ALIAS, "--c", "0.05")
    assert second["version"] == "2" and second["registered"] is True, second
    assert second["alias_version"] == "1", second  # the replica starts on v1

    import mlflow

    mlflow.set_tracking_uri(tracking.url)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlserve_no_such_module\n")
        mlflow.set_experiment("broken-models")
        with mlflow.start_run() as run:
            mlflow.log_artifacts(d, "broken")
    broken = _client(tracking).create_model_version(MODEL, source=f"{run.info.artifact_uri}/broken",
                                                    run_id=run.info.run_id)
    return {"v1": "1", "v2": "2", "broken": str(broken.version)}


@pytest.fixture(scope="module", params=["1", "2"], ids=["1proc", "2proc"])
def promo_replica(request: pytest.FixtureRequest, tracking: rp.Proc, versions: dict[str, str],
                  workdir: Path) -> Iterator[rp.Proc]:
    """One process, and two serving processes under a supervisor (MLSERVE_WORKERS=2)."""
    proc = rp.start_replica(tracking.url, MODEL, ALIAS, workdir, **{contract.ENV_POLL_INTERVAL_S: "0.5",
                                                                    contract.ENV_WORKERS: request.param})
    proc.extra[contract.ENV_WORKERS] = request.param
    try:
        yield proc
    finally:
        proc.stop()


def _health(p: rp.Proc) -> dict[str, Any]:
    return httpx.get(p.url + contract.ROUTE_HEALTH, timeout=10).json()


def _metric(p: rp.Proc, name: str) -> float:
    for line in httpx.get(p.url + contract.ROUTE_METRICS, timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


def _requests_total(p: rp.Proc) -> float:
    total = 0.0
    for line in httpx.get(p.url + contract.ROUTE_METRICS, timeout=10).text.splitlines():
        if line.startswith('mlserve_replica_requests_total{route="/invocations"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_promotion_under_load(promo_replica: rp.Proc, versions: dict[str, str], tracking: rp.Proc) -> None:
    client = _client(tracking)
    client.set_registered_model_alias(MODEL, ALIAS, versions["v1"])
    wait_until(lambda: _health(promo_replica)["model"]["version"] == versions["v1"], 60, "v1 serving")

    stop = threading.Event()
    result: list[rp.Answer] = []
    loader = threading.Thread(target=lambda: result.extend(
        rp.run_load(promo_replica.url, BODY, threads=4, max_requests=50_000, max_seconds=90, stop=stop)))
    loader.start()
    try:
        start = _requests_total(promo_replica)
        wait_until(lambda: _requests_total(promo_replica) > start + 100, 30, "load before the promotion")
        client.set_registered_model_alias(MODEL, ALIAS, versions["v2"])
        wait_until(lambda: _health(promo_replica)["model"]["version"] == versions["v2"], 60, "v2 serving")
        swapped = _requests_total(promo_replica)
        wait_until(lambda: _requests_total(promo_replica) > swapped + 200, 30, "load after the promotion")
    finally:
        stop.set()
        loader.join(120)
    assert not loader.is_alive()
    assert len(result) > 300
    failed = [a for a in result if a.status != 200]
    assert not failed, failed[:5]
    seen = {a.version for a in result}
    assert seen == {versions["v1"], versions["v2"]}, seen
    # With several processes too: they move at once (one store on the board), so no request
    # sent after the first new answer came back is answered by the old version, whichever
    # process gets it.
    first_new = min(a.received for a in result if a.version == versions["v2"])
    late_old = [a for a in result if a.sent > first_new and a.version != versions["v2"]]
    assert not late_old, late_old[:5]
    if promo_replica.extra[contract.ENV_WORKERS] != "1":
        served = [w["served"] for w in _health(promo_replica)["workers"]["processes"]]
        assert len(served) == 2 and min(served) > 0, served  # both processes took part
    assert _metric(promo_replica, "mlserve_replica_model_swaps_total") >= 1
    assert _metric(promo_replica, "mlserve_replica_model_version") == float(versions["v2"])
    health = _health(promo_replica)
    assert health["state"] == "ready" and health["last_error"] is None


def test_failed_load_keeps_old_version(promo_replica: rp.Proc, versions: dict[str, str], tracking: rp.Proc) -> None:
    client = _client(tracking)
    serving = _health(promo_replica)["model"]["version"]
    assert serving in (versions["v1"], versions["v2"])
    failures = _metric(promo_replica, "mlserve_replica_model_load_failures_total")
    client.set_registered_model_alias(MODEL, ALIAS, versions["broken"])
    try:
        wait_until(lambda: (_health(promo_replica)["last_error"] or {}).get("version") == versions["broken"], 60,
                   "the failed load to be reported")
        health = _health(promo_replica)
        assert health["state"] == "degraded"
        assert health["model"]["version"] == serving
        assert health["model"]["alias_version"] == versions["broken"]
        assert "mlserve_no_such_module" in health["last_error"]["message"]
        assert httpx.get(promo_replica.url + contract.ROUTE_READY, timeout=10).status_code == 200
        r = httpx.post(promo_replica.url + contract.ROUTE_INVOCATIONS, content=BODY,
                       headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200 and r.headers[contract.HEADER_MODEL_VERSION] == serving
        assert _metric(promo_replica, "mlserve_replica_model_load_failures_total") > failures
    finally:
        client.set_registered_model_alias(MODEL, ALIAS, serving)
    wait_until(lambda: _health(promo_replica)["last_error"] is None, 30, "the error to clear once the alias is back")


@pytest.mark.parametrize("workers", ["1", "2"], ids=["1proc", "2proc"])
def test_replica_waits_for_a_model(tracking: rp.Proc, workdir: Path, workers: str) -> None:
    """No such model yet: the replica runs, /ready is 503 (and the health probe fails), /health
    says why, and once the model is registered it loads it by itself."""
    name = f"iris-late-{os.getpid()}-{workers}"
    proc = rp.start_replica(tracking.url, name, ALIAS, workdir, wait_ready=False, **{contract.ENV_WORKERS: workers})
    try:
        proc.wait_http(contract.ROUTE_HEALTH, 60)
        assert httpx.get(proc.url + contract.ROUTE_READY, timeout=10).status_code == 503
        assert _probe(proc, 0) == (1, f"not ready: {contract.ROUTE_READY} answered 503")
        r = httpx.post(proc.url + contract.ROUTE_INVOCATIONS, content=BODY,
                       headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 503 and r.headers.get("retry-after")
        wait_until(lambda: _health(proc)["last_error"] is not None, 30, "the missing model to be reported")
        health = _health(proc)
        assert health["state"] == "error" and name in health["last_error"]["message"]
        out = rp.train(tracking.url, name, ALIAS)
        assert out["version"] == "1"
        proc.wait_http(contract.ROUTE_READY, 90)
        assert _health(proc)["model"]["version"] == "1"
        # The healthcheck: ready is enough without a rotation grace; with one, ready is not yet
        # healthy until an invocation was answered (by either process).
        assert _probe(proc, 0) == (0, "")
        assert _probe(proc, 3600) == (1, "ready, not yet in rotation: no invocation answered yet")
        r = httpx.post(proc.url + contract.ROUTE_INVOCATIONS, content=BODY,
                       headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200
        assert _probe(proc, 3600) == (0, "")
    finally:
        proc.stop()


def _probe(proc: rp.Proc, rotation_grace_s: int) -> tuple[int, str]:
    """The replica image's HEALTHCHECK command against `proc`: (exit status, what it said)."""
    env = {"PATH": "/usr/bin:/bin", contract.ENV_PORT: proc.url.rsplit(":", 1)[1],
           contract.ENV_ROTATION_GRACE_S: str(rotation_grace_s)}
    done = subprocess.run([sys.executable, "-m", contract.PROBE_MODULE], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stderr.strip()
