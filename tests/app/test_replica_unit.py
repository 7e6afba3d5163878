"""Fast tests of the replica's parts, in process: configuration, device choice, metrics,
admission control and draining, logs, and the Dockerfiles against the contract."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app import contract
from app.server import config as config_mod
from app.server import logs
from app.server.asgi import ReplicaApp, _Item, _score
from app.server.metrics import Metrics
from app.server.model import Answer, FastSpec, LoadedModel, NotFast, resolve_device

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
BASE_ENV = {contract.ENV_TRACKING_URI: "http://127.0.0.1:1", contract.ENV_MODEL_NAME: "m",
            contract.ENV_MODEL_ALIAS: "champion"}


# -- configuration --------------------------------------------------------------------------

def test_config_defaults_and_overrides() -> None:
    cfg = config_mod.from_env(BASE_ENV)
    assert cfg.port == contract.REPLICA_PORT and cfg.bind_host == "0.0.0.0"
    assert cfg.device == contract.DEVICE_AUTO
    assert cfg.model_uri == "models:/m@champion"
    assert cfg.predict_kernels is True
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_PORT: "9001", contract.ENV_MAX_BATCH_SIZE: "7",
                               contract.ENV_MAX_BATCH_WAIT_MS: "0.5", contract.ENV_DEVICE: "CUDA",
                               contract.ENV_INSTANCE_ID: "r-3", contract.ENV_PREDICT_KERNELS: "False"})
    assert (cfg.port, cfg.max_batch_size, cfg.max_batch_wait_ms, cfg.device, cfg.instance_id, cfg.predict_kernels) == \
        (9001, 7, 0.5, contract.DEVICE_CUDA, "r-3", False)


@pytest.mark.parametrize(("key", "value"), [
    (contract.ENV_PORT, "http"), (contract.ENV_PORT, "70000"), (contract.ENV_MAX_BATCH_SIZE, "0"),
    (contract.ENV_MAX_QUEUE, "1.5"), (contract.ENV_DEVICE, "tpu"), (contract.ENV_LOG_LEVEL, "loud"),
    (contract.ENV_MAX_BODY_BYTES, "-1"), (contract.ENV_POLL_INTERVAL_S, "never"),
    (contract.ENV_PREDICT_KERNELS, "sometimes"),
])
def test_config_errors_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(config_mod.ConfigError, match=key):
        config_mod.from_env({**BASE_ENV, key: value})


@pytest.mark.parametrize("missing", [contract.ENV_TRACKING_URI, contract.ENV_MODEL_NAME, contract.ENV_MODEL_ALIAS])
def test_config_requires_model_coordinates(missing: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != missing}
    with pytest.raises(config_mod.ConfigError, match=missing):
        config_mod.from_env(env)


def test_server_exits_2_with_the_bad_variable_named() -> None:
    out = subprocess.run([sys.executable, "-m", contract.REPLICA_MODULE], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", **BASE_ENV, contract.ENV_DEVICE: "tpu"}, timeout=120)
    assert out.returncode == 2 and contract.ENV_DEVICE in out.stderr


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


def test_server_never_imports_torch() -> None:
    code = ("import sys, app.server.__main__, app.server.asgi, app.server.model, app.server.manager;"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


# -- metrics and logs ---------------------------------------------------------------------

def test_metrics_exposition() -> None:
    m = Metrics("r-1", "m", "champion")
    m.observe(contract.ROUTE_INVOCATIONS, 200, 0.003)
    m.observe(contract.ROUTE_INVOCATIONS, 400, 0.3)
    m.model_loaded("3", None, 1.0)
    m.model_loaded("4", "3", 1.0)
    m.load_failures.inc()
    m.batch_rows.observe(5)
    text = m.render().decode()
    assert 'mlserve_replica_requests_total{route="/invocations",status="200"} 1.0' in text
    assert 'mlserve_replica_request_duration_seconds_bucket{le="0.005",route="/invocations"} 1.0' in text
    assert 'mlserve_replica_request_duration_seconds_bucket{le="+Inf",route="/invocations"} 2.0' in text
    assert "mlserve_replica_model_version 4.0" in text
    assert 'mlserve_replica_model_version_info{alias="champion",model="m",version="3"} 0.0' in text
    assert "mlserve_replica_model_load_failures_total 1.0" in text
    assert "mlserve_replica_model_swaps_total 1.0" in text
    assert "mlserve_replica_batch_rows_count 1.0" in text


def test_json_log_lines_carry_instance_and_request_id() -> None:
    fmt = logs.JsonFormatter("r-9")
    token = logs.request_id.set("req-1")
    try:
        rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
        rec.status = 400
        line = json.loads(fmt.format(rec))
    finally:
        logs.request_id.reset(token)
    assert line["instance_id"] == "r-9" and line["request_id"] == "req-1"
    assert line["msg"] == "hello you" and line["status"] == 400 and line["level"] == "info"


# -- the ASGI app in process --------------------------------------------------------------

class _FakeModel:
    """Takes MLflow's path for everything; scoring blocks until released."""

    version = "7"
    fast = None
    flavor = "fake"
    device = contract.DEVICE_CPU
    loaded_at = 0.0

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def parse_fast(self, body: bytes, ct: str | None) -> np.ndarray:
        raise NotFast

    def score_reference(self, body: bytes, ct: str | None) -> Answer:
        self.entered.set()
        self.release.wait(10)
        return Answer(200, b'{"predictions": [1]}')


