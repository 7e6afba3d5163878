"""The CUDA path: a PyTorch model trained and logged on the CPU is loaded on the GPU and
reported so, by a replica of one process, of two processes sharing the GPU, and of one process
per GPU (WORKERS_PER_GPU); logged as MLflow 3 logs by default (an exported program, whose
weights MLflow will not move) and pickled. Runs only where torch (app/requirements-cuda.txt)
and a CUDA device exist; skipped everywhere else."""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path
from typing import Any

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

MODEL = "iris-torch"  # MLflow's default serialization: torch.export (pt2)
MODEL_PICKLED = "iris-torch-pickled"
ALIAS = "champion"


@pytest.fixture(scope="module")
def torch_model(tracking: rp.Proc) -> tuple[Any, Any]:
    """A small PyTorch classifier registered as MODEL@ALIAS and MODEL_PICKLED@ALIAS: (inputs,
    the logits it gives them)."""
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
    for name, serialization in ((MODEL, {}), (MODEL_PICKLED, {"serialization_format": "pickle"})):
        with mlflow.start_run():
            info = mlflow.pytorch.log_model(net, name="model", signature=infer_signature(X[:5], expected),
                                            input_example=X[:2], **serialization)
        mv = mlflow.register_model(info.model_uri, name)
        mlflow.MlflowClient(tracking_uri=tracking.url).set_registered_model_alias(name, ALIAS, mv.version)
    return X[:5], expected


def _gpu_pids() -> set[int]:
    """The processes holding a CUDA context, as the driver lists them."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


def _serving(health: dict[str, Any]) -> list[int]:
    return [p["pid"] for p in health["workers"]["processes"] if p["state"] == "serving"]


@pytest.mark.parametrize(("model", "workers"), [(MODEL, "1"), (MODEL, "2"), (MODEL, contract.WORKERS_PER_GPU),
                                               (MODEL_PICKLED, "1")])
def test_pytorch_model_is_served_from_the_gpu(model: str, workers: str, tracking: rp.Proc,
                                              torch_model: tuple[Any, Any], workdir: Path) -> None:
    import numpy as np
    import torch

    inputs, expected = torch_model
    processes = torch.cuda.device_count() if workers == contract.WORKERS_PER_GPU else int(workers)
    proc = rp.start_replica(tracking.url, model, ALIAS, workdir, deadline_s=60,
                            **{contract.ENV_DEVICE: contract.DEVICE_CUDA, contract.ENV_WORKERS: workers})
    try:
        # Ready means one process serves; the others finish loading the model on the GPU.
        deadline = time.monotonic() + 60
        while True:
            health = httpx.get(proc.url + contract.ROUTE_HEALTH, timeout=10).json()
            if len(_serving(health)) == processes or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # poll interval of a readiness loop with a deadline
        assert health["workers"]["configured"] == processes, health["workers"]
        assert len(_serving(health)) == processes, health["workers"]
        assert health["device"] == contract.DEVICE_CUDA, health
        assert health["model"]["flavor"] == "pytorch"
        for _ in range(4 * processes):
            r = httpx.post(proc.url + contract.ROUTE_INVOCATIONS, json={"inputs": inputs.tolist()}, timeout=60)
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["predictions"], dtype=np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
        # Every serving process holds its own CUDA context: the model is on the GPU in each.
        missing = set(_serving(health)) - _gpu_pids()
        assert not missing, f"serving processes without a CUDA context: {missing} ({health['workers']})"
    finally:
        proc.stop()
