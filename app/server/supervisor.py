"""A replica of several serving processes: the supervisor (`MLSERVE_WORKERS` of 2 or more).

One process, the container's first, runs no model and serves no request itself. It

- imports what a worker needs, then forks the workers, so those libraries' memory is shared
  (copy-on-write) instead of paid again by each process (app/README.md has the figures);
- listens on the replica's port and hands each accepted connection to the ready worker with
  the fewest open connections (the descriptor goes over the worker's control socket). A
  shared listening socket would let the kernel decide, and a burst of connects (nginx
  opening its keep-alive pool, a load generator) then often lands on one process. It keeps
  a descriptor of each worker's end of that socket too, unread while the worker lives: the
  connections still queued there when a worker dies (a SIGKILLed process takes milliseconds
  to exit) were never its, and go to another worker instead of being reset;
- follows the alias for all of them: it polls (through a worker, which has the MLflow
  client), has every ready worker load a new version, and when all have it, moves the
  version that serves with one store on the board (board.py), so each process answers
  with the new version from the same moment on. A version one worker cannot load is not
  served by any (the replica reports `degraded`, as a one-process replica does);
- writes the health document every worker answers /health from, and the replica-wide
  gauges of /metrics (multiprocess mode, metrics.py);
- replaces a worker that exits unexpectedly: the new one is forked, loads the version
  that serves, and only then gets connections, so the replica stays ready meanwhile;
- on SIGTERM, marks the replica draining (every worker's /ready answers 503), stops
  accepting, and has every worker finish what it accepted, within the grace period.

The supervisor is single-threaded and never blocks (one selector loop): a fork from a
process with other threads can inherit a lock held by one of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import glob
import heapq
import importlib
import itertools
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.server.board import H_DOC_SEQ, H_DRAINING, MAX_WORKERS, TRACKS, W_CLOSED, Board
from app.server.config import Config
from app.server.manager import BACKOFF_MAX_S, BACKOFF_START_S, MLFLOW_CLIENT_ENV, AliasFollower

log = logging.getLogger("app.server.supervisor")

LISTEN_BACKLOG = 2048  # uvicorn's default
# A resolve asked of a worker is answered within MLflow's request timeout (manager.py) plus this.
RESOLVE_MARGIN_S = 5.0
# A worker that served this long before exiting restarts at once; quicker exits back off.
STABLE_AFTER_S = 60.0
RESTART_BACKOFF_MAX_S = 30.0
ACCEPT_BATCH = 64
PR_SET_PDEATHSIG = 1


@dataclass
class FastInfo:
    kernel_name: str | None


@dataclass
class Served:
    """What the supervisor knows of a version its workers serve (reported by the first to load it)."""

    version: str
    gen: int
    flavor: str
    device: str
    fast: FastInfo | None
    loaded_at: float


@dataclass
class Round:
    """A new version being loaded by every worker."""

    gen: int
    version: str
    started: float
    info: dict[str, Any] | None = None


@dataclass
class Worker:
    index: int
    pid: int
    sock: socket.socket
    # The worker's end of the control socket, held so that what is queued for it outlives it
    # (read only after it has exited: _exited).
    inbox: socket.socket
    pidfd: int
    started_at: float
    ready: bool = False
    sock_open: bool = True
    assigned: int = 0  # connections handed over (open = assigned - the board's closed count)
    loaded: dict[str, set[int]] = field(default_factory=dict)


@dataclass
class SlotHistory:
    restarts: int = 0
    quick_exits: int = 0  # exits in a row that came soon after a start
    last_exit: dict[str, Any] | None = None


class Track(AliasFollower):
    """One alias the replica follows: its own (`primary`), and a shadow's primary (`compare`)."""

    def __init__(self, name: str, alias: str, cfg: Config, metrics: Any) -> None:
        super().__init__(cfg, metrics)
        self.name = name
        self.alias = alias
        self.current: Served | None = None
        self.previous_gen = 0
        self.round: Round | None = None
        self.resolving: tuple[int, int] | None = None  # (request id, worker index)
        self.delay = BACKOFF_START_S
        self.poll_pending = True  # poll as soon as a worker can be asked

    def next_wait(self, ok: bool) -> float:
        """ModelManager.run's schedule: the interval after success, backoff after failure."""
        if ok:
            self.delay = BACKOFF_START_S
            return self.cfg.poll_interval_s
        wait = min(self.delay, self.cfg.poll_interval_s) if self.current is not None else self.delay
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)
        return wait

    def doc(self) -> dict[str, Any]:
        err = self.last_error
        reg = self.registry
        return {"alias": self.alias, "alias_version": self.alias_version,
                "last_error": {"version": err.version, "message": err.message, "at": err.at} if err else None,
                "registry": {"ok": reg.ok, "last_success_at": reg.last_success_at, "last_error": reg.last_error,
                             "last_error_at": reg.last_error_at, "failing_since": reg.failing_since,
                             "consecutive_failures": reg.consecutive_failures}}


