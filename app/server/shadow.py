"""A shadow replica's comparison with the primary: each mirrored request is scored a second time
with the model behind the primary's alias (MLSERVE_COMPARE_ALIAS), loaded beside the shadow's
own, and the two answers are compared; /metrics counts agreements per (shadow version,
primary version).

Why the shadow scores the primary's model itself instead of seeing the primary's answer: nginx
mirrors a request before any replica has answered it, and nothing in open-source nginx can hand
the primary's answer to the copy. A model version is deterministic, so the shadow's second
answer is the primary's answer. The cost stays on the shadow (memory for a second model, a
second model call per copy), never on the primary or on clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import orjson

from app.server.batcher import Batcher, Item
from app.server.config import Config
from app.server.manager import ModelManager
from app.server.metrics import Metrics
from app.server.model import Answer, LoadedModel

# Floats this close count as the same prediction (the fast path and MLflow's path may differ
# in the last bits; a model change does not hide in them).
REL_TOL = 1e-6
ABS_TOL = 1e-9

AGREE, DISAGREE, ERROR = "agree", "disagree", "error"


def same(a: Any, b: Any) -> bool:
    """Predictions equal, floats within REL_TOL/ABS_TOL, structure and other types exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def predictions(answer: Answer) -> Any:
    return orjson.loads(answer.body).get("predictions")


def judge(shadow: Answer, primary: Answer) -> tuple[str, int, int]:
    """(outcome, rows that agree, rows that differ). Two refusals of the same kind agree."""
    if shadow.status != 200 or primary.status != 200:
        if shadow.status == primary.status:
            try:
                codes = orjson.loads(shadow.body).get("error_code"), orjson.loads(primary.body).get("error_code")
            except (orjson.JSONDecodeError, AttributeError):
                return ERROR, 0, 0
            return (AGREE if codes[0] == codes[1] else DISAGREE), 0, 0
        return DISAGREE, 0, 0
    try:
        mine, theirs = predictions(shadow), predictions(primary)
    except (orjson.JSONDecodeError, AttributeError):
        return ERROR, 0, 0
    rows = list(zip(mine, theirs, strict=False)) if isinstance(mine, list) and isinstance(theirs, list) else [(mine, theirs)]
    agree = sum(1 for x, y in rows if same(x, y))
    differ = len(rows) - agree
    whole = isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs)
    return (AGREE if differ == 0 and (whole or not isinstance(mine, list)) else DISAGREE), agree, differ


class ShadowComparer:
    """The primary's model, kept current by its own alias poller, and the comparison."""

    def __init__(self, cfg: Config, metrics: Metrics, manager: ModelManager | None = None) -> None:
        assert cfg.compare_alias is not None
        primary_cfg = dataclasses.replace(cfg, model_alias=cfg.compare_alias)
        # Its own metrics object (not exposed): the replica's model gauges describe its own alias.
        self.manager = manager or ModelManager(primary_cfg, Metrics(cfg.instance_id, cfg.model_name, cfg.compare_alias))
        self.metrics = metrics

    def start(self) -> None:
        self.manager.start()

    async def stop(self) -> None:
        await self.manager.stop()

    async def compare(self, batcher: Batcher, mine: LoadedModel, answer: Answer, body: bytes, content_type: str | None,
                      timeout_s: float) -> str:
        primary = self.manager.current
        if primary is None:
            self.metrics.shadow_requests.labels(mine.version, "none", ERROR).inc()
            return ERROR
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        batcher.submit(Item(primary, future, None, body, content_type, False))
        try:
            theirs = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            outcome, agree, differ = ERROR, 0, 0
        else:
            outcome, agree, differ = judge(answer, theirs)
        self.metrics.shadow_requests.labels(mine.version, primary.version, outcome).inc()
        if agree:
            self.metrics.shadow_rows.labels(mine.version, primary.version, AGREE).inc(agree)
        if differ:
            self.metrics.shadow_rows.labels(mine.version, primary.version, DISAGREE).inc(differ)
        return outcome
