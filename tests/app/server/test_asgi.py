"""app/server/asgi.py: the HTTP layer in process (routes, admission control, draining, request ids)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx
import numpy as np
import pytest

from app import contract
from app.server import config as config_mod
from app.server.asgi import ReplicaApp
from app.server.manager import RegistryState
from app.server.model import Answer, NotFast

from .helpers import BASE_ENV


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
        self.alias_version = None
        self.registry = RegistryState()

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


# -- failures: logged with their traceback, answered as JSON ---------------------------------

class _BrokenParser(_FakeModel):
    """A fast-path parser with a bug (what a list as a column name once was)."""

    def parse_fast(self, body: bytes, ct: str | None) -> np.ndarray:
        raise TypeError("unhashable type: 'list'")

    def score_reference(self, body: bytes, ct: str | None) -> Answer:
        return Answer(200, b'{"predictions": ["reference"]}')


class _BrokenHealthManager(_FakeManager):
    @property
    def last_error(self) -> Any:
        raise RuntimeError("health is broken")

    @last_error.setter
    def last_error(self, value: Any) -> None:
        pass


def test_a_fast_path_bug_is_logged_and_mlflows_path_answers(caplog: pytest.LogCaptureFixture) -> None:
    app = _app(_BrokenParser())

    async def scenario() -> httpx.Response:
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                return await c.post(contract.ROUTE_INVOCATIONS, content=b'{"dataframe_split": {}}',
                                    headers={"Content-Type": "application/json"})
        finally:
            await app.shutdown()

    with caplog.at_level(logging.INFO, logger="app.server"):
        r = _run(scenario())
    assert r.status_code == 200 and r.json() == {"predictions": ["reference"]}
    assert [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is TypeError]


def test_any_exception_in_a_request_is_logged_and_answered_as_json_500(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_INSTANCE_ID: "r-test"})
    app = ReplicaApp(cfg, manager=_BrokenHealthManager(_FakeModel()))  # type: ignore[arg-type]

    async def scenario() -> tuple[httpx.Response, str]:
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                r = await c.get(contract.ROUTE_HEALTH, headers={contract.HEADER_REQUEST_ID: "rid-broken"})
                return r, (await c.get(contract.ROUTE_METRICS)).text
        finally:
            await app.shutdown()

    with caplog.at_level(logging.INFO, logger="app.server"):
        r, metrics = _run(scenario())
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error_code"] == "INTERNAL_ERROR" and "health is broken" in r.json()["message"]
    assert r.headers[contract.HEADER_REQUEST_ID] == "rid-broken"
    assert 'mlserve_replica_requests_total{route="/health",status="500"} 1.0' in metrics
    failed = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is RuntimeError]
    assert failed and failed[0].levelno == logging.ERROR


def test_health_shows_the_registry_and_a_failing_one_degrades_but_keeps_ready() -> None:
    mgr = _FakeManager(_FakeModel())
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_INSTANCE_ID: "r-test"})
    app = ReplicaApp(cfg, manager=mgr)  # type: ignore[arg-type]

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get(path)

    async def scenario() -> None:
        await app.startup()
        try:
            mgr.registry = RegistryState(ok=True, last_success_at=100.0)
            h = (await get(contract.ROUTE_HEALTH)).json()
            assert h["state"] == "ready" and h["last_registry_check"] == 100.0
            assert h["registry"] == {"ok": True, "last_success_at": 100.0, "last_error": None, "failing_since": None,
                                     "consecutive_failures": 0}
            mgr.registry = RegistryState(ok=False, last_success_at=100.0, last_error="refused", last_error_at=130.0,
                                         failing_since=110.0, consecutive_failures=3)
            h = (await get(contract.ROUTE_HEALTH)).json()
            assert h["state"] == "degraded"
            assert h["registry"] == {"ok": False, "last_success_at": 100.0,
                                     "last_error": {"message": "refused", "at": 130.0},
                                     "failing_since": 110.0, "consecutive_failures": 3}
            ready = await get(contract.ROUTE_READY)
            assert ready.status_code == 200 and ready.json() == {"ready": True, "state": "degraded"}
        finally:
            await app.shutdown()

    _run(scenario())