def visible_gpus(env: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """The GPUs this container can use, as CUDA_VISIBLE_DEVICES entries: those it lists, or one
    per NVIDIA device node (the container runtime exposes the container's GPUs only)."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    nodes = [p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)]
    return [str(i) for i in range(len(nodes))]


def worker_count(cfg: Config, gpus: list[str]) -> int:
    if cfg.workers == 0:  # contract.WORKERS_PER_GPU
        return max(1, min(len(gpus), MAX_WORKERS))
    return cfg.workers


def _die_with_parent() -> None:
    """A worker must not outlive its supervisor (the replica's connections and port are gone
    with it): SIGTERM when the supervisor dies, so that it drains what it holds."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the control socket's end still stops it
        pass


def preload() -> None:
    """Import what every worker imports, before the first fork (see the module docstring)."""
    from app.server import model

    model.import_model_libraries()  # first: before MLflow (see there)
    import mlflow.pyfunc  # noqa: F401
    import mlflow.pyfunc.scoring_server  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import uvicorn.protocols.http.httptools_impl  # noqa: F401
    import uvloop  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401

    from app.server import worker  # noqa: F401

    # Loading a scikit-learn model in MLflow's format (skops) imports every estimator module
    # of scikit-learn (its list of trusted types): ~20 MiB more per worker when left to each.
    with contextlib.suppress(ImportError):
        from sklearn.utils.discovery import all_estimators

        all_estimators()
    # What the first load and request import besides (measured: the modules a worker had
    # imported after serving that the supervisor had not).
    for name in ("mlflow.tracking.request_header.registry", "narwhals._pandas_like.namespace",
                 "narwhals._pandas_like.dataframe", "pyarrow.pandas_compat", "email.policy"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def warn_if_processes_outnumber_cpus(workers: int) -> None:
    """Say so where the serving processes must take turns on fewer CPUs than there are of
    them (a cpuset, `replicaCpuSet`, or Kubernetes' static CPU manager): each turn costs CPU,
    measured at 15 % of the throughput with two processes on one CPU (README, *Serving
    processes per replica*). A quota alone does not do it: the processes run side by side,
    each throttled."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: nothing to tell
        return
    if workers > cpus:
        log.warning("more serving processes than CPUs this replica may run on: they take turns on them",
                    extra={"workers": workers, "cpus": cpus})


class Supervisor:
    def __init__(self, cfg: Config, make_server: Callable[..., Any]) -> None:
        from app.server import logs
        from app.server.metrics import Metrics, use_multiprocess_dir
        from app.server.worker import METRICS_DIR

        self.cfg = cfg
        self.make_server = make_server
        self.gpus = visible_gpus()
        self.n = worker_count(cfg, self.gpus)
        shm = Path("/dev/shm")
        self.run_dir = Path(tempfile.mkdtemp(prefix="mlserve-replica-", dir=shm if shm.is_dir() else None))
        self.metrics_dir = self.run_dir / METRICS_DIR
        self.metrics_dir.mkdir()
        self.board = Board(self.run_dir / "board", create=True)
        use_multiprocess_dir(self.metrics_dir)
        self.metrics = Metrics(cfg.instance_id, cfg.model_name, cfg.model_alias, shared_dir=self.metrics_dir)
        self.metrics.track_pending(lambda: 0.0)
        self.logs = logs
        self.tracks = {"primary": Track("primary", cfg.model_alias, cfg, self.metrics)}
        if cfg.compare_alias:
            # Not exposed: the replica's model gauges describe its own alias (as in one process).
            self.tracks["compare"] = Track("compare", cfg.compare_alias, cfg, None)
        self.workers: dict[int, Worker] = {}
        self.history = {i: SlotHistory() for i in range(self.n)}
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.listening = False
        self.draining = False
        self.drain_deadline = 0.0
        self.served_before = 0  # answered 200 by workers that have exited
        self.pending_left = 0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._rpc = itertools.count(1)
        self._gens = itertools.count(1)
        self._rr = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self.exit_code = 0

    # -- timers -----------------------------------------------------------------------------
    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def _run_timers(self) -> float | None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
            now = time.monotonic()
        return max(0.0, self._timers[0][0] - now) if self._timers else None

    # -- start and stop -----------------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _run(self) -> int:
        cfg = self.cfg
        self.listener = sock = socket.socket(socket.AF_INET6 if ":" in cfg.bind_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.bind_host, cfg.port))
        except OSError as exc:
            log.error("cannot listen", extra={"host": cfg.bind_host, "port": cfg.port, "error": repr(exc)})
            return 1
        sock.setblocking(False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        # Everything the workers import, imported once here and shared by the forks; then the
        # garbage collector leaves those objects alone (its scans would write to their pages).
        preload()
        gc.freeze()
        log.info("replica started", extra={"model_uri": cfg.model_uri, "port": cfg.port, "workers": self.n,
                                           "gpus": self.gpus or None, "max_batch_size": cfg.max_batch_size,
                                           "max_batch_wait_ms": cfg.max_batch_wait_ms, "max_queue": cfg.max_queue,
                                           "device_requested": cfg.device})
        warn_if_processes_outnumber_cpus(self.n)
        for i in range(self.n):
            self._spawn(i)
        self._write_doc()
        while True:
            timeout = self._run_timers()
            if self.draining:
                if not self.workers:
                    break
                left = self.drain_deadline - time.monotonic()
                if left <= 0:
                    self._kill_remaining()
                    continue
                timeout = left if timeout is None else min(timeout, left)
            for key, _ in self.sel.select(timeout):
                key.data()
        log.info("replica stopped", extra={"served": self.served_before, "pending": self.pending_left})
        return self.exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        pass  # the wakeup fd carries it to the loop

    def _on_wake(self) -> None:
        try:
            data = self._wake_r.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._drain(signum)

    def _drain(self, signum: int) -> None:
        if self.draining:
            # A second signal: stop at once, as uvicorn does on a second Ctrl-C.
            self._kill_remaining()
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + max(1.0, self.cfg.shutdown_grace_s - 0.25)
        self.board.ints[H_DRAINING] = 1
        log.info("draining: /ready answers 503, in-flight requests finish",
                 extra={"signal": signal.Signals(signum).name, "workers": len(self.workers)})
        self._write_doc()
        if self.listener is not None:
            if self.listening:
                self.sel.unregister(self.listener)
            self.listener.close()
            self.listener = None
        for w in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)

    def _kill_remaining(self) -> None:
        for w in list(self.workers.values()):
            log.error("serving process did not stop within the grace period; killing it",
                      extra={"worker": w.index, "pid": w.pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            self.exit_code = 1
        self.drain_deadline = time.monotonic() + 5.0  # their exits are still reaped

    # -- workers ------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        if self.draining:
            return
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        supervisor_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                parent.close()
                self._in_child()
                _die_with_parent()
                if os.getppid() != supervisor_pid:
                    os._exit(1)
                if self.gpus:
                    os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
                from app.server import worker

                worker.run(self.cfg, index, child, self.board, self.run_dir, self.make_server)
                code = 0
            except BaseException:  # noqa: BLE001 - never return into the supervisor's loop
                with contextlib.suppress(Exception):
                    log.exception("serving process failed")
            finally:
                with contextlib.suppress(Exception):
                    logging.shutdown()
                os._exit(code)
        parent.setblocking(False)
        w = Worker(index, pid, parent, child, os.pidfd_open(pid), time.monotonic(),
                   loaded={name: set() for name in self.tracks})
        self.workers[index] = w
        self.board.reset_slot(index, pid)
        self.sel.register(parent, selectors.EVENT_READ, lambda: self._from_worker(w))
        self.sel.register(w.pidfd, selectors.EVENT_READ, lambda: self._exited(w))
        log.info("serving process started", extra={"worker": index, "pid": pid})
        for track in self.tracks.values():
            if track.current is not None:
                self._send(w, {"op": "load", "track": track.name, "gen": track.current.gen,
                               "version": track.current.version})
            if track.round is not None:
                self._send(w, {"op": "load", "track": track.name, "gen": track.round.gen,
                               "version": track.round.version})

    def _in_child(self) -> None:
        """In a fresh fork: drop everything of the supervisor's (signal plumbing, sockets,
        the selector) so that the worker's exit or signals cannot reach the supervisor's."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
        for s in (self._wake_r, self._wake_w, self.listener):
            if s is not None:
                s.close()
        for w in self.workers.values():
            w.sock.close()
            w.inbox.close()
            os.close(w.pidfd)

    def _exited(self, w: Worker) -> None:
        self.sel.unregister(w.pidfd)
        if w.sock_open:
            self.sel.unregister(w.sock)
        os.close(w.pidfd)
        w.sock.close()
        _, status = os.waitpid(w.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        del self.workers[w.index]
        self._hand_on_unread(w)
        slot = self.board.slot(w.index)
        self.served_before += slot["served"]
        self.pending_left += slot["pending"]
        self.board.reset_slot(w.index, 0)
        from app.server.metrics import archive_dead

        try:
            archive_dead(self.metrics_dir, w.pid)
        except Exception as exc:  # noqa: BLE001 - the metrics of one process are not worth the replica
            log.warning("metrics of an exited process not archived", extra={"pid": w.pid, "error": repr(exc)})
        if self.draining:
            if code not in (0, -signal.SIGTERM):
                self.exit_code = 1
            return
        hist = self.history[w.index]
        ran = time.monotonic() - w.started_at
        hist.restarts += 1
        hist.quick_exits = 0 if ran >= STABLE_AFTER_S else hist.quick_exits + 1
        hist.last_exit = {"pid": w.pid, "code": code, "at": time.time(), "after_s": round(ran, 3),
                          "signal": signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None}
        self.metrics.worker_restarts.inc()
        delay = 0.0 if hist.quick_exits <= 1 else min(BACKOFF_START_S * 2 ** (hist.quick_exits - 2),
                                                      RESTART_BACKOFF_MAX_S)
        log.error("serving process exited; replacing it", extra={"worker": w.index, "pid": w.pid, "exit": code,
                                                                 "ran_s": round(ran, 3), "restart_in_s": delay})
        for track in self.tracks.values():
            if track.resolving is not None and track.resolving[1] == w.index:
                track.resolving = None  # ask another worker, not a registry failure
                track.poll_pending = True
                self.later(0, lambda t=track: self._poll(t))  # type: ignore[misc]
            self._check_round(track)
        self._write_doc()
        self.later(delay, lambda: self._respawn(w.index))

    def _hand_on_unread(self, w: Worker) -> None:
        """The connections handed to an exited worker that it never received: their requests are
        still unread, so another worker serves them (or, when draining, they close)."""
        from app.server.worker import CONNECTION, MAX_MESSAGE

        unread = 0
        while True:
            try:
                # MSG_DONTWAIT: the descriptor shares its blocking mode with the worker's copy.
                data, fds, _, _ = socket.recv_fds(w.inbox, MAX_MESSAGE, 64, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("control socket of an exited process unreadable", extra={"error": repr(exc)})
                break
            if not data and not fds:
                break
            for fd in fds:
                conn = socket.socket(fileno=fd)
                if data == CONNECTION and not self.draining:
                    unread += 1
                    self._dispatch(conn)
                else:
                    conn.close()
        w.inbox.close()
        if unread:
            log.warning("connections the exited process never received handed to another",
                        extra={"worker": w.index, "connections": unread})

    def _respawn(self, index: int) -> None:
        try:
            self._spawn(index)
        except OSError as exc:  # fork refused (memory, process limit): the replica goes on with fewer
            log.error("cannot start a serving process; trying again", extra={"worker": index, "error": repr(exc)})
            self.later(RESTART_BACKOFF_MAX_S, lambda: self._respawn(index))

    def _send(self, w: Worker, msg: dict[str, Any]) -> bool:
        from app.server.worker import send

        try:
            send(w.sock, msg)
            return True
        except OSError as exc:  # dying, or its socket is full: its exit is handled by _exited
            log.warning("control message not delivered", extra={"worker": w.index, "op": msg.get("op"),
                                                                "error": repr(exc)})
            return False

    def _from_worker(self, w: Worker) -> None:
        from app.server.worker import MAX_MESSAGE

        while True:
            try:
                data = w.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                # Unreadable (we hold its end, so no end-of-file comes while it lives): take
                # it as exiting; the pidfd tells when it is gone.
                self.sel.unregister(w.sock)
                w.sock_open = False
                w.ready = False
                return
            try:
                msg = orjson.loads(data)
                self._message(w, msg)
            except Exception:  # noqa: BLE001 - a bad message must not stop the replica
                log.exception("worker message failed", extra={"worker": w.index})

    def _message(self, w: Worker, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ready":
            w.ready = True
            log.info("serving process ready", extra={"worker": w.index, "pid": w.pid,
                                                     "after_s": round(time.monotonic() - w.started_at, 3)})
            if not self.listening and self.listener is not None:
                self.listener.listen(LISTEN_BACKLOG)
                self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
                self.listening = True
            for track in self.tracks.values():
                if track.poll_pending and track.resolving is None and track.round is None:
                    self._poll(track)
                self._check_round(track)
            self._write_doc()
        elif op == "loaded":
            self._loaded(w, self.tracks[msg["track"]], int(msg["gen"]), msg)
        elif op == "resolved":
            self._resolved(w, int(msg["id"]), msg)

    # -- connections ---------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, a connection reset while queued...
                log.warning("accept failed", extra={"error": repr(exc)})
                return
            self._dispatch(conn)

    def _dispatch(self, conn: socket.socket) -> None:
        from app.server.worker import CONNECTION

        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready = [w for w in self.workers.values() if w.ready]
        if ready:
            ints = self.board.ints
            self._rr = (self._rr + 1) % len(ready)
            ready = ready[self._rr:] + ready[:self._rr]  # ties go round
            ready.sort(key=lambda w: w.assigned - ints[self.board.slot_base(w.index) + W_CLOSED])
            for w in ready:
                try:
                    socket.send_fds(w.sock, [CONNECTION], [conn.fileno()])
                except OSError:
                    continue
                w.assigned += 1
                break
        # Ours is closed either way; with no worker to take it, the client sees it closed at
        # once (nginx then tries another replica) instead of waiting in the backlog.
        conn.close()

    # -- following the alias -------------------------------------------------------------------
    def _poll(self, track: Track) -> None:
        if self.draining or track.resolving is not None or track.round is not None:
            return
        ready = [w for w in self.workers.values() if w.ready]
        if not ready:
            track.poll_pending = True  # when a worker is ready
            return
        track.poll_pending = False
        self._rr = (self._rr + 1) % len(ready)
        w = ready[self._rr]
        rid = next(self._rpc)
        track.resolving = (rid, w.index)
        if not self._send(w, {"op": "resolve", "id": rid, "track": track.name}):
            track.resolving = None
            self.later(BACKOFF_START_S, lambda: self._poll(track))
            return
        timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_CLIENT_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
        self.later(timeout + RESOLVE_MARGIN_S, lambda: self._resolve_timeout(track, rid, w.index))

    def _resolve_timeout(self, track: Track, rid: int, index: int) -> None:
        if track.resolving is not None and track.resolving[0] == rid:
            track.resolving = None
            self._poll_failed(track, f"cannot resolve {self.cfg.model_name}@{track.alias}: serving process {index} "
                                     "did not answer in time")

    def _poll_failed(self, track: Track, message: str) -> None:
        track._registry_failed(message)
        track._fail(None, message)
        self._write_doc()
        self.later(track.next_wait(False), lambda: self._poll(track))

    def _resolved(self, w: Worker, rid: int, msg: dict[str, Any]) -> None:
        track = next((t for t in self.tracks.values() if t.resolving and t.resolving[0] == rid), None)
        if track is None:
            return  # answered after its timeout
        track.resolving = None
        if "error" in msg:
            self._poll_failed(track, f"cannot resolve models:/{self.cfg.model_name}@{track.alias}: {msg['error']}")
            return
        version = str(msg["version"])
        track._registry_answered()
        track.alias_version = version
        cur = track.current
        if cur is not None and cur.version == version:
            track.last_error = None
            self._write_doc()
            self.later(track.next_wait(True), lambda: self._poll(track))
            return
        gen = next(self._gens)
        track.round = Round(gen, version, time.monotonic())
        log.info("loading model version", extra={"model": self.cfg.model_name, "version": version,
                                                  "track": track.name, "workers": len(self.workers),
                                                  "serving_version": cur.version if cur else None})
        for other in self.workers.values():
            self._send(other, {"op": "load", "track": track.name, "gen": gen, "version": version})
        self._write_doc()
        self._check_round(track)

    def _loaded(self, w: Worker, track: Track, gen: int, msg: dict[str, Any]) -> None:
        rnd = track.round
        keep = {track.current.gen if track.current else 0, track.previous_gen, rnd.gen if rnd else 0}
        if msg.get("ok"):
            if gen not in keep:  # a round given up on while this worker was still loading
                self._send(w, {"op": "keep", "track": track.name, "gens": sorted(keep - {0})})
                return
            w.loaded[track.name].add(gen)
            if rnd is not None and gen == rnd.gen and rnd.info is None:
                rnd.info = msg.get("info")
            self._check_round(track)
            return
        error = str(msg.get("error"))
        if rnd is not None and gen == rnd.gen and w.ready:
            # A version one serving process cannot load is served by none.
            track.round = None
            track._fail(rnd.version, f"serving process {w.index}: {error}")
            for other in self.workers.values():
                self._send(other, {"op": "keep", "track": track.name, "gens": sorted(keep - {0, rnd.gen})})
            self._write_doc()
            self.later(track.next_wait(False), lambda: self._poll(track))
        elif not w.ready and w.index in self.workers:
            # A starting worker that could not load what serves (the registry may be away):
            # it asks again after a while, and takes no connections meanwhile.
            log.warning("starting process could not load the serving version; retrying",
                        extra={"worker": w.index, "error": error})
            self.later(min(self.cfg.poll_interval_s, RESTART_BACKOFF_MAX_S), lambda: self._reload(w, track, gen))

    def _reload(self, w: Worker, track: Track, gen: int) -> None:
        if self.workers.get(w.index) is not w or w.ready:
            return
        for g, v in ((track.current.gen, track.current.version) if track.current else (0, ""),
                     (track.round.gen, track.round.version) if track.round else (0, "")):
            if g and g not in w.loaded[track.name]:
                self._send(w, {"op": "load", "track": track.name, "gen": g, "version": v})

    def _check_round(self, track: Track) -> None:
        rnd = track.round
        if rnd is None or rnd.info is None:
            return
        ready = [w for w in self.workers.values() if w.ready]
        if not ready or any(rnd.gen not in w.loaded[track.name] for w in ready):
            return
        info = rnd.info
        new = Served(rnd.version, rnd.gen, info["flavor"], info["device"],
                     FastInfo(info["fast_kernel"]) if info["fast_path"] else None, info["loaded_at"])
        previous = track.current
        # The swap, for every process at once: from the next request on, each uses `gen`.
        self.board.ints[TRACKS[track.name]] = rnd.gen
        track.current = new
        track.previous_gen = previous.gen if previous else 0
        track.round = None
        track._swapped(new, previous, time.monotonic() - rnd.started)
        # Each keeps the version just replaced (it may still be finishing requests); older go.
        for w in self.workers.values():
            self._send(w, {"op": "keep", "track": track.name, "gens": sorted({rnd.gen, track.previous_gen} - {0})})
            w.loaded[track.name] &= {rnd.gen, track.previous_gen}
        self._write_doc()
        self.later(track.next_wait(True), lambda: self._poll(track))

    # -- health ------------------------------------------------------------------------------
    def _write_doc(self) -> None:
        procs = []
        for i in range(self.n):
            w = self.workers.get(i)
            hist = self.history[i]
            state = "stopped" if self.draining and w is None else (
                "serving" if w is not None and w.ready else "starting" if w is not None else "restarting")
            procs.append({"index": i, "pid": w.pid if w else None, "state": state,
                          "restarts": hist.restarts, "last_exit": hist.last_exit})
        doc = {"tracks": {name: t.doc() for name, t in self.tracks.items()},
               "workers": {"configured": self.n, "restarts": sum(h.restarts for h in self.history.values()),
                           "processes": procs},
               # Answered 200 by workers that have exited (the live ones' counts are on the board).
               "served_by_exited": self.served_before}
        path = self.run_dir / "health.json"
        tmp = self.run_dir / "health.json.tmp"
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, path)
        self.board.ints[H_DOC_SEQ] += 1


def run(cfg: Config, make_server: Callable[..., Any], after_drain: Callable[[], None] = lambda: None) -> int:
    """The replica, as a supervisor of `cfg.workers` serving processes; `after_drain` runs once
    every worker has stopped after a stop signal (the one-process replica's linger)."""
    sup = Supervisor(cfg, make_server)
    try:
        code = sup.run()
        if sup.draining:
            after_drain()
        return code
    except Exception:
        log.exception("supervisor failed")
        for w in sup.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)
        return 1
    finally:
        sys.stdout.flush()
