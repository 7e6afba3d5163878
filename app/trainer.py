"""Train the demo model, register it and point the alias at it.

Runs as `python -m app.trainer` (the stack's one-shot trainer container) and by
hand for the promotion demo:

    python -m app.trainer                    # first version, alias set if missing
    python -m app.trainer --c 0.05 --promote # a new version, alias moved to it

Idempotent: a version is identified by a fingerprint of everything that shapes
the model (data set, estimator, hyper-parameters, library versions), stored as a
version tag. Running again with the same inputs reuses that version instead of
registering a copy. With MLSERVE_TRAINER_ONLY_IF_EMPTY=1 (what the stack sets)
nothing is trained at all once the alias points somewhere, so restarting the
stack never touches a model somebody promoted by hand.

The data set (iris) ships with scikit-learn: nothing is downloaded.
Prints one JSON line: the version it registered or reused, and where the alias
points afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

from app import contract

FINGERPRINT_TAG = "mlserve.fingerprint"
SEED = 0


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise SystemExit(f"app.trainer: environment variable {name} must be set")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.trainer", description=__doc__.split("\n")[0])
    p.add_argument("--tracking-uri", default=os.environ.get(contract.ENV_TRACKING_URI))
    p.add_argument("--model-name", default=os.environ.get(contract.ENV_MODEL_NAME))
    p.add_argument("--alias", default=os.environ.get(contract.ENV_MODEL_ALIAS))
    p.add_argument(
        "--c",
        type=float,
        default=1.0,
        help="inverse regularisation strength of the LogisticRegression; a different value "
        "trains a different model, hence a new version",
    )
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument(
        "--promote",
        action="store_true",
        help="move the alias to the version trained now even if the alias already points elsewhere",
    )
    p.add_argument(
        "--only-if-empty",
        action="store_true",
        default=os.environ.get(contract.ENV_TRAINER_ONLY_IF_EMPTY, "") == "1",
        help=f"do nothing when the alias already points at a version (env {contract.ENV_TRAINER_ONLY_IF_EMPTY}=1)",
    )
    p.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the tracking server")
    args = p.parse_args(argv)
    for attr, env in (("tracking_uri", contract.ENV_TRACKING_URI), ("model_name", contract.ENV_MODEL_NAME), ("alias", contract.ENV_MODEL_ALIAS)):
        if not getattr(args, attr):
            p.error(f"--{attr.replace('_', '-')} or environment variable {env} is required")
    return args


def fingerprint(params: dict[str, Any]) -> str:
    import mlflow
    import sklearn

    blob = json.dumps(
        {"data": "sklearn.datasets.load_iris", "estimator": "LogisticRegression", "params": params,
         "sklearn": sklearn.__version__, "mlflow": mlflow.__version__, "seed": SEED},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _wait_for_server(client: Any, deadline_s: float) -> None:
    """The trainer container starts next to the tracking server: retry until it answers."""
    deadline = time.monotonic() + deadline_s
    delay = 0.5
    while True:
        try:
            client.search_registered_models(max_results=1)
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not up yet" until the deadline
            if time.monotonic() > deadline:
                raise SystemExit(f"app.trainer: tracking server not reachable: {exc}") from exc
            time.sleep(delay)  # retry backoff against a remote server, not a wait for our own process
            delay = min(delay * 2, 5.0)


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _find_version(client: Any, name: str, fp: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and tag.`{FINGERPRINT_TAG}` = '{fp}'")
    except MlflowException:
        # Older stores cannot filter on tags: scan instead.
        versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get(FINGERPRINT_TAG) == fp]
    ready = [v for v in versions if v.status == "READY"]
    return str(max(int(v.version) for v in ready)) if ready else None


def train_and_register(args: argparse.Namespace, client: Any) -> tuple[str, bool]:
    """The version for these inputs, and whether it was registered just now."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    params = {"C": args.c, "max_iter": args.max_iter}
    fp = fingerprint(params)
    existing = _find_version(client, args.model_name, fp)
    if existing is not None:
        return existing, False

    iris = load_iris(as_frame=True)
    X = iris.data.astype(np.float64)
    y = iris.target
    # Fitted on the DataFrame, as users fit theirs: the estimator carries the feature names,
    # so MLflow's pyfunc (which hands it a DataFrame) and the input example's check at
    # logging warn nothing. The replica's fast path then gives the estimator a DataFrame
    # per batch (the linear kernel needs none).
    model = LogisticRegression(C=args.c, max_iter=args.max_iter, random_state=SEED).fit(X, y)
    signature = infer_signature(X, model.predict(X))
    mlflow.set_experiment(f"{args.model_name}-training")
    with mlflow.start_run():
        mlflow.log_params(params)
        mlflow.log_metric("train_accuracy", float(model.score(X, y)))
        mlflow.set_tag(FINGERPRINT_TAG, fp)
        # The flavour's own requirements (scikit-learn and skops, pinned to what runs here; MLflow
        # adds itself) instead of MLflow's inference, which loads the model again in a subprocess
        # (seconds per version) and lists what the trainer's environment happened to import
        # (in this repository's venv: pytest and psutil), not what the model needs.
        requirements = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
        info = mlflow.sklearn.log_model(model, name="model", signature=signature, input_example=X.head(3),
                                        pip_requirements=requirements)
        mv = mlflow.register_model(info.model_uri, args.model_name, tags={FINGERPRINT_TAG: fp})
    return str(mv.version), True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    _wait_for_server(client, args.wait_s)

    current = _alias_version(client, args.model_name, args.alias)
    if args.only_if_empty and current is not None:
        print(json.dumps({"model": args.model_name, "alias": args.alias, "alias_version": current,
                          "version": None, "action": "skipped: alias already set"}), flush=True)
        return 0

    version, created = train_and_register(args, client)
    verb = "registered" if created else "reused (same inputs)"
    if current is None or args.promote:
        client.set_registered_model_alias(args.model_name, args.alias, version)
        action = f"{verb}; alias " + ("moved" if current is not None and current != version else
                                      "set" if current is None else "unchanged")
    else:
        action = f"{verb}; alias left at version {current} (use --promote to move it)"
    after = _alias_version(client, args.model_name, args.alias)
    print(json.dumps({"model": args.model_name, "alias": args.alias, "alias_version": after,
                      "version": version, "registered": created, "action": action}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
