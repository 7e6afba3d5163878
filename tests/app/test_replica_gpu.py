"""The CUDA path: a PyTorch model is loaded on the GPU and reported so. Runs only where torch
(app/requirements-cuda.txt) and a CUDA device exist; skipped everywhere else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest

from app import contract
from procstack import solo as rp


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


pytestmark = [
    pytest.mark.live,
    pytest.mark.gpu,
    pytest.mark.skipif(not _cuda(), reason="needs torch with a CUDA device (pip install -r app/requirements-cuda.txt)"),
]

MODEL = "iris-torch"
ALIAS = "champion"


def test_pytorch_model_is_served_from_the_gpu(tracking: rp.Proc, workdir: Path) -> None:
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        expected = net(xt[:5]).numpy()

    mlflow.set_tracking_uri(tracking.url)
    mlflow.set_experiment("gpu")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(net, name="model", signature=infer_signature(X[:5], expected),
                                        input_example=X[:2])
    mv = mlflow.register_model(info.model_uri, MODEL)
    mlflow.MlflowClient(tracking_uri=tracking.url).set_registered_model_alias(MODEL, ALIAS, mv.version)

    proc = rp.start_replica(tracking.url, MODEL, ALIAS, workdir, **{contract.ENV_DEVICE: contract.DEVICE_CUDA})
    try:
        health = httpx.get(proc.url + contract.ROUTE_HEALTH, timeout=10).json()
        assert health["device"] == contract.DEVICE_CUDA, health
        assert health["model"]["flavor"] == "pytorch"
        r = httpx.post(proc.url + contract.ROUTE_INVOCATIONS, json={"inputs": X[:5].tolist()}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["predictions"], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    finally:
        proc.stop()
