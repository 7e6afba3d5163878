"""The replica's HTTP interface, as a bare ASGI application.

Bare ASGI rather than a framework: on one core the routing and request objects of a
framework cost as much as scoring a small model, and the interface is six routes.

Scoring runs off the event loop on one model thread. Requests the fast path can
judge are queued as checked rows and merged into micro-batches of up to
`max_batch_size` rows; the rest run MLflow's own scoring code one by one on the
same thread. Batches form by themselves: whatever queued up while the model thread
was busy goes in the next call. A batch waits (at most `max_batch_wait_ms`) only
for requests already admitted whose body is still being received, never on the
chance that another client might send something: measured here, a blind 2 ms wait
cut single-row throughput at 8 connections from ~5,000 to ~2,000 req/s, because
closed-loop clients cannot send more until they are answered. Admission is bounded:
past `max_queue` outstanding invocations the answer is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from app import contract
from app.server import logs
from app.server.config import Config
from app.server.manager import ModelManager
from app.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.server.metrics import Metrics
from app.server.model import Answer, LoadedModel, NotFast, encode_batch, encode_predictions

log = logging.getLogger("app.server")
access = logging.getLogger("app.server.access")

# Bodies above this are parsed on the model thread, not on the event loop.
PARSE_ON_LOOP_MAX_BYTES = 64 * 1024
RETRY_AFTER_S = "1"

_H_CT = b"content-type"
_JSON = "application/json"
_H_JSON = _JSON.encode()
_H_INSTANCE = contract.HEADER_INSTANCE_ID.lower().encode()
_H_VERSION = contract.HEADER_MODEL_VERSION.lower().encode()
_H_REQUEST = contract.HEADER_REQUEST_ID.lower().encode()


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error_code": code, "message": message})


class _Item:
    # A slotted class: one is built per request, and a dataclass __init__ costs more.
    __slots__ = ("model", "future", "rows", "body", "content_type", "parsed")

    def __init__(self, model: LoadedModel, future: asyncio.Future[Answer], rows: list[list[Any]] | None,
                 body: bytes, content_type: str | None, parsed: bool) -> None:
        self.model = model
        self.future = future
        self.rows = rows  # fast path rows (checked, not yet an array), or None: reference path on `body`
        self.body = body
        self.content_type = content_type
        self.parsed = parsed  # False: not yet tried on the fast path (large body)


_STOP = object()  # the model thread's last job


class Batcher:
    def __init__(self, cfg: Config, metrics: Metrics, receiving: Callable[[], int] = lambda: 0) -> None:
        self.receiving = receiving  # admitted requests not yet queued (body still arriving)
        self.max_rows = cfg.max_batch_size
        self.max_wait = cfg.max_batch_wait_ms / 1000.0
        self.metrics = metrics
        # The loop puts each request here and the model thread forms the batches itself:
        # no task, event or future per batch on the loop, and a model thread that finds
        # requests waiting when it finishes a batch goes on with them without handing the
        # GIL back first. Answers return with one call_soon_threadsafe per batch.
        self._jobs: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    def submit(self, item: _Item) -> None:
        if self._stopped:
            item.future.set_result(Answer(503, _error("TEMPORARILY_UNAVAILABLE", "replica is shutting down")))
            return
        self._jobs.put(item)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._model_thread, name="model", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Score what was queued before the stop, deliver it, then end the model thread."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._jobs.put(_STOP)
            # Joined off the loop, so the answers of the last batches are still delivered.
            await asyncio.to_thread(self._thread.join)

    def _next_batch(self, first: _Item) -> tuple[list[_Item], _Item | object | None]:
        """On the model thread: `first` and the requests queued behind it that share its model
        and fit in the batch. Waits (at most max_wait) only while admitted requests are still
        being received. Returns the batch and the job that did not fit (None: none taken)."""
        batch = [first]
        if first.rows is None:
            return batch, None
        jobs = self._jobs
        n = len(first.rows)
        deadline = None
        while n < self.max_rows:
            try:
                nxt = jobs.get_nowait()
            except queue.Empty:
                if self.max_wait <= 0 or self.receiving() <= 0:
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.max_wait
                if now >= deadline:
                    break
                try:
                    nxt = jobs.get(timeout=deadline - now)
                except queue.Empty:
                    break
            if (not isinstance(nxt, _Item) or nxt.rows is None or nxt.model is not first.model
                    or n + len(nxt.rows) > self.max_rows):
                return batch, nxt
            batch.append(nxt)
            n += len(nxt.rows)
        return batch, None

    def _model_thread(self) -> None:
        loop = self._loop
        assert loop is not None
        _give_way_to_the_loop()
        carried: _Item | object | None = None
        while True:
            job = carried if carried is not None else self._jobs.get()
            if not isinstance(job, _Item):
                return  # _STOP: everything queued before it has been scored
            batch, carried = self._next_batch(job)
            try:
                answers, model_rows = _score(batch)
            except Exception as exc:  # noqa: BLE001 - never leave a request hanging
                log.exception("scoring failed")
                answers, model_rows = [Answer(500, _error("INTERNAL_ERROR", repr(exc)))] * len(batch), 0
            try:
                loop.call_soon_threadsafe(self._deliver, batch, answers, model_rows)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _deliver(self, batch: list[_Item], answers: list[Answer], model_rows: int) -> None:
        """On the loop: resolve a whole batch in one callback."""
        if model_rows:
            self.metrics.batch_rows.observe(model_rows)
            self.metrics.batch_requests.observe(len(batch))
        for item, answer in zip(batch, answers, strict=True):
            if not item.future.done():
                item.future.set_result(answer)


def _give_way_to_the_loop() -> None:
    """Stop the calling (model) thread from preempting the event loop when woken.

    Where both threads share a core, a woken model thread otherwise takes the core at once,
    finds the GIL held and sleeps again, three times per batch (queue wake-up, GIL signal,
    GIL mutex): measured with `perf sched` here, 3 context-switch pairs per batch and ~12%
    of the CPU in switching. As SCHED_BATCH (still fair-share, no priority change, allowed
    without privileges) it runs when the loop waits for I/O, which is also when the GIL is
    free, so a batch costs one switch and holds every request that arrived meanwhile.
    Measured on one core, same run: +25% req/s at 8 connections, +10% at 32."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or refused by a seccomp profile: only slower
        log.info("model thread keeps the default scheduling policy", extra={"reason": repr(exc)})


