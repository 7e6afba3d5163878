"""The replica's part of issue 13, in process: model headers on every invocation answer, the
scoring timeout (504 in JSON), a shadow's comparison with the primary's model, and sampled
payload logs that never block or fail a request."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from app import contract
from app.server import config as config_mod
from app.server import payloads as payloads_mod
from app.server.asgi import ReplicaApp
from app.server.metrics import Metrics
from app.server.model import Answer, NotFast
from app.server.shadow import AGREE, DISAGREE, ERROR, ShadowComparer, judge, same

from .helpers import BASE_ENV

JSON = {"Content-Type": "application/json"}


class _Model:
    """Answers `predictions` from a function of the request; may block until released."""

    fast = None
    flavor = "fake"
    device = contract.DEVICE_CPU
    loaded_at = 0.0

    def __init__(self, version: str, predict: Any = lambda body: [1], block: bool = False) -> None:
        self.version = version
        self.predict = predict
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        if not block:
            self.release.set()

    def parse_fast(self, body: bytes, ct: str | None) -> np.ndarray:
        raise NotFast

    def score_reference(self, body: bytes, ct: str | None) -> Answer:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        return Answer(200, orjson.dumps({"predictions": self.predict(body)}))


class _Manager:
    def __init__(self, model: Any) -> None:
        self.current = model
        self.last_error = None
        self.last_check = None
        self.alias_version = None

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def app_with(model: Any, primary: Any = None, **env: str) -> ReplicaApp:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_INSTANCE_ID: "r-test", **env})
    app = ReplicaApp(cfg, manager=_Manager(model))  # type: ignore[arg-type]
    if primary is not None:
        app.shadow = ShadowComparer(cfg, app.metrics, manager=_Manager(primary))  # type: ignore[arg-type]
    return app


async def serve(app: ReplicaApp, scenario: Any) -> Any:
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await scenario(client)
    finally:
        await app.shutdown()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{" if labels else name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- headers --------------------------------------------------------------------------------


def test_every_invocation_answer_names_the_model_alias_and_version() -> None:
    app = app_with(_Model("7"), **{contract.ENV_MODEL_NAME: "iris", contract.ENV_MODEL_ALIAS: "challenger"})

    async def scenario(c: httpx.AsyncClient) -> None:
        ok = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON)
        assert ok.status_code == 200
        assert (ok.headers[contract.HEADER_MODEL_NAME], ok.headers[contract.HEADER_MODEL_ALIAS],
                ok.headers[contract.HEADER_MODEL_VERSION]) == ("iris", "challenger", "7")
        wrong = await c.get(contract.ROUTE_INVOCATIONS)  # even a refusal says which model it is
        assert wrong.headers[contract.HEADER_MODEL_ALIAS] == "challenger"

    asyncio.run(serve(app, scenario))


def test_without_a_model_the_answer_names_the_model_but_no_version() -> None:
    app = app_with(None)

    async def scenario(c: httpx.AsyncClient) -> None:
        r = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON)
        assert r.status_code == 503 and r.headers[contract.HEADER_MODEL_NAME] == "m"
        assert contract.HEADER_MODEL_VERSION not in r.headers

    asyncio.run(serve(app, scenario))


# --- scoring timeout --------------------------------------------------------------------------


def test_an_answer_later_than_the_scoring_timeout_is_504_in_json_and_a_queued_one_is_skipped() -> None:
    model = _Model("3", block=True)
    app = app_with(model, **{contract.ENV_SCORING_TIMEOUT_S: "0.2"})

    async def scenario(c: httpx.AsyncClient) -> None:
        stuck = asyncio.create_task(c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON))
        await asyncio.to_thread(model.entered.wait, 10)
        queued = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON)  # behind the stuck one
        first = await stuck
        for r in (first, queued):
            assert r.status_code == 504 and r.headers["content-type"] == "application/json"
            assert r.json()["error_code"] == "DEADLINE_EXCEEDED" and "0.2 s" in r.json()["message"]
            assert r.headers[contract.HEADER_MODEL_VERSION] == "3"
        model.release.set()
        after = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON)
        assert after.status_code == 200
        assert metric((await c.get(contract.ROUTE_METRICS)).text, "mlserve_replica_scoring_timeouts_total") == 2
        # The stuck call and the one after it ran; the one that timed out in the queue did not.
        assert model.calls == 2

    asyncio.run(serve(app, scenario))


# --- shadow ---------------------------------------------------------------------------------------


def test_judge_counts_rows_and_treats_close_floats_as_the_same() -> None:
    ok = lambda p: Answer(200, orjson.dumps({"predictions": p}))  # noqa: E731
    assert judge(ok([1, 2, 3]), ok([1, 2, 3])) == (AGREE, 3, 0)
    assert judge(ok([1, 2, 3]), ok([1, 5, 3])) == (DISAGREE, 2, 1)
    assert judge(ok([0.1 + 0.2]), ok([0.3])) == (AGREE, 1, 0)
    assert judge(ok([[0.2, 0.8]]), ok([[0.3, 0.7]])) == (DISAGREE, 0, 1)
    assert judge(ok([1, 2]), ok([1])) == (DISAGREE, 1, 0)
    assert judge(ok({"a": [1]}), ok({"a": [1]}))[0] == AGREE
    refused = Answer(400, b'{"error_code": "BAD_REQUEST", "message": "x"}')
    assert judge(refused, refused)[0] == AGREE and judge(refused, ok([1]))[0] == DISAGREE
    assert judge(ok([1]), Answer(200, b"not json"))[0] == ERROR
    assert same(True, True) and not same(True, 1) and not same("a", "b")


def test_a_shadow_scores_each_copy_with_the_primary_model_and_counts_per_version() -> None:
    def mine(body: bytes) -> list[int]:
        return [json.loads(body)["x"] % 2]

    shadow = _Model("9", mine)
    primary = _Model("4", lambda body: [0])
    app = app_with(shadow, primary, **{contract.ENV_GROUP: "candidate", contract.ENV_COMPARE_ALIAS: "champion"})

    async def scenario(c: httpx.AsyncClient) -> str:
        for x in (0, 1, 2, 3, 4):  # 0, 2, 4 agree with the primary's 0; 1 and 3 do not
            r = await c.post(contract.ROUTE_INVOCATIONS, content=json.dumps({"x": x}).encode(),
                             headers={**JSON, contract.HEADER_MIRRORED: "1"})
            assert r.status_code == 200 and r.json() == {"predictions": [x % 2]}
        # A request that is no copy (someone calling the shadow directly) is not compared.
        await c.post(contract.ROUTE_INVOCATIONS, content=b'{"x": 1}', headers=JSON)
        return (await c.get(contract.ROUTE_METRICS)).text

    text = asyncio.run(serve(app, scenario))
    labels = {"version": "9", "primary_version": "4"}
    assert metric(text, "mlserve_replica_shadow_requests_total", **labels, outcome="agree") == 3
    assert metric(text, "mlserve_replica_shadow_requests_total", **labels, outcome="disagree") == 2
    assert metric(text, "mlserve_replica_shadow_rows_total", **labels, outcome="agree") == 3
    assert metric(text, "mlserve_replica_shadow_rows_total", **labels, outcome="disagree") == 2
    assert primary.calls == 5 and shadow.calls == 6


def test_a_shadow_whose_primary_model_is_not_loaded_counts_errors_and_still_answers() -> None:
    app = app_with(_Model("9"), None, **{contract.ENV_COMPARE_ALIAS: "champion"})
    app.shadow = ShadowComparer(app.cfg, app.metrics, manager=_Manager(None))  # type: ignore[arg-type]

    async def scenario(c: httpx.AsyncClient) -> str:
        r = await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers={**JSON, contract.HEADER_MIRRORED: "1"})
        assert r.status_code == 200
        return (await c.get(contract.ROUTE_METRICS)).text

    text = asyncio.run(serve(app, scenario))
    assert metric(text, "mlserve_replica_shadow_requests_total", version="9", primary_version="none", outcome="error") == 1


def test_only_shadow_replicas_get_a_comparer() -> None:
    assert app_with(_Model("1")).shadow is None
    assert app_with(_Model("1"), **{contract.ENV_COMPARE_ALIAS: "champion"}).shadow is not None


# --- payload logs -----------------------------------------------------------------------------------


class _Store:
    """Stands in for the MLflow artifact proxy: records every upload; can fail or stall."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = False
        self.stall = threading.Event()
        self.stall.set()
        self.lock = threading.Lock()

    def upload(self, tracking_uri: str, path: str, data: bytes) -> None:
        self.stall.wait(10)
        if self.fail:
            raise OSError("artifact proxy down")
        with self.lock:
            self.objects[path] = data

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for data in self.objects.values() for line in data.splitlines()]


