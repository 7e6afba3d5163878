"""The replica's HTTP interface, as a bare ASGI application.

Bare ASGI rather than a framework: on one core the routing and request objects of a
framework cost as much as scoring a small model, and the interface is six routes.

Scoring runs off the event loop, on the batcher's model thread (batcher.py). Admission
is bounded here: past `max_queue` outstanding invocations the answer is 503 with
Retry-After, and an invocation without an answer within the scoring timeout (queueing
included) is answered 504 DEADLINE_EXCEEDED. Every /invocations answer names the model
(X-Model-Name, X-Model-Alias) and, once one is loaded, the version (X-Model-Version).
A shadow replica compares its answers with the primary's model (shadow.py); a share of
invocations goes to the payload log (payloads.py).
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE

from app import contract
from app.server import logs
from app.server.batcher import Batcher, Item
from app.server.board import SLOT_INTS, W_PENDING, W_SERVED
from app.server.config import Config
from app.server.manager import ModelManager
from app.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.server.metrics import Metrics
from app.server.model import Answer, LoadedModel, NotFast, error_body
from app.server.payloads import PayloadLog
from app.server.shadow import ShadowComparer

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
_H_MIRRORED = contract.HEADER_MIRRORED.lower().encode()
_H_KEY_NAME = contract.HEADER_API_KEY_NAME.lower().encode()
# How long a stopping replica may take to upload its last payload records.
PAYLOAD_FLUSH_ON_STOP_S = 5.0


def _internal_error(method: str, path: str, exc: Exception) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Our bug, logged with its traceback (called inside the `except`) and answered as JSON."""
    log.exception("request failed", extra={"method": method, "path": path})
    return 500, error_body("INTERNAL_ERROR", f"{method} {path} failed: {exc!r}"), _H_JSON, []


class Solo:
    """The process's place in its replica when it is the replica's only process."""

    def __init__(self) -> None:
        self.slot = array.array("q", bytes(8 * SLOT_INTS))
        self.base = 0
        self.suffix = ""  # of names this process writes (payload log objects)

    def replica_draining(self) -> bool:
        return False

    def served(self, own: int) -> int:
        return own

    def workers(self, pending: int, served: int) -> dict[str, Any]:
        return {"configured": 1, "serving": 1, "restarts": 0,
                "processes": [{"index": 0, "pid": os.getpid(), "state": "serving", "pending": pending,
                               "served": served}]}