class _FakeManager:
    def __init__(self, model: Any) -> None:
        self.current = model
        self.last_error = None
        self.last_check = None
        self.alias_version = None

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _app(model: Any, **env: str) -> ReplicaApp:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_INSTANCE_ID: "r-test", **env})
    return ReplicaApp(cfg, manager=_FakeManager(model))  # type: ignore[arg-type]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_queue_full_answers_503_with_retry_after() -> None:
    model = _FakeModel()
    app = _app(model, **{contract.ENV_MAX_QUEUE: "1"})

    async def scenario() -> None:
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = asyncio.create_task(c.post(contract.ROUTE_INVOCATIONS, content=b"{}",
                                                   headers={"Content-Type": "application/json"}))
                await asyncio.to_thread(model.entered.wait, 10)
                second = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}",
                                      headers={"Content-Type": "application/json"})
                assert second.status_code == 503
                assert second.headers["retry-after"]
                assert second.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
                model.release.set()
                r = await first
                assert r.status_code == 200
                assert r.headers[contract.HEADER_MODEL_VERSION] == "7"
                assert r.headers[contract.HEADER_INSTANCE_ID] == "r-test"
                metrics = (await c.get(contract.ROUTE_METRICS)).text
                assert "mlserve_replica_rejected_total 1.0" in metrics
        finally:
            model.release.set()
            await app.shutdown()

    _run(scenario())


def test_draining_turns_ready_503_at_once_and_keeps_serving_inflight() -> None:
    model = _FakeModel()
    app = _app(model)

    async def scenario() -> None:
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                assert (await c.get(contract.ROUTE_READY)).status_code == 200
                inflight = asyncio.create_task(c.post(contract.ROUTE_INVOCATIONS, content=b"{}",
                                                      headers={"Content-Type": "application/json"}))
                await asyncio.to_thread(model.entered.wait, 10)
                app.begin_drain()  # what SIGTERM calls
                ready = await c.get(contract.ROUTE_READY)
                assert ready.status_code == 503 and ready.json()["state"] == "draining"
                assert (await c.get(contract.ROUTE_HEALTH)).json()["state"] == "draining"
                model.release.set()
                assert (await inflight).status_code == 200
        finally:
            model.release.set()
            await app.shutdown()

    _run(scenario())


def test_no_model_yet_and_request_ids_and_unknown_routes() -> None:
    app = _app(None)

    async def scenario() -> None:
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                r = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}",
                                 headers={"Content-Type": "application/json", contract.HEADER_REQUEST_ID: "abc-123"})
                assert r.status_code == 503 and r.headers["retry-after"]
                assert r.headers[contract.HEADER_REQUEST_ID] == "abc-123"
                assert (await c.get(contract.ROUTE_READY)).status_code == 503
                assert (await c.get(contract.ROUTE_PING)).status_code == 503
                h = (await c.get(contract.ROUTE_HEALTH)).json()
                assert h["state"] == "loading" and h["instance_id"] == "r-test" and h["model"]["version"] is None
                a = await c.get(contract.ROUTE_HEALTH)
                b = await c.get(contract.ROUTE_HEALTH)
                assert a.headers[contract.HEADER_REQUEST_ID] != b.headers[contract.HEADER_REQUEST_ID]
                assert (await c.get("/nope")).status_code == 404
                assert (await c.post(contract.ROUTE_HEALTH)).status_code == 405
                assert (await c.get(contract.ROUTE_INVOCATIONS)).status_code == 405
        finally:
            await app.shutdown()

    _run(scenario())


# -- images -------------------------------------------------------------------------------

