"""The ceiling: a constant answer on the replica's own stack (bare ASGI on uvicorn with
httptools and uvloop, one worker, the replica's one-write protocol). It reads the body and
answers what a one-row prediction looks like, with the same kind of headers, and does no
other work.

Run by replica_bench.py as `python -m benchmarks.replica_const_app PORT [asgi|direct|starlette]`.
`direct`: the same answer taken the way the replica takes an invocation since it skips
uvicorn's ASGI cycle (app/server/protocol.py's ReplicaHttpProtocol): the most a replica on
that path can serve. `asgi` (the default) is the ceiling the issue set its target against.
"""

from __future__ import annotations

import sys
from typing import Any

ANSWER = b'{"predictions":[0]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode()),
           (b"x-instance-id", b"const"), (b"x-request-id", b"0123456789abcdef"), (b"x-model-version", b"1")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


class DirectConstApp:
    """The constant answer through ReplicaHttpProtocol's direct path (`direct_request`,
    `invoke_direct`, as ReplicaApp offers them), ASGI for everything else."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    def direct_request(self, headers: list[tuple[bytes, bytes]]) -> tuple[()]:
        return ()

    def invoke_direct(self, request: tuple[()], body: bytes, respond: Any) -> None:
        respond(200, HEADERS, ANSWER)


def starlette_app() -> Any:
    """The same constant answer through Starlette's routing and Request/Response objects: the
    framework the issue's reference figures were taken on, printed for comparison only."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def invocations(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response(b"\n", media_type="application/json")

    return Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)])


if __name__ == "__main__":
    import uvicorn

    from app.server.protocol import OneWriteHttpToolsProtocol, ReplicaHttpProtocol

    variant = sys.argv[2] if len(sys.argv) > 2 else "asgi"
    target = {"asgi": lambda: app, "direct": DirectConstApp, "starlette": starlette_app}[variant]()
    # The ceilings run on the replica's own HTTP protocol; the Starlette reference on uvicorn's.
    protocol: Any = {"asgi": OneWriteHttpToolsProtocol, "direct": ReplicaHttpProtocol, "starlette": "httptools"}[variant]
    uvicorn.run(target, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http=protocol,
                access_log=False, server_header=False, proxy_headers=False, date_header=False, lifespan="on", log_level="warning")
