"""Models the replica benchmark serves besides the trainer's LogisticRegression, logged and
registered the way app/trainer.py logs its model (fitted on the iris DataFrame, so that the
estimator, the signature and the input example name the columns):

- `pipeline`: Pipeline(StandardScaler, LogisticRegression), which the replica predicts with a
  kernel checked at load (app/server/kernels.py);
- `forest`: RandomForestClassifier(100 trees), which it predicts with the estimator itself
  (micro-batched).
"""

from __future__ import annotations

from typing import Any

KINDS = ("pipeline", "forest")


def estimator(kind: str) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "pipeline":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0))
    if kind == "forest":
        return RandomForestClassifier(n_estimators=100, random_state=0)
    raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")


def register(tracking_uri: str, name: str, alias: str, kind: str) -> str:
    """Fit, log and register the model; point `alias` at it. Returns the version."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris

    mlflow.set_tracking_uri(tracking_uri)
    iris = load_iris(as_frame=True)
    x = iris.data.astype(np.float64)
    model = estimator(kind).fit(x, iris.target)
    signature = infer_signature(x, model.predict(x))
    mlflow.set_experiment(f"{name}-bench")
    with mlflow.start_run():
        # MLflow's skops format refuses tree structures unless named as trusted; this one we made.
        trusted = {"skops_trusted_types": ["sklearn.tree._tree.Tree"]} if kind == "forest" else {}
        # As app/trainer.py: the flavour's requirements, not MLflow's slow inference of them.
        info = mlflow.sklearn.log_model(model, name="model", signature=signature, input_example=x.head(3),
                                        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
                                        **trusted)
        version = str(mlflow.register_model(info.model_uri, name).version)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, version)
    return version
