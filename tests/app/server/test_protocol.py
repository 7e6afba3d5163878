"""app/server/protocol.py: what reaches the socket, write by write, for the responses a replica
sends, next to uvicorn's own protocol (which sends a response's head and body in two writes)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.server.protocol import OneWriteHttpToolsProtocol, ReplicaHttpProtocol

ANSWER = b'{"predictions": [1]}'
POST = (b"POST /invocations HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


class _Transport:
    """Records every write: what these tests are about is which bytes go out in one write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the replica does: read the body, then the head and the body as two ASGI messages."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else ANSWER})


def _exchange(protocol: type[HttpToolsProtocol], app: Any, *chunks: bytes) -> _Transport:
    async def run() -> _Transport:
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, date_header=False,
                                server_header=False)
        state = ServerState()
        transport = _Transport()
        proto = protocol(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
        proto.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            proto.data_received(chunk)
            await asyncio.sleep(0)  # let the request's task run up to its next await
        # Pipelined requests start one after the other: wait until none is left.
        while state.tasks:
            await asyncio.gather(*list(state.tasks))
        if proto.timeout_keep_alive_task is not None:
            proto.timeout_keep_alive_task.cancel()
        return transport

    return asyncio.run(run())


@pytest.mark.parametrize(("protocol", "writes"), [(OneWriteHttpToolsProtocol, 1), (HttpToolsProtocol, 2)])
def test_a_response_leaves_in_one_write(protocol: type[HttpToolsProtocol], writes: int) -> None:
    t = _exchange(protocol, _answer, POST)
    assert len(t.writes) == writes  # uvicorn's own protocol: the head, then the body
    whole = b"".join(t.writes)
    assert whole.startswith(b"HTTP/1.1 200 OK\r\n") and whole.endswith(b"\r\n\r\n" + ANSWER)
    assert not t.closed


def test_pipelined_requests_get_one_write_each() -> None:
    t = _exchange(OneWriteHttpToolsProtocol, _answer, POST * 3)
    assert len(t.writes) == 3
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(ANSWER) for w in t.writes)


def test_a_head_request_gets_its_head_at_once() -> None:
    t = _exchange(OneWriteHttpToolsProtocol, _answer, b"HEAD /health HTTP/1.1\r\nHost: r\r\n\r\n")
    assert len(t.writes) == 1 and t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and t.writes[0].endswith(b"\r\n\r\n")


def test_100_continue_goes_first_then_the_response_in_one_write() -> None:
    head = b"POST /invocations HTTP/1.1\r\nHost: r\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    t = _exchange(OneWriteHttpToolsProtocol, _answer, head, b"{}")
    assert t.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(t.writes) == 2 and t.writes[1].startswith(b"HTTP/1.1 200 OK\r\n") and t.writes[1].endswith(ANSWER)


def test_a_streamed_body_sends_its_head_with_the_first_part() -> None:
    async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    t = _exchange(OneWriteHttpToolsProtocol, stream, POST)
    assert len(t.writes) == 2
    assert b"transfer-encoding: chunked" in t.writes[0] and t.writes[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert t.writes[1] == b"3\r\ntwo\r\n0\r\n\r\n"


@pytest.mark.parametrize(("protocol", "sent"), [(OneWriteHttpToolsProtocol, b""), (HttpToolsProtocol, b"HTTP/1.1 200 OK")])
def test_an_app_failing_after_its_head_sends_no_half_answer(protocol: type[HttpToolsProtocol], sent: bytes) -> None:
    async def fails(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"20")]})
        raise RuntimeError("the body never comes")

    t = _exchange(protocol, fails, POST)
    # Ours: nothing, and the connection closes (nginx then answers, or retries elsewhere).
    # uvicorn's: a head announcing 20 bytes, then the close: the client's truncated read.
    assert b"".join(t.writes).startswith(sent) and t.closed
    assert (b"".join(t.writes) == b"") is (protocol is OneWriteHttpToolsProtocol)


def test_uvicorns_own_500_leaves_in_one_write() -> None:
    async def raises(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("before any answer")

    t = _exchange(OneWriteHttpToolsProtocol, raises, POST)
    assert len(t.writes) == 1 and t.writes[0].startswith(b"HTTP/1.1 500 ") and t.writes[0].endswith(b"Internal Server Error")


def test_a_finished_request_is_freed_at_once() -> None:
    """No reference cycle between a request's cycle and its transport wrapper: with the cycle
    collector off, a request's objects are freed once the next request on the connection
    starts (the last one stays with the connection's protocol, as in uvicorn's own)."""
    cycles: list[weakref.ref[Any]] = []

    class Recording(OneWriteHttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycles.append(weakref.ref(self.cycle))

    gc.collect()
    gc.disable()
    try:
        _exchange(Recording, _answer, POST * 3)
        assert len(cycles) == 3
        assert [c() for c in cycles[:-1]] == [None, None]
    finally:
        gc.enable()


def test_the_replica_server_uses_it() -> None:
    from app.server import __main__ as main
    from app.server import config as config_mod

    from .helpers import BASE_ENV

    http = main.server_config(config_mod.from_env(BASE_ENV), object()).http  # type: ignore[arg-type]
    assert http is ReplicaHttpProtocol and issubclass(http, OneWriteHttpToolsProtocol)
