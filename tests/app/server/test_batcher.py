"""app/server/batcher.py: fast-path batches and the model thread that forms them."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np
import pytest

from app import contract
from app.server import config as config_mod
from app.server.batcher import Batcher, Item, _score
from app.server.metrics import Metrics
from app.server.model import Answer, FastSpec, LoadedModel, NotFast
from app.server.throttle import QuotaWatch

from .helpers import BASE_ENV


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


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
    items = [Item(m, None, m.parse_fast(b, "application/json"), b, "application/json", True)  # type: ignore[arg-type]
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
    items = [Item(m, None, m.parse_fast(b, "application/json"), b, "application/json", True)  # type: ignore[arg-type]
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


def _item(m: LoadedModel, values: list[int] | None) -> Item:
    fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    body = json.dumps({"inputs": [{"a": v} for v in values or [0]]}).encode()
    rows = m.parse_fast(body, "application/json") if values is not None else None
    return Item(m, fut, rows, body, "application/json", True)


class _Quota(QuotaWatch):
    """A CPU quota that runs out when the test says so."""

    def __init__(self, throttled: bool = False) -> None:
        super().__init__(None)
        self.is_throttled = throttled

    def throttled(self) -> bool:
        return self.is_throttled


def _batcher(wait_ms: str = "0", receiving: Any = lambda: 0, quota: QuotaWatch | None = None) -> Batcher:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_MAX_BATCH_SIZE: "4", contract.ENV_MAX_BATCH_WAIT_MS: wait_ms})
    # Never the test machine's own cgroup: whether it throttles is not the test's to decide.
    return Batcher(cfg, Metrics("r", "m", "a"), receiving, quota if quota is not None else _Quota())


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


async def _a_batch_of_three(b: Batcher, fakes: _GatedSpecModel, m: LoadedModel) -> None:
    """One request scored alone, then 3 that queued while the model thread was busy with it
    go in one call: the fullest recent batch holds 3 requests."""
    first = _item(m, [1])
    b.submit(first)
    assert await asyncio.to_thread(fakes.entered.wait, 10)
    three = [_item(m, [v]) for v in (2, 3, 4)]
    for it in three:
        b.submit(it)
    fakes.gate.set()
    await asyncio.wait_for(asyncio.gather(first.future, *[it.future for it in three]), 10)
    assert fakes.calls["m"] == [1, 3]


def test_a_throttled_replica_waits_for_as_many_requests_as_its_fullest_recent_batch() -> None:
    fakes = _GatedSpecModel()
    m = fakes.model("m", gated=True)
    quota = _Quota(throttled=False)

    async def scenario() -> None:
        b = _batcher(wait_ms="5000", quota=quota)
        b.start()
        try:
            await _a_batch_of_three(b, fakes, m)
            # CPU to spare: requests arriving apart are scored apart.
            for v in (5, 6):
                it = _item(m, [v])
                b.submit(it)
                await asyncio.wait_for(it.future, 10)
            assert fakes.calls["m"] == [1, 3, 1, 1]
            # The quota runs out: the first of three requests arriving apart waits for the
            # other two (the long max wait never ends it), and all three go in one call.
            quota.is_throttled = True
            apart = [_item(m, [7]), _item(m, [8]), _item(m, [9])]
            loop = asyncio.get_running_loop()
            b.submit(apart[0])
            loop.call_later(0.05, b.submit, apart[1])
            loop.call_later(0.10, b.submit, apart[2])
            answers = await asyncio.wait_for(asyncio.gather(*[it.future for it in apart]), 10)
            assert fakes.calls["m"] == [1, 3, 1, 1, 3]
            assert [json.loads(a.body)["predictions"] for a in answers] == [[14], [16], [18]]
        finally:
            await b.stop()

    _run(scenario())


def test_a_throttled_replica_waits_no_longer_than_the_max_batch_wait() -> None:
    fakes = _GatedSpecModel()
    m = fakes.model("m", gated=True)
    quota = _Quota(throttled=True)

    async def scenario() -> float:
        b = _batcher(wait_ms="300", quota=quota)
        b.start()
        try:
            await _a_batch_of_three(b, fakes, m)
            # Waits for two more that never come, then scores what it has.
            loop = asyncio.get_running_loop()
            alone = _item(m, [5])
            started = loop.time()
            b.submit(alone)
            await asyncio.wait_for(alone.future, 10)
            waited = loop.time() - started
            assert fakes.calls["m"] == [1, 3, 1]
            return waited
        finally:
            await b.stop()

    waited = _run(scenario())
    assert waited >= 0.29  # it did wait: the request was not scored at once


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