class ReplicaApp:
    def __init__(self, cfg: Config, manager: ModelManager | None = None, metrics: Metrics | None = None,
                 place: Any = None, compare_manager: Any = None) -> None:
        """`place`: where this process sits in a replica of several (worker.Place); None: alone.
        `compare_manager`: for a shadow, what follows the primary's alias (default: its own poller)."""
        self.cfg = cfg
        self.metrics = metrics or Metrics(cfg.instance_id, cfg.model_name, cfg.model_alias)
        self.manager = manager or ModelManager(cfg, self.metrics)
        self.place = place or Solo()
        # This process's figures on the board (its own slot): the supervisor and the other
        # processes read them for /health and /metrics of the whole replica.
        self._board = self.place.slot
        self._b_pending = self.place.base + W_PENDING
        self._b_served = self.place.base + W_SERVED
        self.batcher: Batcher | None = None
        self.draining = False
        self.pending = 0
        self.receiving = 0  # admitted, body not yet read and queued
        self.served = 0  # invocations answered 200: the shutdown test compares it with the client's count
        self._instance = cfg.instance_id.encode()
        self._model_headers = [(contract.HEADER_MODEL_NAME.lower().encode(), cfg.model_name.encode()),
                               (contract.HEADER_MODEL_ALIAS.lower().encode(), cfg.model_alias.encode())]
        self.shadow = ShadowComparer(cfg, self.metrics, manager=compare_manager) if cfg.compare_alias else None
        # Each process of a replica writes its own payload log objects (names must not collide).
        self.payloads = (PayloadLog(cfg.tracking_uri, cfg.model_name, cfg.group, cfg.instance_id + self.place.suffix,
                                    cfg.payload_log_flush_s, self.metrics) if cfg.payload_log_percent > 0 else None)
        self._sample = random.Random()
        self._timeout_answer = Answer(504, error_body(
            "DEADLINE_EXCEEDED", f"no answer within {cfg.scoring_timeout_s:g} s ({contract.ENV_SCORING_TIMEOUT_S})"))
        self._rid_prefix = os.urandom(6).hex()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Invocations not yet answered, by deadline (_watch).
        self._deadlines: deque[tuple[float, asyncio.Future[Answer]]] = deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._rid_counter = 0
        if place is None:
            # Read at scrape time instead of two gauge updates per request.
            self.metrics.track_pending(lambda: self.pending)
        import mlflow.version

        self._mlflow_version = mlflow.version.VERSION.encode()

    # -- lifecycle ----------------------------------------------------------------------
    async def startup(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.batcher = Batcher(self.cfg, self.metrics, lambda: self.receiving)
        self.batcher.start()
        self.manager.start()
        if self.shadow is not None:
            self.shadow.start()
        if self.payloads is not None:
            self.payloads.start()
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
        if self.shadow is not None:
            await self.shadow.stop()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.payloads is not None:
            await asyncio.to_thread(self.payloads.stop, PAYLOAD_FLUSH_ON_STOP_S)
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

    def _request_headers(self, headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None, bytes | None, bool, str | None]:
        """What a request's headers say to this replica: content type, request id, content
        length, whether a shadow's copy, API key name."""
        rid = None
        ct = None
        clen = None
        mirrored = False
        key_name = None
        for k, v in headers:
            if k == b"content-type":
                ct = v.decode("latin-1")
            elif k == b"x-request-id":
                rid = v.decode("latin-1")[:200]
            elif k == b"content-length":
                clen = v
            elif k == _H_MIRRORED:
                mirrored = True
            elif k == _H_KEY_NAME:
                key_name = v.decode("latin-1")[:64] or None
        return ct, rid, clen, mirrored, key_name

    def _new_request_id(self) -> str:
        # A per-process random prefix and a counter: unique without a syscall per request
        # (getrandom is the costliest line of a request otherwise).
        self._rid_counter += 1
        return f"{self._rid_prefix}-{self._rid_counter:x}"

    def _response_headers(self, path: str, ctype: bytes, body: bytes, rid: str,
                          extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers = [(_H_CT, ctype), (b"content-length", str(len(body)).encode()),
                   (_H_INSTANCE, self._instance), (_H_REQUEST, rid.encode("latin-1"))]
        headers.extend(extra)
        if path == contract.ROUTE_INVOCATIONS:
            headers.extend(self._model_headers)
        return headers

    def _record(self, method: str, path: str, status: int, start: float) -> None:
        elapsed = time.perf_counter() - start
        self.metrics.observe(path if path in self._KNOWN else "other", status, elapsed)
        # Failed invocations at info; the rest (probes included) only at debug.
        level = logging.INFO if status >= 400 and path == contract.ROUTE_INVOCATIONS else logging.DEBUG
        if access.isEnabledFor(level):
            access.log(level, "request",
                       extra={"method": method, "path": path, "status": status, "ms": round(elapsed * 1000, 3)})

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        path = scope["path"]
        method = scope["method"]
        ct, rid, clen, mirrored, key_name = self._request_headers(scope["headers"])
        if rid is None:
            rid = self._new_request_id()
        token = logs.request_id.set(rid)
        status = 500  # what the metrics and the access log say if sending the answer fails
        extra: list[tuple[bytes, bytes]]
        try:
            try:
                if path == contract.ROUTE_INVOCATIONS:
                    if method != "POST":
                        status, body, ctype, extra = 405, b'{"detail":"Method Not Allowed"}', _H_JSON, []
                    else:
                        status, body, ctype, extra = await self._invocations(receive, ct, clen, rid, mirrored, key_name)
                elif method not in ("GET", "HEAD") or path not in self._GET_ROUTES:
                    status, body, ctype, extra = 404, b'{"detail":"Not Found"}', _H_JSON, []
                    if path in self._GET_ROUTES:
                        status, body = 405, b'{"detail":"Method Not Allowed"}'
                else:
                    status, body, ctype, extra = self._GET_ROUTES[path](self)
            except Exception as exc:  # noqa: BLE001 - left to uvicorn, our bug would be a text/plain 500
                status, body, ctype, extra = _internal_error(method, path, exc)
            headers = self._response_headers(path, ctype, body, rid, extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        finally:
            self._record(method, path, status, start)
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

    def _unavailable(self, m: LoadedModel | None) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]] | None:
        """The answer to an invocation this replica cannot take now, or None when it can."""
        if m is None or self.batcher is None:
            return 503, error_body("TEMPORARILY_UNAVAILABLE", f"no model loaded yet for {self.cfg.model_uri}; see {contract.ROUTE_HEALTH}"), _H_JSON, [(b"retry-after", RETRY_AFTER_S.encode())]
        if self.pending >= self.cfg.max_queue:
            self.metrics.rejected.inc()
            return 503, error_body("TEMPORARILY_UNAVAILABLE", f"queue full ({self.cfg.max_queue} requests outstanding); retry later"), _H_JSON, [(b"retry-after", RETRY_AFTER_S.encode())]
        return None

    def _too_large(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        return 413, error_body("REQUEST_LIMIT_EXCEEDED", f"request body exceeds {self.cfg.max_body_bytes} bytes ({contract.ENV_MAX_BODY_BYTES})"), _H_JSON, []

    def _admit(self) -> float:
        self.pending += 1
        self._board[self._b_pending] = self.pending
        return time.monotonic()

    def _release(self) -> None:
        self.pending -= 1
        self._board[self._b_pending] = self.pending

    def _enqueue(self, m: LoadedModel, body: bytes, ct: str | None, admitted: float,
                 was_receiving: bool = False) -> asyncio.Future[Answer]:
        """Queue one invocation for the model thread; its answer comes as the future's result.
        `was_receiving`: counted in `receiving` until now (the model thread waits for those)."""
        assert self.batcher is not None
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[Answer] = loop.create_future()
        rows = None
        parsed = False
        if len(body) <= PARSE_ON_LOOP_MAX_BYTES:
            parsed = True
            try:
                rows = m.parse_fast(body, ct)
            except NotFast:
                rows = None
            except Exception:  # noqa: BLE001 - a bug of the fast path: MLflow's path still answers
                log.exception("fast-path parsing failed; the request takes MLflow's path")
                rows = None
        if was_receiving:
            self.receiving -= 1
        self.batcher.submit(Item(m, fut, rows, body, ct, parsed))
        self._watch(admitted + self.cfg.scoring_timeout_s, fut)
        return fut

    def _answered(self, m: LoadedModel, ans: Answer, body: bytes, ct: str | None, rid: str, mirrored: bool,
                  key_name: str | None, admitted: float) -> None:
        """What follows an answer whichever way the request came: the payload log sample."""
        if self.payloads is not None and self._sample.random() * 100 < self.cfg.payload_log_percent:
            self._log_payload(m, ans, body, ct, rid, mirrored, key_name, time.monotonic() - admitted)

    def _result(self, m: LoadedModel, ans: Answer) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        if ans.status == 200:
            self.served += 1
            self._board[self._b_served] = self.served
        ctype = _H_JSON if ans.content_type == _JSON else ans.content_type.encode()
        return ans.status, ans.body, ctype, [(_H_VERSION, m.version.encode())]

    async def _invocations(self, receive: Any, ct: str | None, clen: bytes | None, rid: str = "", mirrored: bool = False,
                           key_name: str | None = None) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        m = self.manager.current
        refused = self._unavailable(m)
        if refused is not None:
            return refused
        assert m is not None and self.batcher is not None
        admitted = self._admit()
        self.receiving += 1
        queued = False
        try:
            body = await self._read_body(receive, clen)
            if body is None:
                return self._too_large()
            queued = True
            fut = self._enqueue(m, body, ct, admitted, was_receiving=True)
            ans = await fut
            if mirrored and self.shadow is not None:
                left = self.cfg.scoring_timeout_s - (time.monotonic() - admitted)
                await self.shadow.compare(self.batcher, m, ans, body, ct, max(left, 0.001))
            self._answered(m, ans, body, ct, rid, mirrored, key_name, admitted)
        finally:
            if not queued:
                self.receiving -= 1
            self._release()
        return self._result(m, ans)

    # -- invocations without an ASGI cycle (protocol.py) --------------------------------
    def direct_request(self, headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None, bool, str | None] | None:
        """For the HTTP protocol, at a POST /invocations' headers: what it needs to answer the
        request itself once its body has arrived (`invoke_direct`), or None for a request
        that takes the ASGI path: a shadow's (its comparison awaits the primary's model), a
        body without a Content-Length or over the limit (read and refused as it arrives), a
        request id that is no valid header value."""
        if self.shadow is not None:
            return None
        ct, rid, clen, mirrored, key_name = self._request_headers(headers)
        if clen is None:
            return None
        try:
            if int(clen) > self.cfg.max_body_bytes:
                return None
        except ValueError:
            return None
        if rid is not None and HEADER_VALUE_RE.search(rid.encode("latin-1")):
            return None
        return ct, rid, mirrored, key_name

    def invoke_direct(self, request: tuple[str | None, str | None, bool, str | None], body: bytes,
                      respond: Callable[[int, list[tuple[bytes, bytes]], bytes], None]) -> None:
        """Answer a POST /invocations whose body has arrived in full, as `_http` would, without
        the ASGI machinery: no task, scope, receive or send per request. `respond` gets the
        status, headers and body, once."""
        start = time.perf_counter()
        ct, rid, mirrored, key_name = request
        if rid is None:
            rid = self._new_request_id()
        token = logs.request_id.set(rid)
        try:
            try:
                m = self.manager.current
                answer = self._unavailable(m)
                if answer is None:
                    assert m is not None
                    admitted = self._admit()
                    try:
                        fut = self._enqueue(m, body, ct, admitted)
                    except BaseException:
                        self._release()
                        raise
                    # The callback runs in a copy of this context: its log lines carry the request id.
                    fut.add_done_callback(lambda f: self._direct_answered(f, m, body, ct, rid, mirrored, key_name,
                                                                          admitted, start, respond))
                    return
            except Exception as exc:  # noqa: BLE001 - as _http: our bug is a JSON 500, not a dropped request
                answer = _internal_error("POST", contract.ROUTE_INVOCATIONS, exc)
            self._direct_respond(answer, rid, start, respond)
        finally:
            logs.request_id.reset(token)

    def _direct_answered(self, fut: asyncio.Future[Answer], m: LoadedModel, body: bytes, ct: str | None, rid: str,
                         mirrored: bool, key_name: str | None, admitted: float, start: float,
                         respond: Callable[[int, list[tuple[bytes, bytes]], bytes], None]) -> None:
        try:
            try:
                ans = fut.result()
                self._answered(m, ans, body, ct, rid, mirrored, key_name, admitted)
            finally:
                self._release()
            answer = self._result(m, ans)
        except Exception as exc:  # noqa: BLE001
            answer = _internal_error("POST", contract.ROUTE_INVOCATIONS, exc)
        self._direct_respond(answer, rid, start, respond)

    def _direct_respond(self, answer: tuple[int, bytes, bytes, list[tuple[bytes, bytes]]], rid: str, start: float,
                        respond: Callable[[int, list[tuple[bytes, bytes]], bytes], None]) -> None:
        status, body, ctype, extra = answer
        try:
            respond(status, self._response_headers(contract.ROUTE_INVOCATIONS, ctype, body, rid, extra), body)
        finally:
            self._record("POST", contract.ROUTE_INVOCATIONS, status, start)

    def _watch(self, deadline: float, fut: asyncio.Future[Answer]) -> None:
        """Answer `fut` with 504 at `deadline` (time.monotonic) unless it is answered before.

        Every invocation has the same timeout, so deadlines come in admission order: one
        queue and one timer, set for the earliest, instead of a timer per request (creating
        and cancelling one cost ~2 us of the event loop per request, ~4 % of a request)."""
        dq = self._deadlines
        dq.append((deadline, fut))
        if len(dq) > 2 * self.pending + 64:
            # Answered ones wait behind a slow head until it is answered; drop them now and
            # then, so the queue stays about as long as what is in flight.
            self._deadlines = dq = deque(d for d in dq if not d[1].done())
        if self._deadline_timer is None:
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        dq = self._deadlines
        while dq and dq[0][1].done():
            dq.popleft()
        if not dq:
            self._deadline_timer = None
            return
        loop = self._loop or asyncio.get_running_loop()
        self._deadline_timer = loop.call_later(max(dq[0][0] - time.monotonic(), 0.0), self._expire_due)

    def _expire_due(self) -> None:
        now = time.monotonic()
        dq = self._deadlines
        while dq and (dq[0][1].done() or dq[0][0] <= now):
            self._expire(dq.popleft()[1])
        self._arm_deadline()

    def _expire(self, fut: asyncio.Future[Answer]) -> None:
        if not fut.done():
            self.metrics.timeouts.inc()
            fut.set_result(self._timeout_answer)

    def _log_payload(self, m: LoadedModel, ans: Answer, body: bytes, ct: str | None, rid: str, mirrored: bool,
                     key_name: str | None, seconds: float) -> None:
        assert self.payloads is not None
        self.payloads.offer(m.version, {
            "ts": time.time(),
            "request_id": rid,
            "model": self.cfg.model_name,
            "alias": self.cfg.model_alias,
            "version": m.version,
            "group": self.cfg.group,
            "instance": self.cfg.instance_id,
            "api_key": key_name,
            "mirrored": mirrored,
            "content_type": ct,
            # The exact text sent and answered, so that a replay sends the same bytes.
            "request": body.decode("utf-8", errors="replace"),
            "status": ans.status,
            "response": ans.body.decode("utf-8", errors="replace"),
            "ms": round(seconds * 1000, 3),
        })

    # -- GET routes -------------------------------------------------------------------
    def _ping(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        # As `mlflow models serve`: healthy means a model is loaded.
        return (200 if self.manager.current is not None else 503), b"\n", _H_JSON, []

    def _ready(self) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        ok = self.manager.current is not None and not self.draining and not self.place.replica_draining()
        state = self.state()
        return (200 if ok else 503), orjson.dumps({"ready": ok, "state": state}), _H_JSON, []

    def state(self) -> str:
        if self.draining or self.place.replica_draining():
            return "draining"
        mgr = self.manager
        if mgr.current is None:
            return "error" if mgr.last_error is not None else "loading"
        # Serving, but unable to follow the alias (its version failed to load, or the registry
        # cannot be polled): degraded. Readiness stays: the version that serves still answers.
        return "ready" if mgr.last_error is None and mgr.registry.ok is not False else "degraded"

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
            "last_registry_check": mgr.registry.last_success_at,
            "registry": mgr.registry.as_dict(),
            "pending": self.pending,
            # Invocations answered 200 so far, by the whole replica: the health probe's proof
            # that the balancer routes here.
            "served": self.place.served(self.served),
            # The replica's serving processes (one, or a supervisor's workers): app/README.md.
            "workers": self.place.workers(self.pending, self.served),
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