def _score(batch: list[_Item]) -> tuple[list[Answer], int]:
    """On the model thread: one model call for a fast batch, else MLflow's scoring code.

    Returns the answers and the rows of the fast model call (0: reference path)."""
    first = batch[0]
    m = first.model
    if first.rows is None:
        if not first.parsed:
            try:
                arr = m.rows_array(m.parse_fast(first.body, first.content_type))
                preds = m.predict_fast(arr)
                if len(preds) == len(arr):
                    return [Answer(200, encode_predictions(preds))], len(arr)
            except Exception:  # noqa: BLE001 - NotFast or a model error: MLflow's path decides
                pass
        return [m.score_reference(first.body, first.content_type)], 0
    rows = first.rows if len(batch) == 1 else [r for i in batch for r in i.rows]  # type: ignore[union-attr]
    try:
        preds = m.predict_fast(m.rows_array(rows))
        if len(preds) != len(rows):
            raise NotFast
    except Exception:  # noqa: BLE001 - one bad request must not fail its batch-mates
        # Also where a row numpy refuses (an integer beyond int64) lands: the whole
        # batch takes MLflow's path, one request at a time; same answers, only slower.
        return [m.score_reference(i.body, i.content_type) for i in batch], 0
    bodies = encode_batch(preds, [len(i.rows) for i in batch])  # type: ignore[arg-type]
    return [Answer(200, b) for b in bodies], len(rows)