def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = (APP / dockerfile).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_replica_dockerfile_matches_the_contract() -> None:
    ins = _instructions(contract.REPLICA_DOCKERFILE)
    get = lambda k: [v for w, v in ins if w == k]  # noqa: E731
    assert f"{contract.BUILD_ARG_VARIANT}=cpu" in get("ARG")
    assert get("WORKDIR") == [contract.IMAGE_WORKDIR]
    assert f"{contract.IMAGE_WORKDIR}/app" in get("COPY")[-1]
    assert get("EXPOSE") == [str(contract.REPLICA_PORT)]
    assert get("STOPSIGNAL") == ["SIGTERM"]
    user = get("USER")[-1]
    assert not user.startswith(("root", "0")), user
    assert json.loads(get("CMD")[-1]) == ["python", "-m", contract.REPLICA_MODULE]  # exec form
    hc = get("HEALTHCHECK")[-1]
    assert "app.server.probe" in hc and "CMD [" in hc
    run = " ".join(get("RUN"))
    assert "requirements.txt" in run and "requirements-cuda.txt" in run


def test_mlflow_dockerfile_installs_pinned_drivers() -> None:
    ins = _instructions(contract.TRACKING_DOCKERFILE)
    run = " ".join(v for w, v in ins if w == "RUN")
    for pkg in ("mlflow", "pymysql", "boto3"):
        assert pkg in run
    assert [v for w, v in ins if w == "EXPOSE"] == [str(contract.MLFLOW_PORT)]
    assert f"127.0.0.1:{contract.MLFLOW_PORT}/health" in " ".join(v for w, v in ins if w == "HEALTHCHECK")
    assert [v for w, v in ins if w == "USER"][-1].split(":")[0] != "0"