def payload_app(store: _Store, model: Any, percent: str = "100", **env: str) -> ReplicaApp:
    app = app_with(model, **{contract.ENV_PAYLOAD_LOG_PERCENT: percent, contract.ENV_PAYLOAD_LOG_FLUSH_S: "0.05",
                             contract.ENV_GROUP: "challenger", contract.ENV_MODEL_NAME: "iris", **env})
    assert app.payloads is not None
    app.payloads.upload = store.upload
    return app


def test_sampled_pairs_are_written_per_group_and_version_as_json_lines() -> None:
    store = _Store()
    app = payload_app(store, _Model("5", lambda body: [len(body)]))

    async def scenario(c: httpx.AsyncClient) -> None:
        for i in range(3):
            await c.post(contract.ROUTE_INVOCATIONS, content=json.dumps({"i": i}).encode(),
                         headers={**JSON, contract.HEADER_REQUEST_ID: f"req-{i}", contract.HEADER_API_KEY_NAME: "ci"})

    asyncio.run(serve(app, scenario))  # shutdown flushes what is left
    paths = list(store.objects)
    assert paths and all(p.startswith("payload-logs/iris/challenger/5/") and p.endswith(".jsonl") for p in paths)
    records = sorted(store.records(), key=lambda r: r["request_id"])
    assert [r["request_id"] for r in records] == ["req-0", "req-1", "req-2"]
    first = records[0]
    assert first["request"] == '{"i": 0}' and json.loads(first["response"]) == {"predictions": [8]}
    assert (first["model"], first["alias"], first["version"], first["group"], first["status"]) == ("iris", "champion", "5", "challenger", 200)
    assert first["api_key"] == "ci" and first["mirrored"] is False and first["content_type"] == "application/json"
    assert first["instance"] == "r-test" and first["ms"] >= 0


