"""app/server/kernels.py: the same answers as the estimator, or no kernel at all."""

from __future__ import annotations

import logging
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
    found = kernels.find_kernel(est)
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
    lambda: _fit(DecisionTreeClassifier(random_state=0), IRIS_X, IRIS_Y),
    lambda: _fit(Ridge(alpha=0.3), DIAB_X, DIAB_Y),  # its own predict
    lambda: _fit(SGDRegressor(random_state=0), DIAB_X, DIAB_Y),  # its own _decision_function
    lambda: _fit(Lasso(alpha=0.1), DIAB_X, DIAB_Y),  # ElasticNet's own _decision_function
    lambda: _fit(ElasticNet(alpha=0.1), DIAB_X, DIAB_Y),
    lambda: _fit(SGDClassifier(random_state=0), IRIS_X, IRIS_Y).sparsify(),  # sparse coef_
    lambda: LogisticRegression(),  # not fitted
], ids=["subclass-own-predict", "ridge-classifier", "tree", "ridge", "sgd-regressor", "lasso", "elastic-net", "sparse-coef", "unfitted"])
def test_estimators_without_a_plain_linear_predict_get_no_kernel(make: Any) -> None:
    assert kernels.find_kernel(make()) is None


PIPELINES = {
    "scaler-logistic": (lambda: _fit(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), IRIS_X, IRIS_Y),
                        "sklearn-standard-scaler+linear-classifier"),
    "scaler-logistic-binary": (lambda: _fit(make_pipeline(StandardScaler(), LogisticRegression()), IRIS_X, BINARY),
                               "sklearn-standard-scaler+linear-classifier"),
    "scaler-no-mean-svc": (lambda: _fit(make_pipeline(StandardScaler(with_mean=False), LinearSVC()), IRIS_X, IRIS_Y),
                           "sklearn-standard-scaler+linear-classifier"),
    "scaler-no-std-regression": (lambda: _fit(make_pipeline(StandardScaler(with_std=False), LinearRegression()),
                                              DIAB_X, DIAB_Y), "sklearn-standard-scaler+linear-regressor"),
    "scaler-regression": (lambda: _fit(make_pipeline(StandardScaler(), LinearRegression()), DIAB_X, DIAB_Y),
                          "sklearn-standard-scaler+linear-regressor"),
}


@pytest.mark.parametrize("case", sorted(PIPELINES))
@pytest.mark.parametrize("dtype", [np.float64, np.int64], ids=["float", "int"])
def test_a_standard_scaler_before_a_linear_model_gets_a_kernel_with_the_pipelines_answers(case: str, dtype: Any) -> None:
    make, name = PIPELINES[case]
    _check_same(make(), name, dtype)


class _OwnScaler(StandardScaler):
    def transform(self, X: Any, copy: Any = None) -> Any:  # noqa: N803 - scikit-learn's name
        return super().transform(X, copy) * 2


@pytest.mark.parametrize("make", [
    lambda: _fit(make_pipeline(StandardScaler(), Ridge()), DIAB_X, DIAB_Y),  # model without a kernel
    lambda: _fit(make_pipeline(_OwnScaler(), LogisticRegression()), IRIS_X, IRIS_Y),  # scaler with its own transform
    lambda: _fit(make_pipeline(StandardScaler(), StandardScaler(), LogisticRegression()), IRIS_X, IRIS_Y),
    lambda: _fit(make_pipeline(StandardScaler(), DecisionTreeClassifier(random_state=0)), IRIS_X, IRIS_Y),
    lambda: _fit(make_pipeline(StandardScaler().set_output(transform="pandas"), LogisticRegression()), IRIS_X, IRIS_Y),
    lambda: make_pipeline(StandardScaler(), LogisticRegression()),  # not fitted
], ids=["ridge", "own-scaler", "three-steps", "tree", "pandas-output", "unfitted"])
def test_other_pipelines_get_no_kernel(make: Any) -> None:
    assert kernels.find_kernel(make()) is None


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