def test_requirements_are_pinned_and_torch_is_opt_in() -> None:
    reqs = [ln.strip() for ln in (APP / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    for ln in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[\w.]+", ln), ln
    assert not any(ln.startswith("torch") for ln in reqs)
    cuda = [ln.strip() for ln in (APP / "requirements-cuda.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert cuda and all("==" in ln for ln in cuda) and any(ln.startswith("torch==") for ln in cuda)


def test_probe_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "app.server.probe"], cwd=ROOT, capture_output=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", contract.ENV_PORT: str(port)})
    assert out.returncode == 1


# -- fast-path batching ---------------------------------------------------------------------

class _RefLongModel(LoadedModel):
    """A `long` signature whose estimator doubles its input; MLflow's path is faked."""

    def score_reference(self, body: bytes, content_type: str | None) -> Answer:
        return Answer(200, b'{"predictions": "reference"}')


def _long_model() -> _RefLongModel:
    spec = FastSpec(("a",), {"a": 0}, np.int64, lambda x: x[:, 0] * 2, None, ["a"])
    return _RefLongModel("m", "1", "champion", "models:/m/1", contract.DEVICE_CPU, "sklearn", None, None, spec)


def test_batch_rows_become_one_array_and_each_request_gets_its_slice() -> None:
    m = _long_model()
    bodies = [b'{"inputs": [{"a": 1}, {"a": 2}]}', b'{"dataframe_split": {"columns": ["a"], "data": [[5]]}}']
    items = [_Item(m, None, m.parse_fast(b, "application/json"), b, "application/json", True)  # type: ignore[arg-type]
             for b in bodies]
    answers, rows = _score(items)
    assert rows == 3
    assert [json.loads(a.body) for a in answers] == [{"predictions": [2, 4]}, {"predictions": [10]}]


def test_a_row_numpy_refuses_sends_its_batch_down_mlflows_path() -> None:
    m = _long_model()
    big = b'{"inputs": [{"a": 9223372036854775808}]}'  # beyond int64: parsed, refused by numpy
    rows = m.parse_fast(big, "application/json")
    with pytest.raises(NotFast):
        m.rows_array(rows)
    ok = b'{"inputs": [{"a": 1}]}'
    items = [_Item(m, None, m.parse_fast(b, "application/json"), b, "application/json", True)  # type: ignore[arg-type]
             for b in (ok, big)]
    answers, model_rows = _score(items)
    assert model_rows == 0
    assert [a.body for a in answers] == [b'{"predictions": "reference"}'] * 2


# -- the batcher: batches formed on the model thread ------------------------------------------

class _GatedSpecModel:
    """Fast-path models whose predictions record each call's row count; the first call of
    the first model blocks until `gate` is set, so requests queue up behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()  # the gated call has begun
        self.calls: dict[str, list[int]] = {}

    def model(self, name: str, gated: bool = False) -> _RefLongModel:
        calls = self.calls.setdefault(name, [])

        def predict(x: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            if gated and len(calls) == 1:
                self.entered.set()
                assert self.gate.wait(10)
            return x[:, 0] * 2  # type: ignore[no-any-return]

        spec = FastSpec(("a",), {"a": 0}, np.int64, predict, None, ["a"])
        return _RefLongModel(name, "1", "champion", f"models:/{name}/1", contract.DEVICE_CPU, "sklearn", None, None,
                             spec)


def _item(m: LoadedModel, values: list[int] | None) -> _Item:
    fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    body = json.dumps({"inputs": [{"a": v} for v in values or [0]]}).encode()
    rows = m.parse_fast(body, "application/json") if values is not None else None
    return _Item(m, fut, rows, body, "application/json", True)


def _batcher(wait_ms: str = "0", receiving: Any = lambda: 0) -> Any:
    from app.server.asgi import Batcher

    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_MAX_BATCH_SIZE: "4", contract.ENV_MAX_BATCH_WAIT_MS: wait_ms})
    return Batcher(cfg, Metrics("r", "m", "a"), receiving)


def test_requests_queued_behind_a_busy_model_merge_by_model_and_size() -> None:
    fakes = _GatedSpecModel()
    m1, m2 = fakes.model("m1", gated=True), fakes.model("m2")

    async def scenario() -> list[Answer]:
        b = _batcher()
        b.start()
        try:
            first = _item(m1, [1])
            b.submit(first)
            assert await asyncio.to_thread(fakes.entered.wait, 10)  # the model thread is busy with it
            queued = [_item(m1, [2, 3]), _item(m1, [4]), _item(m2, [5]), _item(m1, None), _item(m1, [6]),
                      _item(m1, [7, 8, 9]), _item(m1, [10, 11])]
            for it in queued:
                b.submit(it)
            fakes.gate.set()
            return [await asyncio.wait_for(it.future, 10) for it in [first, *queued]]
        finally:
            await b.stop()

    answers = _run(scenario())
    assert [a.status for a in answers] == [200] * 8
    assert [json.loads(a.body)["predictions"] for a in answers] == [
        [2], [4, 6], [8], [10], "reference", [12], [14, 16, 18], [20, 22]]
    # [1] alone (the model thread took it at once); [2,3]+[4] up to the other model's
    # request; m2's alone; the reference request alone; [6]+[7,8,9] fill the 4-row limit.
    assert fakes.calls == {"m1": [1, 3, 4, 2], "m2": [1]}


def test_a_batch_waits_only_for_requests_still_being_received() -> None:
    fakes = _GatedSpecModel()
    m = fakes.model("m")
    receiving = [1]

    async def scenario() -> None:
        # A long max wait that ends as soon as the awaited request is queued.
        b = _batcher(wait_ms="5000", receiving=lambda: receiving[0])
        b.start()
        try:
            first, second = _item(m, [1]), _item(m, [2])
            b.submit(first)
            asyncio.get_running_loop().call_later(0.05, b.submit, second)
            await asyncio.wait_for(asyncio.gather(first.future, second.future), 10)
            assert fakes.calls["m"] == [2]  # one model call for both
            receiving[0] = 0  # nothing on its way: no waiting, one call each
            third = _item(m, [3])
            b.submit(third)
            await asyncio.wait_for(third.future, 10)
            fourth = _item(m, [4])
            b.submit(fourth)
            await asyncio.wait_for(fourth.future, 10)
            assert fakes.calls["m"] == [2, 1, 1]
        finally:
            await b.stop()

    _run(scenario())


def test_stop_scores_what_was_queued_and_refuses_what_comes_after() -> None:
    fakes = _GatedSpecModel()
    m = fakes.model("m", gated=True)

    async def scenario() -> None:
        b = _batcher()
        b.start()
        first = _item(m, [1])
        b.submit(first)
        assert await asyncio.to_thread(fakes.entered.wait, 10)
        queued = _item(m, [2])
        b.submit(queued)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0)  # one loop turn: the stop task runs up to its join
        late = _item(m, [3])
        b.submit(late)
        assert late.future.done() and late.future.result().status == 503
        assert not stopping.done()
        fakes.gate.set()
        await asyncio.wait_for(stopping, 10)
        assert first.future.result().status == queued.future.result().status == 200
        assert json.loads(queued.future.result().body) == {"predictions": [4]}

    _run(scenario())