def test_off_by_default_and_sampled_at_the_configured_share() -> None:
    assert app_with(_Model("1")).payloads is None
    store = _Store()
    app = payload_app(store, _Model("1"), percent="20")

    async def scenario(c: httpx.AsyncClient) -> None:
        for _ in range(500):
            await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON)

    asyncio.run(serve(app, scenario))
    n = len(store.records())
    assert abs(n - 100) <= 4 * (500 * 0.2 * 0.8) ** 0.5 + 1, n  # binomial(500, 0.2), 4 sigmas


def test_a_failing_or_stalled_store_never_fails_or_holds_a_request() -> None:
    store = _Store()
    store.fail = True
    store.stall.clear()  # the upload thread hangs in its first upload
    app = payload_app(store, _Model("1"))

    async def scenario(c: httpx.AsyncClient) -> str:
        answers = [await c.post(contract.ROUTE_INVOCATIONS, content=b"{}", headers=JSON) for _ in range(20)]
        assert all(r.status_code == 200 for r in answers)
        store.stall.set()
        return ""

    asyncio.run(serve(app, scenario))
    text = app.metrics.render().decode()
    assert metric(text, "mlserve_replica_payload_log_records_total", outcome="dropped_error") == 20
    assert metric(text, "mlserve_replica_payload_log_records_total", outcome="written") == 0


def test_a_full_buffer_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payloads_mod, "MAX_BUFFER_BYTES", 2000)
    metrics = Metrics("r", "m", "a")
    log = payloads_mod.PayloadLog("http://x", "m", "g", "r", 3600, metrics, upload=lambda *a: None)
    for _ in range(20):  # no upload thread: nothing empties the buffer
        log.offer("1", {"request": "x" * 300})
    text = metrics.render().decode()
    dropped = metric(text, "mlserve_replica_payload_log_records_total", outcome="dropped_full")
    assert 0 < dropped < 20
    log.offer("1", {"request": "x" * (payloads_mod.MAX_RECORD_BYTES + 1)})
    assert metric(metrics.render().decode(), "mlserve_replica_payload_log_records_total", outcome="too_large") == 1


def test_object_paths_sort_by_time_within_a_day() -> None:
    a = payloads_mod.object_path("m", "default", "3", "r-1", 1_800_000_000.0, 1)
    b = payloads_mod.object_path("m", "default", "3", "r-1", 1_800_000_001.5, 2)
    assert a.startswith("payload-logs/m/default/3/2027-01-15/r-1-20270115T") and a < b
