"""protocol.py's ReplicaHttpProtocol: invocations answered without uvicorn's ASGI cycle.

Every test drives the real ReplicaApp (with its batcher and model thread; the model is a
stand-in) through the protocol, write by write, and holds the direct path to what the ASGI
path answers for the same bytes: the same response bytes, keep-alive, pipelining, graceful
shutdown and a lost connection as uvicorn's cycle handles them, and uvicorn's path for
everything the direct path does not take."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app import contract
from app.server import config as config_mod
from app.server.asgi import ReplicaApp
from app.server.model import Answer
from app.server.protocol import OneWriteHttpToolsProtocol, ReplicaHttpProtocol

from .helpers import BASE_ENV
from .test_asgi import _FakeManager, _FakeModel
from .test_protocol import _Transport

DEADLINE_S = 10.0
ANSWER = b'{"predictions": [1]}'


class _Model(_FakeModel):
    """test_asgi's stand-in (MLflow's path only, held while `release` is clear), released from
    the start, failing on demand, refusing the body `bad`."""

    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.fail = False

    def score_reference(self, body: bytes, ct: str | None) -> Answer:
        self.entered.set()
        self.release.wait(DEADLINE_S)
        if self.fail:
            raise RuntimeError("scoring blew up")
        if body == b"bad":
            return Answer(400, b'{"error_code": "BAD_REQUEST", "message": "x"}')
        return Answer(200, ANSWER)


class _Counting(ReplicaApp):
    """The replica app, counting the requests its direct path took."""

    direct_calls = 0

    def invoke_direct(self, *args: Any, **kwargs: Any) -> None:
        self.direct_calls += 1
        super().invoke_direct(*args, **kwargs)


def _app(model: Any, **env: str) -> _Counting:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_INSTANCE_ID: "r-direct", **env})
    return _Counting(cfg, manager=_FakeManager(model))  # type: ignore[arg-type]


class _Connection:
    """One connection of a protocol class to an app, fed by hand."""

    def __init__(self, protocol: type[HttpToolsProtocol], app: Any) -> None:
        # As the replica's server_config: uvicorn's proxy-headers wrapper would hide the app's
        # direct path (the test below holds server_config to it).
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, date_header=False,
                                server_header=False, proxy_headers=False)
        self.state = ServerState()
        self.transport = _Transport()
        self.proto = protocol(config=config, server_state=self.state, app_state={}, _loop=asyncio.get_running_loop())
        self.proto.connection_made(self.transport)  # type: ignore[arg-type]

    async def until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not done():
            assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s: {self.transport.writes}"
            await asyncio.sleep(0.002)

    async def exchange(self, *chunks: bytes, responses: int = 1) -> list[bytes]:
        for chunk in chunks:
            self.proto.data_received(chunk)
            await asyncio.sleep(0)
        await self.until(lambda: len(self.transport.writes) >= responses and not self.state.tasks, "answer")
        return self.transport.writes

    def close(self) -> None:
        if self.proto.timeout_keep_alive_task is not None:
            self.proto.timeout_keep_alive_task.cancel()


def _post(body: bytes = b"{}", *headers: bytes, path: bytes = b"/invocations", version: bytes = b"1.1") -> bytes:
    head = [b"POST " + path + b" HTTP/" + version, b"Host: r", b"Content-Type: application/json",
            b"Content-Length: " + str(len(body)).encode(), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _both(model: Any, *chunks: bytes, responses: int = 1, one_by_one: bool = False,
          **env: str) -> tuple[list[bytes], list[bytes], int, int]:
    """The writes of the ASGI path and of the direct path for the same bytes, and how many
    requests each app's direct path took. `one_by_one`: each chunk is a request, sent once
    the one before it is answered."""

    async def one(protocol: type[HttpToolsProtocol]) -> tuple[list[bytes], int]:
        app = _app(model, **env)
        await app.startup()
        conn = _Connection(protocol, app)
        try:
            if one_by_one:
                for n, chunk in enumerate(chunks, 1):
                    await conn.exchange(chunk, responses=n)
                return list(conn.transport.writes), app.direct_calls
            return list(await conn.exchange(*chunks, responses=responses)), app.direct_calls
        finally:
            conn.close()
            await app.shutdown()

    asgi, asgi_direct = asyncio.run(one(OneWriteHttpToolsProtocol))
    direct, direct_calls = asyncio.run(one(ReplicaHttpProtocol))
    return asgi, direct, asgi_direct, direct_calls


RID = contract.HEADER_REQUEST_ID.encode() + b": rid-1"


@pytest.mark.parametrize("request_bytes", [
    _post(b"{}", RID),
    _post(b"bad", RID),
    _post(b"{}", RID, b"Connection: close"),
    _post(b"", RID),
    _post(b"{}", RID, contract.HEADER_API_KEY_NAME.encode() + b": team-a"),
], ids=["scored", "refused-by-model", "connection-close", "empty-body", "key-name"])
def test_the_direct_path_writes_what_the_asgi_path_writes(request_bytes: bytes) -> None:
    asgi, direct, asgi_direct, direct_calls = _both(_Model(), request_bytes)
    assert (asgi_direct, direct_calls) == (0, 1)
    assert len(direct) == 1 and direct[0].startswith(b"HTTP/1.1 ")
    assert direct == asgi


def test_no_model_yet_is_503_with_retry_after_on_the_direct_path_too() -> None:
    asgi, direct, _, direct_calls = _both(None, _post(b"{}", RID))
    assert direct_calls == 1
    assert direct == asgi and direct[0].startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 1\r\n" in direct[0]


def test_a_generated_request_id_differs_per_request_and_the_rest_is_the_same() -> None:
    asgi, direct, _, direct_calls = _both(_Model(), _post(), _post(), one_by_one=True)
    assert direct_calls == 2 and len(direct) == len(asgi) == 2

    def without_id(write: bytes) -> bytes:
        return b"\r\n".join(line for line in write.split(b"\r\n") if not line.startswith(b"x-request-id: "))

    ids = [line for write in direct for line in write.split(b"\r\n") if line.startswith(b"x-request-id: ")]
    assert len(set(ids)) == 2
    assert [without_id(w) for w in direct] == [without_id(w) for w in asgi]


@pytest.mark.parametrize("request_bytes", [
    _post(b"{}", RID, version=b"1.0"),
    _post(b"{}", RID, b"Expect: 100-continue"),
    _post(b"{}", RID, path=b"/invocations?x=1"),
    b"POST /invocations HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n" + RID
    + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    _post(b"{" + b" " * 40 + b"}", RID),
    _post(b"{}", contract.HEADER_REQUEST_ID.encode() + b": a\x01b"),
], ids=["http-1.0", "expect-continue", "query-string", "chunked", "over-the-body-limit", "bad-request-id"])
def test_what_the_direct_path_does_not_take_goes_to_uvicorns_cycle_unchanged(request_bytes: bytes) -> None:
    asgi, direct, asgi_direct, direct_calls = _both(_Model(), request_bytes, **{contract.ENV_MAX_BODY_BYTES: "32"})
    assert (asgi_direct, direct_calls) == (0, 0)
    assert direct == asgi and direct  # something was answered (or, for the bad id, the connection closed)


def test_pipelined_requests_are_answered_in_order_whichever_path_each_takes() -> None:
    ping = b"GET /ping HTTP/1.1\r\nHost: r\r\n" + RID + b"\r\n\r\n"
    chunk = _post(b"{}", RID) + ping + _post(b"bad", RID) + _post(b"{}", RID, version=b"1.0")
    asgi, direct, _, direct_calls = _both(_Model(), chunk, responses=4)
    # The first on the direct path; those behind it while it is in flight on uvicorn's.
    assert direct_calls == 1
    assert [w.split(b"\r\n", 1)[0] for w in direct] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
                                                        b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 200 OK"]
    assert direct == asgi


def test_a_body_in_several_segments_is_scored_whole() -> None:
    model = _Model()
    seen: list[bytes] = []
    score = model.score_reference

    def recording(body: bytes, ct: str | None) -> Answer:
        seen.append(body)
        return score(body, ct)

    model.score_reference = recording  # type: ignore[method-assign]
    request = _post(b'{"inputs": [[1, 2, 3, 4]]}', RID)
    head, body = request.split(b"\r\n\r\n")
    _, direct, _, direct_calls = _both(model, head + b"\r\n\r\n" + body[:5], body[5:12], body[12:])
    assert direct_calls == 1 and direct[0].startswith(b"HTTP/1.1 200 ")
    assert seen[-1] == b'{"inputs": [[1, 2, 3, 4]]}'


def _in_flight(scenario: Callable[[_Connection, _Counting, _Model], Any]) -> None:
    async def run() -> None:
        # A failing callback (a write to a closed transport) is only logged by the loop.
        failures: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: failures.append(context))
        model = _Model()
        model.release.clear()
        app = _app(model)
        await app.startup()
        conn = _Connection(ReplicaHttpProtocol, app)
        try:
            conn.proto.data_received(_post(b"{}", RID))
            await asyncio.to_thread(model.entered.wait, DEADLINE_S)
            assert app.direct_calls == 1 and app.pending == 1 and not conn.transport.writes
            await scenario(conn, app, model)
        finally:
            model.release.set()
            conn.close()
            await app.shutdown()
        assert failures == []

    asyncio.run(run())


def test_a_graceful_shutdown_waits_for_the_answer_then_closes() -> None:
    async def scenario(conn: _Connection, app: _Counting, model: _Model) -> None:
        conn.proto.shutdown()  # what uvicorn's server calls on every connection at SIGTERM
        assert not conn.transport.closed
        model.release.set()
        await conn.until(lambda: conn.transport.closed, "close")
        assert len(conn.transport.writes) == 1
        assert conn.transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nconnection: close\r\n\r\n" + ANSWER in conn.transport.writes[0]
        assert app.pending == 0 and app.served == 1

    _in_flight(scenario)


def test_a_lost_connection_gets_no_write_and_its_request_is_released() -> None:
    async def scenario(conn: _Connection, app: _Counting, model: _Model) -> None:
        conn.transport.closed = True
        conn.proto.connection_lost(None)
        model.release.set()
        await conn.until(lambda: app.pending == 0, "release")
        assert conn.transport.writes == []
        # Scored and counted, as on the ASGI path.
        assert f'requests_total{{route="{contract.ROUTE_INVOCATIONS}",status="200"}} 1.0' in app.metrics.render().decode()

    _in_flight(scenario)


def test_a_connection_lost_with_a_request_pipelined_behind_the_direct_one_gets_no_write() -> None:
    async def scenario(conn: _Connection, app: _Counting, model: _Model) -> None:
        conn.proto.data_received(_post(b"{}", RID, version=b"1.0"))  # queued behind it, on uvicorn's path
        assert type(conn.proto.cycle) is RequestResponseCycle
        conn.transport.closed = True
        conn.proto.connection_lost(None)
        model.release.set()
        await conn.until(lambda: app.pending == 0, "release")
        assert conn.transport.writes == []

    _in_flight(scenario)


def test_a_timeout_is_a_504_and_a_scoring_failure_a_json_answer() -> None:
    async def run() -> list[bytes]:
        model = _Model()
        model.release.clear()
        app = _app(model, **{contract.ENV_SCORING_TIMEOUT_S: "0.2"})
        await app.startup()
        conn = _Connection(ReplicaHttpProtocol, app)
        try:
            writes = list(await conn.exchange(_post(b"{}", RID)))
            model.fail = True
            model.release.set()
            conn.transport.writes.clear()
            writes += await conn.exchange(_post(b"{}", RID))
            assert app.direct_calls == 2
            return writes
        finally:
            model.release.set()
            conn.close()
            await app.shutdown()

    timed_out, failed = asyncio.run(run())
    assert timed_out.startswith(b"HTTP/1.1 504 ") and b"DEADLINE_EXCEEDED" in timed_out
    assert failed.startswith(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n")
    assert b"scoring blew up" in failed


def test_the_direct_path_makes_no_uvicorn_cycle() -> None:
    cycles: list[Any] = []

    class Recording(ReplicaHttpProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycles.append(type(self.cycle))

    _, direct, _, direct_calls = _both(_Model(), _post(b"{}", RID) + _post(b"{}", RID, version=b"1.0"), responses=2)
    assert direct_calls == 1

    async def run() -> None:
        app = _app(_Model())
        await app.startup()
        conn = _Connection(Recording, app)
        try:
            await conn.exchange(_post(b"{}", RID) + _post(b"{}", RID, version=b"1.0"), responses=2)
        finally:
            conn.close()
            await app.shutdown()

    asyncio.run(run())
    assert cycles[1] is RequestResponseCycle and cycles[0] is not RequestResponseCycle


def test_the_replica_servers_protocol_finds_the_direct_path() -> None:
    """The protocol looks for the direct path on the app uvicorn loaded: a wrapper (proxy
    headers, trace logging) would hide it and every request would take the ASGI path."""
    from app.server import __main__ as main

    async def run() -> None:
        app = _app(_Model())
        config = main.server_config(app.cfg, app)
        config.load()
        proto = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},
                                           _loop=asyncio.get_running_loop())
        assert isinstance(proto, ReplicaHttpProtocol)
        assert proto._invoke_direct is not None and proto._invoke_direct.__self__ is app  # type: ignore[attr-defined]

    asyncio.run(run())
