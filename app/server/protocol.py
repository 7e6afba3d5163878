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
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


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
