"""Real processes shared by the replica tests, started once per session and always stopped.

- an MLflow tracking server and registry (SQLite, artifacts served through the server,
  so the replica and `mlflow models serve` load the model the way a replica does in the
  stack: through the server's proxy, without storage credentials);
- the demo model trained by `python -m app.trainer` (model CONF_MODEL, alias ALIAS);
- `mlflow models serve` and our replica, both on `models:/CONF_MODEL@ALIAS`; the replica
  with its linear prediction kernel and with it switched off, so the conformance tests
  cover both ways the fast path can predict, each as one process and as two serving
  processes under a supervisor (MLSERVE_WORKERS=2).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import contract  # noqa: E402
from procstack import solo as rp  # noqa: E402

CONF_MODEL = "iris-conformance"
ALIAS = "champion"
MAX_BODY_BYTES = 256 * 1024


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replica")


@pytest.fixture(scope="session")
def tracking(workdir: Path) -> Iterator[rp.Proc]:
    proc = rp.start_tracking_server(workdir / "mlflow")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def trained(tracking: rp.Proc) -> dict[str, object]:
    out = rp.train(tracking.url, CONF_MODEL, ALIAS)
    assert out["version"] == "1" and out["alias_version"] == "1", out
    return out


@pytest.fixture(scope="session")
def mlflow_serve(tracking: rp.Proc, trained: dict[str, object], workdir: Path) -> Iterator[rp.Proc]:
    proc = rp.start_mlflow_serve(tracking.url, f"models:/{CONF_MODEL}@{ALIAS}", workdir)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session", params=[("true", "1"), ("false", "1"), ("true", "2"), ("false", "2")],
                ids=["kernel", "estimator", "kernel-2proc", "estimator-2proc"])
def replica(request: pytest.FixtureRequest, tracking: rp.Proc, trained: dict[str, object],
            workdir: Path) -> Iterator[rp.Proc]:
    """Each variant alone (one process) and as two serving processes under a supervisor."""
    kernels, workers = request.param
    proc = rp.start_replica(tracking.url, CONF_MODEL, ALIAS, workdir,
                            **{contract.ENV_MAX_BODY_BYTES: str(MAX_BODY_BYTES),
                               contract.ENV_MAX_BATCH_WAIT_MS: "2",
                               contract.ENV_PREDICT_KERNELS: kernels,
                               contract.ENV_WORKERS: workers})
    proc.extra[contract.ENV_PREDICT_KERNELS] = kernels
    proc.extra[contract.ENV_WORKERS] = workers
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def max_body_bytes() -> int:
    """The body limit the `replica` fixture runs with."""
    return MAX_BODY_BYTES