class ReplicaApp:
    def __init__(self, cfg: Config, manager: ModelManager | None = None, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics(cfg.instance_id, cfg.model_name, cfg.model_alias)
        self.manager = manager or ModelManager(cfg, self.metrics)
        self.batcher: Batcher | None = None
        self.draining = False
        self.pending = 0
        self.receiving = 0  # admitted, body not yet read and queued
        self.served = 0  # invocations answered 200: the shutdown test compares it with the client's count
        self._instance = cfg.instance_id.encode()
        self._rid_prefix = os.urandom(6).hex()
        self._rid_counter = 0
        # Read at scrape time instead of two gauge updates per request.
        self.metrics.in_flight.set_function(lambda: self.pending)
        import mlflow.version

        self._mlflow_version = mlflow.version.VERSION.encode()

    # -- lifecycle ----------------------------------------------------------------------
    async def startup(self) -> None:
        self.batcher = Batcher(self.cfg, self.metrics, lambda: self.receiving)
        self.batcher.start()
        self.manager.start()
        log.info("replica started", extra={"model_uri": self.cfg.model_uri, "port": self.cfg.port,
                                           "max_batch_size": self.cfg.max_batch_size,
                                           "max_batch_wait_ms": self.cfg.max_batch_wait_ms,
                                           "max_queue": self.cfg.max_queue, "device_requested": self.cfg.device})

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("draining: /ready answers 503, in-flight requests finish", extra={"pending": self.pending})

    async def shutdown(self) -> None:
        self.begin_drain()
        await self.manager.stop()
        if self.batcher is not None:
            await self.batcher.stop()
        log.info("replica stopped", extra={"served": self.served, "pending": self.pending})

    # -- ASGI -------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    try:
                        await self.startup()
                    except Exception as exc:  # noqa: BLE001
                        await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        rid = None
        ct = None
        clen = None
        for k, v in scope["headers"]:
            if k == b"content-type":
                ct = v.decode("latin-1")
            elif k == b"x-request-id":
                rid = v.decode("latin-1")[:200]
            elif k == b"content-length":
                clen = v
        if rid is None:
            # A per-process random prefix and a counter: unique without a syscall
            # per request (getrandom is the costliest line of a request otherwise).
            self._rid_counter += 1
            rid = f"{self._rid_prefix}-{self._rid_counter:x}"
        token = logs.request_id.set(rid)
        status = 500  # what the client sees if anything below raises
        extra: list[tuple[bytes, bytes]]
        try:
            if path == contract.ROUTE_INVOCATIONS:
                if method != "POST":
                    status, body, ctype, extra = 405, b'{"detail":"Method Not Allowed"}', _H_JSON, []
                else:
                    status, body, ctype, extra = await self._invocations(receive, ct, clen)
            elif method not in ("GET", "HEAD") or path not in self._GET_ROUTES:
                status, body, ctype, extra = 404, b'{"detail":"Not Found"}', _H_JSON, []
                if path in self._GET_ROUTES:
                    status, body = 405, b'{"detail":"Method Not Allowed"}'
            else:
                status, body, ctype, extra = self._GET_ROUTES[path](self)
            headers = [(_H_CT, ctype), (b"content-length", str(len(body)).encode()),
                       (_H_INSTANCE, self._instance), (_H_REQUEST, rid.encode("latin-1"))]
            headers.extend(extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.observe(path if path in self._KNOWN else "other", status, elapsed)
            st = status
            # Failed invocations at info; the rest (probes included) only at debug.
            level = logging.INFO if st >= 400 and path == contract.ROUTE_INVOCATIONS else logging.DEBUG
            if access.isEnabledFor(level):
                access.log(level, "request",
                           extra={"method": method, "path": path, "status": st, "ms": round(elapsed * 1000, 3)})
            logs.request_id.reset(token)

    async def _read_body(self, receive: Any, clen: bytes | None) -> bytes | None:
        limit = self.cfg.max_body_bytes
        if clen is not None:
            try:
                if int(clen) > limit:
                    return None
            except ValueError:
                pass
        msg = await receive()
        body = msg.get("body", b"")
        if not msg.get("more_body", False):
            return body if len(body) <= limit else None
        parts = [body]
        size = len(body)
        while msg.get("more_body", False):
            msg = await receive()
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    async def _invocations(self, receive: Any, ct: str | None, clen: bytes | None) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        m = self.manager.current
        if m is None or self.batcher is None:
            return 503, _error("TEMPORARILY_UNAVAILABLE", f"no model loaded yet for {self.cfg.model_uri}; see {contract.ROUTE_HEALTH}"), _H_JSON, [(b"retry-after", RETRY_AFTER_S.encode())]
        if self.pending >= self.cfg.max_queue:
            self.metrics.rejected.inc()
            return 503, _error("TEMPORARILY_UNAVAILABLE", f"queue full ({self.cfg.max_queue} requests outstanding); retry later"), _H_JSON, [(b"retry-after", RETRY_AFTER_S.encode())]
        self.pending += 1
        self.receiving += 1
        queued = False
        try:
            body = await self._read_body(receive, clen)
            if body is None:
                return 413, _error("REQUEST_LIMIT_EXCEEDED", f"request body exceeds {self.cfg.max_body_bytes} bytes ({contract.ENV_MAX_BODY_BYTES})"), _H_JSON, []
            fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            rows = None
            parsed = False
            if len(body) <= PARSE_ON_LOOP_MAX_BYTES:
                parsed = True
                try:
                    rows = m.parse_fast(body, ct)
                except NotFast:
                    rows = None
            self.receiving -= 1
            queued = True
            self.batcher.submit(_Item(m, fut, rows, body, ct, parsed))
            ans = await fut
        finally:
            if not queued:
                self.receiving -= 1
            self.pending -= 1
        if ans.status == 200:
            self.served += 1
        ctype = _H_JSON if ans.content_type == _JSON else ans.content_type.encode()
        return ans.status, ans.body, ctype, [(_H_VERSION, m.version.encode())]

    # -- GET routes -------------------------------------------------------------------
    def _ping(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        # As `mlflow models serve`: healthy means a model is loaded.
        return (200 if self.manager.current is not None else 503), b"\n", _H_JSON, []

    def _ready(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        ok = self.manager.current is not None and not self.draining
        state = self.state()
        return (200 if ok else 503), orjson.dumps({"ready": ok, "state": state}), _H_JSON, []

    def state(self) -> str:
        if self.draining:
            return "draining"
        if self.manager.current is None:
            return "error" if self.manager.last_error is not None else "loading"
        return "ready" if self.manager.last_error is None else "degraded"

    def _health(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        mgr = self.manager
        cur = mgr.current
        err = mgr.last_error
        doc = {
            "instance_id": self.cfg.instance_id,
            "state": self.state(),
            "model": {
                "name": self.cfg.model_name,
                "alias": self.cfg.model_alias,
                "uri": self.cfg.model_uri,
                "version": cur.version if cur else None,
                "alias_version": mgr.alias_version,
                "flavor": cur.flavor if cur else None,
                "fast_path": (cur.fast is not None) if cur else None,
                "fast_kernel": cur.fast.kernel_name if cur and cur.fast else None,
                "loaded_at": cur.loaded_at if cur else None,
            },
            "device": cur.device if cur else None,
            "device_requested": self.cfg.device,
            "last_error": {"version": err.version, "message": err.message, "at": err.at} if err else None,
            "last_registry_check": mgr.last_check,
            "pending": self.pending,
        }
        return 200, orjson.dumps(doc), _H_JSON, []

    def _version(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        return 200, self._mlflow_version, _H_JSON, []

    def _metrics(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        return 200, self.metrics.render(), METRICS_CONTENT_TYPE.encode(), []

    _GET_ROUTES = {
        contract.ROUTE_PING: _ping,
        contract.ROUTE_HEALTH: _health,
        contract.ROUTE_READY: _ready,
        contract.ROUTE_VERSION: _version,
        contract.ROUTE_METRICS: _metrics,
    }
    _KNOWN = frozenset([*_GET_ROUTES, contract.ROUTE_INVOCATIONS])
