"""app/server/model.py: device choice, the fast path's parsing and prediction, the loader's kernel
check, and the reference path's answers."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from app import contract
from app.server import kernels
from app.server import model as model_mod
from app.server.model import resolve_device

from .helpers import ROOT

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIAB_X, DIAB_Y = load_diabetes(return_X_y=True)


def _logistic() -> LogisticRegression:
    return LogisticRegression(max_iter=500).fit(IRIS_X, IRIS_Y)


# -- device -------------------------------------------------------------------------------

def _never() -> bool:
    raise AssertionError("torch must not be consulted for this model")


def test_device_cpu_for_non_torch_flavours_without_touching_torch() -> None:
    for requested in (contract.DEVICE_AUTO, contract.DEVICE_CPU, contract.DEVICE_CUDA):
        assert resolve_device(requested, ["python_function", "sklearn"], _never) == contract.DEVICE_CPU


def test_device_for_pytorch_models() -> None:
    flavors = ["python_function", "pytorch"]
    assert resolve_device(contract.DEVICE_AUTO, flavors, lambda: True) == contract.DEVICE_CUDA
    assert resolve_device(contract.DEVICE_AUTO, flavors, lambda: False) == contract.DEVICE_CPU
    assert resolve_device(contract.DEVICE_CPU, flavors, _never) == contract.DEVICE_CPU
    assert resolve_device(contract.DEVICE_CUDA, flavors, lambda: True) == contract.DEVICE_CUDA
    with pytest.raises(RuntimeError, match=contract.ENV_DEVICE):
        resolve_device(contract.DEVICE_CUDA, flavors, lambda: False)


class _Meta:
    def __init__(self, flavors: dict[str, dict[str, str]]) -> None:
        self.flavors = flavors


@pytest.fixture
def exported_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A PyTorch model directory as MLflow 3 saves one by default (data/model.pt2), whose
    weights the fake MLflow loader says are on the CPU, and a fake torch whose export pass
    records what it moved where (the real path runs in test_replica_gpu.py, on a GPU)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "model.pt2").write_bytes(b"archive")
    seen: dict[str, Any] = {"loads": [], "held": contract.DEVICE_CPU}

    def load_model(local: str, model_config: dict[str, str] | None = None, suppress_warnings: bool = False) -> Any:
        device = (model_config or {}).get("device")
        seen["loads"].append(device)
        if device != seen["held"]:
            raise MlflowException(f"weights on '{seen['held']}' can't be loaded on '{device}'")
        return types.SimpleNamespace(_model_impl=types.SimpleNamespace(pytorch_model="on-held", device=device))

    torch = types.ModuleType("torch")
    torch.export = types.ModuleType("torch.export")  # type: ignore[attr-defined]
    torch.export.load = lambda path: ("program", path)  # type: ignore[attr-defined]
    passes = types.ModuleType("torch.export.passes")
    passes.move_to_device_pass = lambda ep, device: types.SimpleNamespace(  # type: ignore[attr-defined]
        module=lambda: ("module", ep, device))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.export", torch.export)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.export.passes", passes)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", load_model)
    seen["dir"] = str(tmp_path)
    return seen


def test_an_exported_program_from_another_device_is_moved(exported_model: dict[str, Any]) -> None:
    meta = _Meta({"python_function": {}, "pytorch": {"model_data": "data"}})
    pyfunc = model_mod._load_pyfunc(exported_model["dir"], meta, contract.DEVICE_CUDA)
    # MLflow's loader was asked for the replica's device, then for where the weights are.
    assert exported_model["loads"] == [contract.DEVICE_CUDA, contract.DEVICE_CPU]
    archive = str(Path(exported_model["dir"], "data", "model.pt2"))
    assert pyfunc._model_impl.pytorch_model == ("module", ("program", archive), contract.DEVICE_CUDA)
    assert pyfunc._model_impl.device == contract.DEVICE_CUDA


def test_a_model_that_no_device_loads_keeps_the_first_error(exported_model: dict[str, Any]) -> None:
    exported_model["held"] = "meta"  # neither device loads it: not a question of devices
    meta = _Meta({"python_function": {}, "pytorch": {"model_data": "data"}})
    with pytest.raises(MlflowException, match="can't be loaded on 'cuda'"):
        model_mod._load_pyfunc(exported_model["dir"], meta, contract.DEVICE_CUDA)


def test_a_pickled_pytorch_model_is_not_retried(exported_model: dict[str, Any]) -> None:
    Path(exported_model["dir"], "data", "model.pt2").unlink()
    meta = _Meta({"python_function": {}, "pytorch": {"model_data": "data"}})
    with pytest.raises(MlflowException):
        model_mod._load_pyfunc(exported_model["dir"], meta, contract.DEVICE_CUDA)
    assert exported_model["loads"] == [contract.DEVICE_CUDA]


def test_server_never_imports_torch() -> None:
    code = ("import sys, app.server.__main__, app.server.asgi, app.server.batcher, app.server.model, app.server.manager;"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


# -- the loader's check of the model's environment ------------------------------------------

def test_environment_check_finds_what_mlflows_own_check_finds(tmp_path: Path) -> None:
    """load() turns MLflow's requirement warnings off for their cost (a map of every installed
    distribution per process) and runs its own check: it must flag the same requirements."""
    import mlflow.version
    from mlflow.utils.requirements_utils import _check_requirement_satisfied

    requirements = [f"numpy=={np.__version__}", "scikit-learn==0.20.0", "mlserve-surely-not-installed==1.0",
                    f"mlflow=={mlflow.version.VERSION}", "mlflow<1", "pytest; python_version < '3'",
                    "./wheels/local-0.1-py3-none-any.whl", "pandas>=1"]
    (tmp_path / "requirements.txt").write_text("\n".join(["# pinned at training", "-r more.txt", "", *requirements]))
    running = platform.python_version()
    ours = model_mod.environment_mismatches(str(tmp_path), running)
    theirs = [r for r in requirements if _check_requirement_satisfied(r) is not None]
    assert theirs == ["scikit-learn==0.20.0", "mlserve-surely-not-installed==1.0", "mlflow<1"]
    assert [m.split(" (")[0] for m in ours] == theirs
    assert ours[1] == "mlserve-surely-not-installed==1.0 (not installed)"
    assert model_mod.environment_mismatches(str(tmp_path / "none"), running) == []


def test_environment_check_names_another_python(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    major, minor, _ = platform.python_version_tuple()
    other = f"{major}.{int(minor) + 1}.0"
    assert model_mod.environment_mismatches(str(tmp_path), f"{major}.{minor}.99") == []
    assert model_mod.environment_mismatches(str(tmp_path), other) == [f"python {other} (running: {platform.python_version()})"]
    with caplog.at_level(logging.WARNING, logger="app.server.model"):
        model_mod.warn_environment_mismatches("m", "3", str(tmp_path), other)
    (record,) = caplog.records
    assert record.__dict__["mismatches"] == [f"python {other} (running: {platform.python_version()})"]
    assert record.__dict__["version"] == "3"


# -- the model loader attaches a kernel only where it agrees ----------------------------------


def _saved(tmp_path: Path, est: Any, x: np.ndarray = IRIS_X, **kwargs: Any) -> model_mod.LoadedModel:
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    frame = pd.DataFrame(x, columns=[f"c{i}" for i in range(x.shape[1])])
    path = tmp_path / "model"
    # Requirements given, not inferred: inference loads the model again in a subprocess, seconds
    # per model, and nothing here reads them.
    mlflow.sklearn.save_model(est, str(path), signature=infer_signature(frame, est.predict(frame.to_numpy())),
                              input_example=frame.head(5), pip_requirements=["scikit-learn"], **kwargs)
    pyfunc = mlflow.pyfunc.load_model(str(path))
    return model_mod.LoadedModel(name="m", version="1", alias="a", uri="models:/m/1", device="cpu",
                                 flavor="sklearn", pyfunc=pyfunc, input_schema=pyfunc.metadata.get_input_schema(),
                                 fast=model_mod._fast_spec(pyfunc))


def test_loader_attaches_the_kernel_and_serves_the_same_answers(tmp_path: Path) -> None:
    est = _logistic()
    model = _saved(tmp_path, est)
    assert model.fast is not None and model.fast.kernel is None
    model_mod.attach_kernel(model)
    assert model.fast.kernel is not None and model.fast.kernel_name == kernels.LINEAR_CLASSIFIER
    rows = IRIS_X[::7]
    assert np.array_equal(model.predict_fast(rows), model.predict_estimator(rows))
    assert np.array_equal(model.predict_fast(rows), est.predict(rows))


def test_loader_keeps_the_estimator_for_a_custom_predict_fn(tmp_path: Path) -> None:
    model = _saved(tmp_path, _logistic(), pyfunc_predict_fn="predict_proba")
    assert model.fast is not None
    model_mod.attach_kernel(model)
    assert model.fast.kernel is None


def test_loader_keeps_the_estimator_when_the_kernel_disagrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    est = _logistic()
    model = _saved(tmp_path, est)
    monkeypatch.setattr(kernels, "linear_kernel",
                        lambda e: (kernels.LINEAR_CLASSIFIER, lambda x: np.zeros(len(x), dtype=np.int64)))
    model_mod.attach_kernel(model)
    assert model.fast is not None and model.fast.kernel is None and model.fast.kernel_name is None
    rows = IRIS_X[::7]
    assert np.array_equal(model.predict_fast(rows), est.predict(rows))


@pytest.mark.parametrize(("case", "fit_on_frame", "kernels_on"), [
    ("linear-regression", False, True), ("linear-regression", False, False), ("linear-regression", True, True),
    ("logistic-multiclass", False, True), ("logistic-multiclass", True, True), ("logistic-multiclass", True, False),
])
def test_a_request_scored_alone_gets_exactly_mlflows_floats(tmp_path: Path, case: str, fit_on_frame: bool,
                                                            kernels_on: bool) -> None:
    """Bit for bit what pyfunc (so `mlflow models serve`) computes for the same request, float
    regressors included, on both fast-path predictors. (Merged into a micro-batch with other
    requests, floats may differ in the last bit: BLAS sums a bigger matrix in another order.)"""
    import pandas as pd

    x, y = (DIAB_X, DIAB_Y) if case.startswith("linear") else (IRIS_X, IRIS_Y)
    cols = [f"c{i}" for i in range(x.shape[1])]
    est = (LinearRegression() if case.startswith("linear") else LogisticRegression(max_iter=500))
    est.fit(pd.DataFrame(x, columns=cols) if fit_on_frame else x, y)
    model = _saved(tmp_path, est, x)
    assert model.fast is not None
    if kernels_on:
        model_mod.attach_kernel(model)
        assert model.fast.kernel is not None
    rng = np.random.default_rng(7)
    compared = 0
    for n in (1, 3, 16):
        for _ in range(15):
            rows = (x[rng.integers(0, len(x), n)] * rng.normal(1, 0.3, (n, x.shape[1]))).tolist()
            expected = np.asarray(model.pyfunc.predict(pd.DataFrame(rows, columns=cols)))
            got = model.predict_fast(model.rows_array(rows))
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (n, rows)
            compared += n
    assert compared == 15 * (1 + 3 + 16)


# -- failures: logged with their traceback, answered in MLflow's error shape ------------------

IRIS_COLS = ["c0", "c1", "c2", "c3"]


def _json_error(answer: model_mod.Answer) -> dict[str, Any]:
    assert answer.content_type == "application/json", answer
    doc: dict[str, Any] = json.loads(answer.body)
    assert {"error_code", "message"} <= set(doc), doc
    return doc


def test_an_error_mlflow_lets_escape_is_logged_and_answered_as_json(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """MLflow's scoring function raises TypeError for a list as a column name (its server answers
    a bare 500): ours is a JSON 500, and the log line with the traceback is not lost."""
    model = _saved(tmp_path, _logistic())
    body = json.dumps({"dataframe_split": {"columns": [["c0"], *IRIS_COLS[1:]], "data": [[1, 2, 3, 4]]}}).encode()
    with caplog.at_level(logging.INFO, logger="app.server.model"):
        answer = model.score_reference(body, "application/json")
    assert answer.status == 500
    assert _json_error(answer)["error_code"] == "INTERNAL_ERROR"
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and logged[0].levelno == logging.ERROR
    assert "TypeError" in logging.Formatter().formatException(logged[0].exc_info)  # type: ignore[arg-type]


def _nested(depth: int, opener: str = "[") -> bytes:
    """A request `depth` arrays or objects deep, the outer object included."""
    n = depth - 1
    value = "[" * n + "1" + "]" * n if opener == "[" else '{"k": ' * n + "1" + "}" * n
    return ('{"inputs": ' + value + "}").encode()


def test_nesting_depth_is_counted_in_arrays_and_objects_and_not_in_strings() -> None:
    for opener in "[{":
        for depth in (3, 10, 200):
            assert model_mod.json_depth(_nested(depth, opener)) == depth, (opener, depth)
    quoted = b'{"inputs": "' + b"[" * 5000 + b'\\"]]"}'
    assert model_mod.json_depth(quoted) == 1
    assert model_mod.json_depth(b"") == 0 and model_mod.json_depth(b"1") == 0


@pytest.mark.parametrize("depth", [model_mod.MAX_JSON_DEPTH + 1, 1_000, 100_000])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_nesting_past_the_limit_is_a_400(tmp_path: Path, depth: int, opener: str) -> None:
    """Past MAX_JSON_DEPTH ours is 400 BAD_REQUEST, before MLflow parses anything (MLflow's server
    answers a bare 500 from about 1,000 levels on: its JSON decoder runs out of stack)."""
    model = _saved(tmp_path, _logistic())
    answer = model.score_reference(_nested(depth, opener), "application/json; charset=utf-8")
    assert answer.status == 400
    doc = _json_error(answer)
    assert doc["error_code"] == "BAD_REQUEST" and str(model_mod.MAX_JSON_DEPTH) in doc["message"]


def test_nesting_within_the_limit_is_mlflows_to_judge(tmp_path: Path) -> None:
    model = _saved(tmp_path, _logistic())
    answer = model.score_reference(_nested(model_mod.MAX_JSON_DEPTH), "application/json")
    assert answer.status == 400 and "nested deeper" not in _json_error(answer)["message"]
    # Only what MLflow parses as JSON is measured: other content types keep MLflow's answer.
    assert model.score_reference(_nested(1_000), "text/plain").status == 415


def test_fast_path_refuses_columns_that_are_not_names(tmp_path: Path) -> None:
    model = _saved(tmp_path, _logistic())
    for columns in ([["c0"], *IRIS_COLS[1:]], [{"c": 0}, *IRIS_COLS[1:]], [1, *IRIS_COLS[1:]]):
        body = json.dumps({"dataframe_split": {"columns": columns, "data": [[1, 2, 3, 4]]}}).encode()
        with pytest.raises(model_mod.NotFast):
            model.parse_fast(body, "application/json")
