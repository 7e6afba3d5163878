"""Prediction kernels: the same answers as the estimator, or no kernel at all."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import (
    ElasticNet,
    HuberRegressor,
    Lasso,
    LassoCV,
    LinearRegression,
    LogisticRegression,
    Perceptron,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC, LinearSVR
from sklearn.tree import DecisionTreeClassifier

from app.server import kernels
from app.server import model as model_mod

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
DIAB_X, DIAB_Y = load_diabetes(return_X_y=True)
BINARY = IRIS_Y > 0


def _fit(est: Any, x: Any, y: Any) -> Any:
    return est.fit(x, y)


CLASSIFIERS = {
    "logistic-multiclass": lambda: _fit(LogisticRegression(max_iter=500), IRIS_X, IRIS_Y),
    "logistic-binary": lambda: _fit(LogisticRegression(max_iter=500), IRIS_X, BINARY),
    "logistic-string-labels": lambda: _fit(LogisticRegression(max_iter=500), IRIS_X,
                                           np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]),
    "linear-svc": lambda: _fit(LinearSVC(max_iter=5000), IRIS_X, IRIS_Y),
    "sgd-classifier": lambda: _fit(SGDClassifier(random_state=0), IRIS_X, IRIS_Y),
    "perceptron-binary": lambda: _fit(Perceptron(random_state=0), IRIS_X, BINARY),
}
REGRESSORS = {
    "linear-regression": lambda: _fit(LinearRegression(), DIAB_X, DIAB_Y),
    "linear-regression-2-targets": lambda: _fit(LinearRegression(), DIAB_X, np.c_[DIAB_Y, -DIAB_Y / 3]),
    "linear-regression-no-intercept": lambda: _fit(LinearRegression(fit_intercept=False), DIAB_X, DIAB_Y),
    "huber": lambda: _fit(HuberRegressor(max_iter=1000), DIAB_X, DIAB_Y),
    "linear-svr": lambda: _fit(LinearSVR(max_iter=20000, random_state=0), DIAB_X, DIAB_Y),
    "lasso-cv": lambda: _fit(LassoCV(cv=3), DIAB_X, DIAB_Y),
}


def _check_same(est: Any, expected_name: str, dtype: Any = np.float64) -> None:
    found = kernels.linear_kernel(est)
    assert found is not None, type(est).__name__
    name, kernel = found
    assert name == expected_name
    batches = kernels.probe_batches(est.n_features_in_, dtype)
    assert len(batches) == len(kernels.PROBE_BATCH_SIZES)
    for batch in batches:
        got, want = kernel(batch), est.predict(batch)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), (name, len(batch))
    assert kernels.verified(kernel, est.predict, batches)


@pytest.mark.parametrize("case", sorted(CLASSIFIERS))
def test_linear_classifiers_get_a_kernel_with_the_estimators_answers(case: str) -> None:
    _check_same(CLASSIFIERS[case](), kernels.LINEAR_CLASSIFIER)


@pytest.mark.parametrize("case", sorted(REGRESSORS))
def test_linear_regressors_get_a_kernel_with_the_estimators_answers(case: str) -> None:
    _check_same(REGRESSORS[case](), kernels.LINEAR_REGRESSOR)


def test_integer_inputs_give_the_same_answers() -> None:
    _check_same(CLASSIFIERS["logistic-multiclass"](), kernels.LINEAR_CLASSIFIER, np.int64)
    _check_same(REGRESSORS["linear-regression"](), kernels.LINEAR_REGRESSOR, np.int64)


class _ShiftedLogistic(LogisticRegression):
    def predict(self, X: Any) -> Any:  # noqa: N803 - scikit-learn's name
        return super().predict(X)[::-1]


@pytest.mark.parametrize("make", [
    lambda: _fit(_ShiftedLogistic(max_iter=500), IRIS_X, IRIS_Y),  # its own predict
    lambda: _fit(RidgeClassifier(), IRIS_X, IRIS_Y),  # its own predict (multi-label aware)
    lambda: _fit(make_pipeline(StandardScaler(), LogisticRegression()), IRIS_X, IRIS_Y),
    lambda: _fit(DecisionTreeClassifier(random_state=0), IRIS_X, IRIS_Y),
    lambda: _fit(Ridge(alpha=0.3), DIAB_X, DIAB_Y),  # its own predict
    lambda: _fit(SGDRegressor(random_state=0), DIAB_X, DIAB_Y),  # its own _decision_function
    lambda: _fit(Lasso(alpha=0.1), DIAB_X, DIAB_Y),  # ElasticNet's own _decision_function
    lambda: _fit(ElasticNet(alpha=0.1), DIAB_X, DIAB_Y),
    lambda: _fit(SGDClassifier(random_state=0), IRIS_X, IRIS_Y).sparsify(),  # sparse coef_
    lambda: LogisticRegression(),  # not fitted
], ids=["subclass-own-predict", "ridge-classifier", "pipeline", "tree", "ridge", "sgd-regressor", "lasso", "elastic-net", "sparse-coef", "unfitted"])
def test_estimators_without_a_plain_linear_predict_get_no_kernel(make: Any) -> None:
    assert kernels.linear_kernel(make()) is None


def test_the_load_time_check_can_fail(caplog: pytest.LogCaptureFixture) -> None:
    est = CLASSIFIERS["logistic-multiclass"]()
    found = kernels.linear_kernel(est)
    assert found is not None
    batches = kernels.probe_batches(4, np.float64, [IRIS_X])
    assert kernels.verified(found[1], est.predict, batches)

    def off_by_one_row(x: np.ndarray) -> np.ndarray:
        out = est.predict(x)
        if len(out) > 20:
            out = out.copy()
            out[7] = (out[7] + 1) % 3
        return out  # type: ignore[no-any-return]

    def as_float(x: np.ndarray) -> np.ndarray:
        return est.predict(x).astype(np.float64)  # type: ignore[no-any-return]

    def failing(x: np.ndarray) -> np.ndarray:
        raise ValueError("no")

    with caplog.at_level(logging.WARNING, logger="app.server.kernels"):
        assert not kernels.verified(off_by_one_row, est.predict, batches)
        assert not kernels.verified(as_float, est.predict, batches)
        assert not kernels.verified(failing, est.predict, batches)
    assert sum("refused" in r.getMessage() for r in caplog.records) == 3
    # Nothing compared (the estimator refused every batch) proves nothing: no kernel.
    assert not kernels.verified(est.predict, failing, batches)


# -- the model loader attaches a kernel only where it agrees ----------------------------------


def _saved(tmp_path: Path, est: Any, x: np.ndarray = IRIS_X, **kwargs: Any) -> model_mod.LoadedModel:
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    frame = pd.DataFrame(x, columns=[f"c{i}" for i in range(x.shape[1])])
    path = tmp_path / "model"
    mlflow.sklearn.save_model(est, str(path), signature=infer_signature(frame, est.predict(frame.to_numpy())),
                              input_example=frame.head(5), **kwargs)
    pyfunc = mlflow.pyfunc.load_model(str(path))
    return model_mod.LoadedModel(name="m", version="1", alias="a", uri="models:/m/1", device="cpu",
                                 flavor="sklearn", pyfunc=pyfunc, input_schema=pyfunc.metadata.get_input_schema(),
                                 fast=model_mod._fast_spec(pyfunc))


def test_loader_attaches_the_kernel_and_serves_the_same_answers(tmp_path: Path) -> None:
    est = CLASSIFIERS["logistic-multiclass"]()
    model = _saved(tmp_path, est)
    assert model.fast is not None and model.fast.kernel is None
    model_mod.attach_kernel(model)
    assert model.fast.kernel is not None and model.fast.kernel_name == kernels.LINEAR_CLASSIFIER
    rows = IRIS_X[::7]
    assert np.array_equal(model.predict_fast(rows), model.predict_estimator(rows))
    assert np.array_equal(model.predict_fast(rows), est.predict(rows))


def test_loader_keeps_the_estimator_for_a_custom_predict_fn(tmp_path: Path) -> None:
    model = _saved(tmp_path, CLASSIFIERS["logistic-multiclass"](), pyfunc_predict_fn="predict_proba")
    assert model.fast is not None
    model_mod.attach_kernel(model)
    assert model.fast.kernel is None


def test_loader_keeps_the_estimator_when_the_kernel_disagrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    est = CLASSIFIERS["logistic-multiclass"]()
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
