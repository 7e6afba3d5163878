"""uvicorn's httptools protocol, with a response's head and first body part in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and
the body when it sends `http.response.body`: two `transport.write` calls, two TCP segments.
A replica killed between them leaves nginx with a complete head and no body; nginx has
already passed the head on to its client, so it can neither retry nor answer with its own
error, and the client reads a truncated response (`IncompleteRead(0 bytes read, 19 more
expected)`: tests/app/kill_scenario.py saw it after a few percent of the SIGKILLs under
load). Here the head waits in memory for the first body part and both leave in one write,
so a peer gets the whole of a small response or none of it; with none, nginx sends the
request to another replica (`proxy_next_upstream ... non_idempotent`).

What changes is only which bytes go into which write: the bytes themselves, keep-alive,
pipelining, 100-continue, flow control and error handling stay uvicorn's.

`ReplicaHttpProtocol` also answers the common invocation without ASGI: see its docstring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from app import contract

_INVOCATIONS = contract.ROUTE_INVOCATIONS.encode()


class _HeadWithBody:
    """The transport as one response cycle sees it: the response head is held back until the
    first body write, and the two go out as one write.

    A cycle's writes are, in order: an optional `100 Continue` (before the response starts),
    the head (the first write once `response_started` is set), then body parts. A HEAD
    request has no body write, so its head is never held. A head still held when the cycle
    closes the connection belongs to a response that never got its body (the app failed
    after starting it): it is dropped, so the peer sees a closed connection and not half an
    answer."""

    __slots__ = ("_transport", "_cycle", "_head")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        # Needed only until the head is held. The cycle refers to this object too: a reference
        # kept after that would make every request's objects garbage for the cycle collector
        # instead of being freed at once (measured: p99 from 6 ms to 150 ms, full collections).
        self._cycle: RequestResponseCycle | None = cycle if cycle.scope["method"] != "HEAD" else None
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif self._cycle is not None and self._cycle.response_started:
            self._cycle = None
            self._head = data
        else:
            self._transport.write(data)

    def close(self) -> None:
        self._head = None
        self._cycle = None
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Anything else a future uvicorn might call on the transport: the real one answers.
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """Pass as uvicorn.Config(http=...): every request's cycle writes through `_HeadWithBody`."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # A new cycle (not an upgrade): its ASGI task has not run yet, whether started now
        # or queued behind a pipelined request, so no write has happened.
        if cycle is not before and cycle is not None:
            cycle.transport = _HeadWithBody(self.transport, cycle)  # type: ignore[assignment]


class _NoEvent:
    __slots__ = ()

    def set(self) -> None:
        pass


class _DirectCycle:
    """A request answered without ASGI, in the protocol's `cycle` slot. It has the attributes
    uvicorn's protocol reads and writes on a cycle there (`response_complete`, `keep_alive`,
    `disconnected`, `message_event`), so keep-alive, pipelining behind it, a lost connection
    and a graceful shutdown (which waits for the response, then closes) work as for a cycle."""

    __slots__ = ("protocol", "request", "body", "keep_alive", "response_complete", "disconnected")
    message_event = _NoEvent()

    def __init__(self, protocol: HttpToolsProtocol, request: Any, keep_alive: bool) -> None:
        self.protocol: HttpToolsProtocol | None = protocol
        self.request = request
        self.body: list[bytes] = []
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write the response as uvicorn's cycle writes it (status line, the headers as given,
        `connection: close` unless kept alive), head and body in one write."""
        protocol = self.protocol
        if protocol is None:
            return
        # Dropped at once: protocol -> cycle -> protocol would leave each request's objects
        # to the cycle collector (protocol.py's _HeadWithBody says what that cost).
        self.protocol = None
        self.response_complete = True
        transport = protocol.transport
        # A cycle pipelined behind this one has the protocol's `cycle` slot, so a lost
        # connection may not have marked this one: the transport says so too.
        if self.disconnected or transport.is_closing():
            return
        parts = [STATUS_LINE[status]]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        parts.append(body)
        transport.write(b"".join(parts))
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()


class ReplicaHttpProtocol(OneWriteHttpToolsProtocol):
    """The replica's protocol: a POST /invocations that the app can take directly
    (`ReplicaApp.direct_request`: a Content-Length within the limit, no shadow) is answered
    without an ASGI cycle. uvicorn's cycle (a task, the scope, receive and send, each
    response header checked and copied) costs as much CPU as the rest of a small invocation;
    here the body is collected as it arrives and the app gets it whole (`invoke_direct`),
    queues it for the model thread and answers from the future's callback. Anything else
    (other routes and methods, HTTP/1.0, `Expect: 100-continue`, upgrades, a query string,
    a request pipelined behind one in flight) takes uvicorn's path unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct_request: Callable[[list[tuple[bytes, bytes]]], Any] | None = getattr(self.app, "direct_request", None)
        self._invoke_direct: Callable[..., None] | None = getattr(self.app, "invoke_direct", None)

    def on_headers_complete(self) -> None:
        direct = self._direct_request
        cycle = self.cycle
        if (direct is not None and self.url == _INVOCATIONS and not self.expect_100_continue
                and (cycle is None or cycle.response_complete) and self.limit_concurrency is None
                and self.parser.get_method() == b"POST" and self.parser.get_http_version() == "1.1"
                and not self.parser.should_upgrade()):
            request = direct(self.headers)
            if request is not None:
                self.cycle = _DirectCycle(self, request, self.parser.should_keep_alive())  # type: ignore[assignment]
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle) is _DirectCycle:
            # Within the Content-Length the app accepted (direct_request): no flow control.
            cycle.body.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is _DirectCycle:
            assert self._invoke_direct is not None
            body = cycle.body
            self._invoke_direct(cycle.request, body[0] if len(body) == 1 else b"".join(body), cycle.respond)
            return
        super().on_message_complete()
