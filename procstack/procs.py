"""Process supervision for the local stack: start detached, poll readiness, stop for sure.

Processes are started in their own session (so the stack outlives `procstack up`, and a
stop signals the whole process group: mlflow's gunicorn workers, nginx's workers). A pid
alone is not trusted on stop: the command line recorded at start must still match, so a
reused pid is never signalled. A process is identified by pid and kernel start time (command
lines are no use: nginx rewrites its own, interpreters rewrite argv[0]).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class ReadinessError(RuntimeError):
    pass


def start(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    fields = _stat(pid)
    return fields[19] if fields else None


def alive(pid: int, started: str | None = None) -> bool:
    """True while `pid` runs (zombies count as dead) and, if given, is the process started then."""
    fields = _stat(pid)
    if fields is None:
        return False
    if fields[0] in ("Z", "X"):
        _reap(pid)
        return False
    return started is None or fields[19] == started


def _reap(pid: int) -> None:
    """Collect our own dead children (when the caller started them), so they leave no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(pid: int, started: str | None, grace_s: float) -> None:
    """SIGTERM the process group, wait up to grace_s, then SIGKILL it."""
    if not alive(pid, started):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        time.sleep(0.05)
    # Also after a clean exit of the leader: workers left in its group must not outlive it.
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _reap(pid)


def wait_until(check: Callable[[], bool], deadline_s: float, what: str, pid: int | None = None, log: Path | None = None) -> None:
    """Poll `check` until it holds; fail early when the process died, late at the deadline."""
    deadline = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            pass
        if pid is not None and not alive(pid):
            raise ReadinessError(f"{what}: the process exited before it was ready{tail(log)}")
        if time.monotonic() > deadline:
            raise ReadinessError(f"{what}: not ready after {deadline_s:.0f}s{tail(log)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def tail(log: Path | None, lines: int = 25) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def http_ok(url: str, timeout: float = 2.0) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
                return 200 <= int(resp.status) < 300
        except urllib.error.HTTPError:
            return False

    return check


def tcp_open(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection((host, port), timeout=1):
            return True

    return check


def port_free(host: str, port: int, udp: bool = False) -> bool:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        # SO_REUSEADDR for TCP only (a TIME_WAIT socket is no owner). For UDP it would let
        # this probe share the port with a running server that set it too (socketserver does).
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
