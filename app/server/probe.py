"""`python -m app.server.probe`: exit 0 when this container's replica is ready and in rotation
(the image's HEALTHCHECK, and the healthcheck the program declares). Reads where the replica
listens from the same variables the server does.

Ready is not yet in rotation. Docker's DNS names a container from its start, so nginx sends it
requests while it loads; the 503s mark it failed for the balancer's fail_timeout, and it gets
traffic again only when that runs out. A rollout that took "healthy" for "in rotation" would
stop the next replica meanwhile. So with MLSERVE_ROTATION_GRACE_S set (the program sets it to
the balancer's fail_timeout plus its DNS refresh period), healthy means ready and either an
invocation already answered (the balancer routes here) or a model loaded at least that long ago
(with no traffic at all, nothing can prove rotation and nothing is lost by waiting that long).

Docker runs the probe every healthIntervalSeconds as a process in the replica's cgroup, so its
CPU comes out of the replica's limit (`replicaCpus`), and at 0.1 CPU a costly probe also stalls
the replica's answers while it runs. Hence the two GETs go over the `_socket` module with a
minimal HTTP/1.1 client of its own: with urllib.request (http.client, email, ssl) a probe cost
~130 ms of CPU against ~50 ms now, and importing `socket` (selectors, enum) alone takes ~25 ms.
"""

from __future__ import annotations

import _socket
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from app import contract

_ANY_ADDRESS = ("", "0.0.0.0", "::")
_TIMEOUT_S = 3.0
_MAX_ANSWER_BYTES = 1 << 20


def _host_port(env: Mapping[str, str]) -> tuple[str, int]:
    """Where the replica listens, as seen from inside its own network namespace."""
    host = env.get(contract.ENV_BIND_HOST, "").strip()
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    return host, int(env.get(contract.ENV_PORT) or contract.REPLICA_PORT)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def base_url(env: Mapping[str, str]) -> str:
    """The replica's URL as seen from inside its own network namespace."""
    return f"http://{_authority(*_host_port(env))}"


def ready_url(env: Mapping[str, str]) -> str:
    """The replica's readiness URL as seen from inside its own network namespace."""
    return base_url(env) + contract.ROUTE_READY


class ProbeError(Exception):
    pass


def http_get(host: str, port: int, path: str, timeout_s: float = _TIMEOUT_S) -> tuple[int, bytes]:
    """One GET on a connection of its own: (status, body). The answer must carry a
    Content-Length or end with the connection (the replica sends one and closes on
    `Connection: close`)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {_authority(host, port)}\r\nConnection: close\r\n\r\n".encode("latin-1")
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        conn = _socket.socket(family, kind, proto)
        try:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.connect(address)
            conn.sendall(request)
            return _read_answer(conn, deadline)
        except OSError as exc:
            last = exc
        finally:
            conn.close()
    raise last or ProbeError(f"{host}:{port} resolves to no address")


def _read_answer(conn: Any, deadline: float) -> tuple[int, bytes]:
    answer = bytearray()
    while len(answer) <= _MAX_ANSWER_BYTES:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = conn.recv(65536)
        if not chunk:
            whole = _parse(bytes(answer), closed=True)
            assert whole is not None  # with the connection closed, _parse returns or raises
            return whole
        answer += chunk
        if b"\r\n\r\n" in answer:
            parsed = _parse(bytes(answer), closed=False)
            if parsed is not None:
                return parsed
    raise ProbeError(f"answer longer than {_MAX_ANSWER_BYTES} bytes")


def _parse(answer: bytes, closed: bool) -> tuple[int, bytes] | None:
    """(status, body) once the answer is whole; None while its body is still arriving."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
        raise ProbeError(f"not an HTTP answer: {answer[:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"identity").lower() != b"identity":
        raise ProbeError(f"unexpected transfer-encoding {headers[b'transfer-encoding']!r}")
    length = headers.get(b"content-length")
    if length is None:
        return (int(status_line[1]), body) if closed else None
    if not length.isdigit():
        raise ProbeError(f"bad content-length {length!r}")
    if len(body) < int(length):
        if closed:
            raise ProbeError(f"answer cut short: {len(body)} of content-length {int(length)}")
        return None
    return int(status_line[1]), body[: int(length)]


def in_rotation(health: Mapping[str, Any], grace_s: float, now: float) -> bool:
    """True once the replica answered an invocation, or its model loaded `grace_s` ago."""
    if grace_s <= 0 or int(health.get("served") or 0) > 0:
        return True
    loaded_at = (health.get("model") or {}).get("loaded_at")
    return loaded_at is not None and now - float(loaded_at) >= grace_s


def _answer_of(host: str, port: int, path: str) -> bytes:
    status, body = http_get(host, port, path)
    if status != 200:
        raise ProbeError(f"{path} answered {status}")
    return body


def main() -> int:
    env = os.environ
    host, port = _host_port(env)
    try:
        _answer_of(host, port, contract.ROUTE_READY)
        grace_s = float(env.get(contract.ENV_ROTATION_GRACE_S) or 0)
        if grace_s > 0 and not in_rotation(json.loads(_answer_of(host, port, contract.ROUTE_HEALTH)), grace_s, time.time()):
            print("ready, not yet in rotation: no invocation answered yet", file=sys.stderr)
            return 1
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
