"""Prediction kernels: a fitted linear model's `predict`, minus scikit-learn's per-call checks.

For a 16-row batch of iris, `LogisticRegression.predict` costs ~95 us on this machine
(~230 us inside the busy server), of which the arithmetic is ~3 us: the rest is input
validation, array-API dispatch and namespace checks, run again on every call. The fast
path has already done what those checks establish (a 2-D float64 or int64 array of
exactly the signature's columns, finite because orjson rejects NaN and Infinity), so for
the estimators whose prediction is a closed formula over fitted arrays, a kernel applies
that formula with the same numpy operations, in the same order, that scikit-learn runs
after its checks (`LinearClassifierMixin.predict`/`decision_function`,
`LinearModel.predict`/`_decision_function`, scikit-learn as pinned).

A kernel is used only for an estimator whose class inherits those methods unchanged
(so a subclass with its own `predict` or ElasticNet's sparse-aware variant gets none), and
only after it gave, at load, the same dtype, shape and values as the estimator's own
`predict` on the model's input example and on seeded random batches of several sizes.
Anything else keeps calling the estimator.

The common `Pipeline(StandardScaler, linear model)` gets the linear kernel behind the
scaler's own arithmetic (`StandardScaler.transform` on a dense array: a float copy, minus
`mean_`, divided by `scale_`): there the per-call checks are paid three times (pipeline,
scaler, model) for ~5 us of arithmetic. Same rule: exactly those classes, checked at load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

log = logging.getLogger("app.server.kernels")

Kernel = Callable[[np.ndarray], np.ndarray]

LINEAR_CLASSIFIER = "sklearn-linear-classifier"
LINEAR_REGRESSOR = "sklearn-linear-regressor"

# Batch sizes the load-time check compares kernel and estimator on: one row (what
# `mlflow models serve` sees per request) up to more than a default micro-batch.
PROBE_BATCH_SIZES = (1, 2, 3, 16, 33, 64)
PROBE_SEED = 20261123


def _linear_bases() -> tuple[Any, Any, Any] | None:
    try:
        from sklearn.linear_model._base import LinearClassifierMixin, LinearModel, MultiOutputLinearModel
    except ImportError:  # a scikit-learn whose private layout moved: no kernels, nothing breaks
        return None
    return LinearClassifierMixin, LinearModel, MultiOutputLinearModel


def _dense(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def linear_kernel(estimator: Any) -> tuple[str, Kernel] | None:
    """The kernel for this fitted estimator and its name, or None (not a plain linear model)."""
    bases = _linear_bases()
    if bases is None:
        return None
    classifier_mixin, linear_model, multi_output = bases
    cls = type(estimator)
    coef: Any = getattr(estimator, "coef_", None)
    intercept: Any = getattr(estimator, "intercept_", None)
    if not _dense(coef) or coef.ndim not in (1, 2):
        return None  # unfitted, or sparsified (SparseCoefMixin.sparsify)
    if not (_dense(intercept) or isinstance(intercept, (float, np.floating))):
        return None
    if (getattr(cls, "predict", None) is classifier_mixin.predict
            and getattr(cls, "decision_function", None) is classifier_mixin.decision_function):
        classes = getattr(estimator, "classes_", None)
        if not isinstance(classes, np.ndarray):
            return None
        return LINEAR_CLASSIFIER, _classifier(coef, intercept, classes)
    if (getattr(cls, "predict", None) in (linear_model.predict, multi_output.predict)
            and getattr(cls, "_decision_function", None) is linear_model._decision_function):
        return LINEAR_REGRESSOR, _regressor(coef, intercept)
    return None


def find_kernel(estimator: Any) -> tuple[str, Kernel] | None:
    """The kernel for this fitted estimator (a plain linear model, or one behind a
    StandardScaler in a Pipeline) and its name, or None."""
    found = linear_kernel(estimator)
    if found is None:
        found = scaled_linear_kernel(estimator)
    return found


def scaled_linear_kernel(estimator: Any) -> tuple[str, Kernel] | None:
    """`Pipeline([StandardScaler(), <linear model>])`: the scaler's transform, then the model's kernel."""
    try:
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return None
    if type(estimator) is not Pipeline or len(estimator.steps) != 2:
        return None
    (_, scaler), (_, model) = estimator.steps
    if type(scaler) is not StandardScaler or model in (None, "passthrough"):
        return None
    if getattr(scaler, "_sklearn_output_config", None):
        return None  # set_output(...): the model would get a DataFrame
    mean: Any = getattr(scaler, "mean_", None) if scaler.with_mean else None
    scale: Any = getattr(scaler, "scale_", None) if scaler.with_std else None
    if (scaler.with_mean and not _dense(mean)) or (scaler.with_std and not _dense(scale)):
        return None
    inner = linear_kernel(model)
    if inner is None:
        return None
    name, predict = inner

    def kernel(x: np.ndarray) -> np.ndarray:
        # validate_data's float copy (float64 stays, int64 becomes float64), then in place as transform does.
        xt = np.array(x, dtype=np.float64 if x.dtype.kind != "f" else x.dtype, copy=True)
        if mean is not None:
            xt -= mean.astype(xt.dtype, copy=False)
        if scale is not None:
            xt /= scale.astype(xt.dtype, copy=False)
        return predict(xt)

    return f"sklearn-standard-scaler+{name.removeprefix('sklearn-')}", kernel


def _classifier(coef: np.ndarray, intercept: Any, classes: np.ndarray) -> Kernel:
    index_dtype = np.asarray(0).dtype  # scikit-learn's indexing_dtype(numpy)

    def predict(x: np.ndarray) -> np.ndarray:
        coef_t = coef.T if coef.ndim == 2 else coef
        scores = x @ coef_t + intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = np.reshape(scores, (-1,))
        if len(scores.shape) == 1:
            indices = (scores > 0).astype(index_dtype)
        else:
            indices = np.argmax(scores, axis=1)
        return np.take(classes, indices, axis=0)  # type: ignore[no-any-return]

    return predict


def _regressor(coef: np.ndarray, intercept: Any) -> Kernel:
    def predict(x: np.ndarray) -> np.ndarray:
        if coef.ndim == 1:
            return x @ coef + intercept  # type: ignore[no-any-return]
        return x @ coef.T + intercept  # type: ignore[no-any-return]

    return predict


def probe_batches(n_columns: int, dtype: Any, examples: Iterable[np.ndarray] = ()) -> list[np.ndarray]:
    """What a kernel is checked on: the given example batches, then seeded random ones, all
    in the layout the fast path predicts on (column-major, see `LoadedModel.rows_array`):
    BLAS may round differently for another layout, and the check must see what serving sees."""
    rng = np.random.default_rng(PROBE_SEED)
    batches = [np.asfortranarray(e, dtype=dtype) for e in examples if e.ndim == 2 and e.shape[1] == n_columns and len(e)]
    for n in PROBE_BATCH_SIZES:
        if np.dtype(dtype).kind == "f":
            # Mixed scales, so the check is not only on values near zero.
            batch = rng.normal(0.0, 1.0, (n, n_columns)) * rng.choice([0.01, 1.0, 100.0], (n, n_columns))
        else:
            batch = rng.integers(-1000, 1000, (n, n_columns))
        batches.append(np.asfortranarray(batch, dtype=dtype))
    return batches


def same_predictions(a: Any, b: Any) -> bool:
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def verified(kernel: Kernel, reference: Kernel, batches: Iterable[np.ndarray]) -> bool:
    """True when the kernel gave exactly the reference's answer on every batch, and there
    was at least one batch the reference answered."""
    compared = 0
    for batch in batches:
        try:
            expected = reference(batch)
        except Exception:  # noqa: BLE001 - a batch the estimator itself refuses says nothing about the kernel
            continue
        try:
            got = kernel(batch)
        except Exception as exc:  # noqa: BLE001
            log.warning("prediction kernel refused: it failed where the estimator did not",
                        extra={"error": repr(exc), "rows": len(batch)})
            return False
        if not same_predictions(got, expected):
            log.warning("prediction kernel refused: its answer differs from the estimator's", extra={"rows": len(batch)})
            return False
        compared += 1
    return compared > 0
