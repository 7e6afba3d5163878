"""Real processes for the replica tests and benchmark: an MLflow tracking server and
registry (SQLite, artifacts proxied by the server), the trainer, `mlflow models serve`
and our replica. Everything listens on 127.0.0.1 on free ports; every start has a
matching stop, and readiness is polled with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import contract  # noqa: E402

PY = sys.executable
MLFLOW = str(Path(PY).with_name("mlflow"))
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def log_tail(path: Path, n: int = 4000) -> str:
    """The last `n` bytes of a process's log, or "" when there is none yet."""
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Own process group: `mlflow models serve` forks uvicorn, and stop() must reach it.
        self.popen = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=str(ROOT), start_new_session=True)
        return self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_http(self, path: str, deadline_s: float, want: int = 200) -> None:
        end = time.monotonic() + deadline_s
        last: object = None
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode if self.popen else None}); "
                                   f"log tail:\n{self.tail()}")
            try:
                status, _ = http_get(self.url + path, timeout=1.0)
                if status == want:
                    return
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.1)  # poll interval of a readiness loop with a deadline
        raise TimeoutError(f"{self.name}: {path} not {want} within {deadline_s}s (last: {last}); log tail:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return log_tail(self.log_path, n)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Children left in the group (uvicorn under `mlflow models serve`).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()
        return self.popen.returncode

    def rss_bytes(self) -> int:
        """RSS of the process and all its descendants (mlflow serve runs uvicorn as a child)."""
        if self.popen is None:
            return 0
        total = 0
        for pid in _descendants(self.popen.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the process and its live descendants have
        used so far. Unlike throughput it hardly moves when other work on a shared machine
        takes the core: a benchmark's per-request CPU is the steadier figure."""
        if self.popen is None:
            return 0.0
        ticks = 0
        for pid in _descendants(self.popen.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
        return ticks / _CLOCK_TICKS

    def pss_bytes(self) -> int:
        """Proportional set size of the process and its descendants: pages shared between them
        (a forked replica's libraries) count once in the sum, as in the container's memory."""
        if self.popen is None:
            return 0
        total = 0
        for pid in _descendants(self.popen.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        return total


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must come first.
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # No proxies for loopback traffic.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def start_tracking_server(workdir: Path, deadline_s: float = 90.0) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", str(workdir / "artifacts"), "--serve-artifacts",
           "--host", HOST, "--port", str(port), "--workers", "1"]
    env = _base_env()
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    p = Proc("mlflow-server", cmd, env, workdir / "mlflow-server.log", port=port).start()
    try:
        p.wait_http("/health", deadline_s)
    except BaseException:
        p.stop()
        raise
    return p


def train(tracking_uri: str, name: str, alias: str, *args: str, env_extra: dict[str, str] | None = None,
          timeout: float = 180.0, output: list[str] | None = None) -> dict[str, object]:
    """The trainer's result line; `output` gets what it printed (stdout, then stderr)."""
    env = _base_env()
    env.update({contract.ENV_TRACKING_URI: tracking_uri, contract.ENV_MODEL_NAME: name,
                contract.ENV_MODEL_ALIAS: alias})
    env.update(env_extra or {})
    out = subprocess.run([PY, "-m", contract.TRAINER_MODULE, *args], env=env, cwd=str(ROOT),
                         capture_output=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"trainer failed ({out.returncode}):\n{out.stdout.decode()[-3000:]}\n{out.stderr.decode()[-3000:]}")
    if output is not None:
        output.extend([out.stdout.decode(), out.stderr.decode()])
    lines = [ln for ln in out.stdout.decode().splitlines() if ln.startswith("{")]
    doc: dict[str, object] = json.loads(lines[-1])
    return doc


def start_mlflow_serve(tracking_uri: str, model_uri: str, logdir: Path, cpus: str | None = None,
                       deadline_s: float = 120.0, prefix: Sequence[str] = ()) -> Proc:
    port = free_port()
    cmd = [*prefix] + _pinned([MLFLOW, "models", "serve", "-m", model_uri, "-h", HOST, "-p", str(port),
                   "--env-manager", "local", "-w", "1"], cpus)
    env = _base_env()
    env[contract.ENV_TRACKING_URI] = tracking_uri
    p = Proc("mlflow-models-serve", cmd, env, logdir / f"mlflow-serve-{port}.log", port=port).start()
    try:
        p.wait_http(contract.ROUTE_PING, deadline_s)
    except BaseException:
        p.stop()
        raise
    return p


def replica_env(tracking_uri: str, name: str, alias: str, port: int, **overrides: str) -> dict[str, str]:
    env = _base_env()
    env.update({contract.ENV_TRACKING_URI: tracking_uri, contract.ENV_MODEL_NAME: name,
                contract.ENV_MODEL_ALIAS: alias, contract.ENV_BIND_HOST: HOST, contract.ENV_PORT: str(port),
                contract.ENV_INSTANCE_ID: f"replica-{port}", contract.ENV_POLL_INTERVAL_S: "1",
                contract.ENV_LOG_LEVEL: "info"})
    env.update(overrides)
    return env


def start_replica(tracking_uri: str, name: str, alias: str, logdir: Path, cpus: str | None = None,
                  wait_ready: bool = True, deadline_s: float = 120.0, prefix: Sequence[str] = (),
                  **overrides: str) -> Proc:
    """`prefix`: put before the command (a cgroup's, procstack/cgroup.py)."""
    port = free_port()
    env = replica_env(tracking_uri, name, alias, port, **overrides)
    cmd = [*prefix, *_pinned([PY, "-m", contract.REPLICA_MODULE], cpus)]
    p = Proc("replica", cmd, env, logdir / f"replica-{port}.log", port=port).start()
    if wait_ready:
        try:
            p.wait_http(contract.ROUTE_READY, deadline_s)
        except BaseException:
            p.stop()
            raise
    return p


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[Sequence[Proc]]:
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


@dataclass
class Answer:
    sent: float
    received: float
    status: int | None  # None: no HTTP answer (connection refused / closed before answering)
    version: str | None
    error: str | None = None


def run_load(base_url: str, body: bytes, threads: int, max_requests: int, max_seconds: float,
             stop: threading.Event | None = None) -> list[Answer]:
    """Bounded closed-loop load: `threads` keep-alive clients, each sending the same JSON body
    until `max_requests` in total, `max_seconds`, or `stop` is set. Returns every attempt."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(base_url)
    answers: list[Answer] = []
    lock = threading.Lock()
    budget = [max_requests]
    end = time.monotonic() + max_seconds
    stop = stop or threading.Event()

    def take() -> bool:
        with lock:
            if budget[0] <= 0 or stop.is_set() or time.monotonic() > end:
                return False
            budget[0] -= 1
            return True

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while take():
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname or HOST, u.port, timeout=30)
            t0 = time.monotonic()
            try:
                conn.request("POST", contract.ROUTE_INVOCATIONS, body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                a = Answer(t0, time.monotonic(), r.status, r.getheader(contract.HEADER_MODEL_VERSION))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                a = Answer(t0, time.monotonic(), None, None, repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)  # a refused connect would otherwise spin through the budget
            with lock:
                answers.append(a)
        if conn is not None:
            conn.close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max_seconds + 60)
    return answers
