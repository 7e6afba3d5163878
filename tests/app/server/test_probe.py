"""app/server/probe.py: the image's HEALTHCHECK command."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from app import contract
from app.server import probe

from .helpers import ROOT


def test_probe_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "app.server.probe"], cwd=ROOT, capture_output=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", contract.ENV_PORT: str(port)})
    assert out.returncode == 1


def test_ready_is_in_rotation_once_an_invocation_was_answered() -> None:
    from app.server.probe import in_rotation

    loaded = {"model": {"loaded_at": 1000.0}}
    assert not in_rotation({**loaded, "served": 0}, grace_s=16, now=1010.0)
    assert in_rotation({**loaded, "served": 1}, grace_s=16, now=1000.5)


def test_without_traffic_rotation_is_assumed_after_the_grace() -> None:
    from app.server.probe import in_rotation

    loaded = {"model": {"loaded_at": 1000.0}, "served": 0}
    assert not in_rotation(loaded, grace_s=16, now=1015.9)
    assert in_rotation(loaded, grace_s=16, now=1016.0)
    assert not in_rotation({"model": {"loaded_at": None}, "served": 0}, grace_s=16, now=5000.0)


def test_no_grace_means_ready_is_enough() -> None:
    from app.server.probe import in_rotation

    assert in_rotation({"model": {"loaded_at": None}, "served": 0}, grace_s=0, now=0.0)


@contextlib.contextmanager
def canned(answer: bytes, keep_open: bool = False) -> Iterator[tuple[int, list[bytes]]]:
    """A listener on loopback that answers one connection with `answer`, then closes it (with
    `keep_open`, only once the block ends); yields its port and the requests it read."""
    import socket

    requests: list[bytes] = []
    released = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                requests.append(request)
                conn.sendall(answer)
                if keep_open:
                    released.wait(10)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1], requests
        finally:
            released.set()
            thread.join(10)


def test_http_get_reads_status_and_body_up_to_its_length() -> None:
    body = b'{"status": "ok"}'
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: %d\r\n\r\n%sEXTRA" % (len(body), body)
    with canned(answer) as (port, requests):
        assert probe.http_get("127.0.0.1", port, contract.ROUTE_HEALTH) == (200, body)
    assert requests[0].startswith(f"GET {contract.ROUTE_HEALTH} HTTP/1.1\r\n".encode())
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in requests[0] and b"\r\nConnection: close\r\n" in requests[0]


def test_http_get_returns_once_the_body_is_whole_even_if_the_connection_stays_open() -> None:
    with canned(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", keep_open=True) as (port, _):
        assert probe.http_get("127.0.0.1", port, contract.ROUTE_READY, timeout_s=5) == (200, b"{}")


def test_http_get_passes_the_status_of_an_error_answer() -> None:
    with canned(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}") as (port, _):
        assert probe.http_get("127.0.0.1", port, contract.ROUTE_READY) == (503, b"{}")


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "transfer-encoding"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}", "cut short"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\n{}", "bad content-length"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (b"", "not an HTTP answer"),
    ],
    ids=["chunked", "cut-short", "bad-length", "not-http", "empty"],
)
def test_http_get_refuses_an_answer_it_cannot_read(answer: bytes, says: str) -> None:
    with canned(answer) as (port, _), pytest.raises(probe.ProbeError, match=says):
        probe.http_get("127.0.0.1", port, contract.ROUTE_READY)


def test_an_ipv6_bind_address_is_bracketed() -> None:
    assert probe.base_url({contract.ENV_BIND_HOST: "::1", contract.ENV_PORT: "9000"}) == "http://[::1]:9000"
    assert probe.ready_url({contract.ENV_BIND_HOST: "0.0.0.0"}) == f"http://127.0.0.1:{contract.REPLICA_PORT}{contract.ROUTE_READY}"
