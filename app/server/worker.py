"""One serving process of a replica of several: the HTTP server and model thread of a
one-process replica, fed and steered by the supervisor (supervisor.py).

Forked by the supervisor, so the imported libraries are shared with it (and with the other
workers) until written to. What differs from a replica of one process:

- It listens on nothing. The supervisor accepts each connection and hands it over (the
  descriptor, over this worker's control socket) to the worker with the fewest open
  connections; the worker serves it with uvicorn's own protocol, exactly as if it had
  accepted it.
- It does not poll the registry. The supervisor decides which version serves; this worker
  loads the versions it is told to (in its loader thread, as a one-process replica does) and
  reports. Which of its loaded versions serves is one integer per track on the board, set by
  the supervisor once every serving worker has loaded the new version, so a promotion
  reaches every process at the same request boundary.
- /health, /ready and /metrics describe the replica: the registry's state and the workers'
  list come from the supervisor's health document, the figures from the board and from the
  multiprocess metrics directory.

Control messages are JSON objects, one per SOCK_SEQPACKET message (a connection is the
message b"C" carrying its descriptor). Supervisor to worker: `load` (track, gen, version),
`keep` (track, gens: drop the others), `resolve` (id, track: the alias's version in the
registry). Worker to supervisor: `ready`, `loaded` (track, gen, ok, info or error),
`resolved` (id, version or error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from app.server import logs
from app.server import model as model_mod
from app.server.asgi import ReplicaApp
from app.server.board import (
    H_DOC_SEQ,
    H_DRAINING,
    MAX_WORKERS,
    TRACKS,
    W_CLOSED,
    W_OPENED,
    W_PENDING,
    W_PID,
    W_READY,
    W_SERVED,
    Board,
)
from app.server.config import Config
from app.server.manager import LoadError, RegistryState
from app.server.metrics import Metrics

log = logging.getLogger("app.server.worker")

HEALTH_DOC = "health.json"
METRICS_DIR = "metrics"
CONNECTION = b"C"
MAX_MESSAGE = 1 << 16


def send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendmsg([orjson.dumps(msg)])


class Place:
    """This worker's place in the replica: its slot on the board, and the replica-wide views
    that /health and /metrics need (asgi.ReplicaApp's `place`)."""

    def __init__(self, board: Board, index: int, run_dir: Path) -> None:
        self.board = board
        self.index = index
        self.slot = board.ints
        self.base = board.slot_base(index)
        self.suffix = f"-w{index}"
        self._doc_path = run_dir / HEALTH_DOC
        self._doc_seq = -1
        self._doc: dict[str, Any] = {}

    def replica_draining(self) -> bool:
        return self.board.ints[H_DRAINING] != 0

    def doc(self) -> dict[str, Any]:
        """The supervisor's health document, read again only when the board says it changed."""
        seq = self.board.ints[H_DOC_SEQ]
        if seq != self._doc_seq:
            try:
                self._doc = orjson.loads(self._doc_path.read_bytes())
                self._doc_seq = seq
            except (OSError, orjson.JSONDecodeError):
                pass  # being replaced right now: the previous one is still true enough
        return self._doc

    def total_pending(self) -> float:
        ints, total = self.board.ints, 0
        for i in range(MAX_WORKERS):
            base = self.board.slot_base(i)
            if ints[base + W_PID]:
                total += ints[base + W_PENDING]
        return float(total)

    def served(self, own: int) -> int:
        """Invocations the replica answered 200: the live workers' counts and the exited ones'."""
        ints, total = self.board.ints, int(self.doc().get("served_by_exited", 0))
        for i in range(MAX_WORKERS):
            base = self.board.slot_base(i)
            if ints[base + W_PID]:
                total += ints[base + W_SERVED]
        return total

    def worker_counts(self) -> dict[str, float]:
        workers = self.doc().get("workers", {})
        ints = self.board.ints
        serving = sum(1 for i in range(MAX_WORKERS) if ints[self.board.slot_base(i) + W_READY])
        return {"configured": float(workers.get("configured", 0)), "serving": float(serving)}

    def workers(self, pending: int, served: int) -> dict[str, Any]:
        workers = dict(self.doc().get("workers", {}))
        processes = []
        for p in workers.get("processes", []):
            live = self.board.slot(p["index"])
            p = {**p, "pending": live["pending"], "served": live["served"],
                 "connections": live["opened"] - live["closed"]}
            if p["index"] == self.index:
                p["answering"] = True
            processes.append(p)
        workers["processes"] = processes
        workers["serving"] = sum(1 for p in processes if p.get("state") == "serving")
        return workers


class WorkerTrack:
    """A model track as this worker sees it (asgi.ReplicaApp's `manager`): the versions it has
    loaded, by generation, and the one the board says serves."""

    def __init__(self, link: Link, track: str, alias: str) -> None:
        self.link = link
        self.track = track
        self.alias = alias
        self.models: dict[int, model_mod.LoadedModel] = {}
        self._ints = link.place.board.ints
        self._h = TRACKS[track]
        self._gen = -1
        self._cur: model_mod.LoadedModel | None = None
        link.tracks[track] = self

    @property
    def current(self) -> model_mod.LoadedModel | None:
        g = self._ints[self._h]
        if g != self._gen:
            self._gen = g
            self._cur = self.models.get(g)
        return self._cur

    def has_serving_version(self) -> bool:
        g = self._ints[self._h]
        return g == 0 or g in self.models

    def added(self, gen: int, model: model_mod.LoadedModel) -> None:
        self.models[gen] = model
        self._gen = -1  # re-read: the board may already name it

    def keep(self, gens: set[int]) -> None:
        for g in [g for g in self.models if g not in gens]:
            gone = self.models.pop(g)
            if gone.local_dir:
                shutil.rmtree(gone.local_dir, ignore_errors=True)
        self._gen = -1

    # -- what the supervisor knows, for /health ------------------------------------------------
    def _doc(self) -> dict[str, Any]:
        tracks: dict[str, dict[str, Any]] = self.link.place.doc().get("tracks", {})
        return tracks.get(self.track, {})

    @property
    def last_error(self) -> LoadError | None:
        err = self._doc().get("last_error")
        return LoadError(err["version"], err["message"], err["at"]) if err else None

    @property
    def alias_version(self) -> str | None:
        v = self._doc().get("alias_version")
        return str(v) if v is not None else None

    @property
    def registry(self) -> RegistryState:
        return RegistryState(**self._doc().get("registry", {}))

    def start(self) -> None:
        self.link.start()

    async def stop(self) -> None:
        self.link.stop()


class Link:
    """The worker's end of its control socket."""

    def __init__(self, sock: socket.socket, place: Place, cfg: Config) -> None:
        self.sock = sock
        self.place = place
        self.cfg = cfg
        self.tracks: dict[str, WorkerTrack] = {}
        self.server: Any = None  # the uvicorn server whose protocol serves handed-over connections
        self.ready = False
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: Any = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._registry = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._client: Any = None

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)
        # After the lifespan startup that called us: the batcher runs by then.
        loop.call_soon(self._maybe_ready)

    def stop(self) -> None:
        if self._loop is not None and self._started:
            self._started = False
            self._loop.remove_reader(self.sock.fileno())
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._registry.shutdown(wait=False, cancel_futures=True)

    def send(self, msg: dict[str, Any]) -> None:
        try:
            send(self.sock, msg)
        except BlockingIOError:
            # The supervisor reads continuously; a full socket means it is stuck, and it would
            # redo what this answers (a load, a poll) after its own timeout anyway.
            log.warning("control socket full; message dropped", extra={"op": msg.get("op")})
        except OSError:
            pass  # the supervisor is gone: we are being stopped

    # -- messages ---------------------------------------------------------------------------
    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 64)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:
                self._supervisor_gone()
                return
            if data == CONNECTION:
                for fd in fds:
                    self._connection(fd)
                continue
            for fd in fds:
                os.close(fd)
            try:
                self._message(orjson.loads(data))
            except Exception:  # noqa: BLE001 - a bad message must not stop the worker
                log.exception("control message failed", extra={"message": data[:200].decode(errors="replace")})

    def _supervisor_gone(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self._started = False
        log.error("supervisor gone; draining")
        if self.server is not None:
            self.server.handle_exit(signal.SIGTERM, None)

    def _message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "load":
            self._load(msg["track"], int(msg["gen"]), str(msg["version"]))
        elif op == "keep":
            self.tracks[msg["track"]].keep({int(g) for g in msg["gens"]})
        elif op == "resolve":
            self._resolve(int(msg["id"]), msg["track"])
        else:
            log.warning("unknown control message", extra={"op": op})

    def _load(self, track: str, gen: int, version: str) -> None:
        t = self.tracks[track]
        cfg = self.cfg
        assert self._loop is not None
        fut = self._loop.run_in_executor(self._loader, model_mod.load, cfg.model_name, version, t.alias, cfg.device,
                                         cfg.predict_kernels)

        def done(f: asyncio.Future[model_mod.LoadedModel]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.warning("model load failed", extra={"track": track, "version": version, "error": repr(exc)})
                self.send({"op": "loaded", "track": track, "gen": gen, "ok": False,
                           "error": f"loading {cfg.model_name} version {version} failed: {exc!r}"})
                return
            m = f.result()
            t.added(gen, m)
            self.send({"op": "loaded", "track": track, "gen": gen, "ok": True, "info": {
                "version": m.version, "flavor": m.flavor, "device": m.device, "loaded_at": m.loaded_at,
                "fast_kernel": m.fast.kernel_name if m.fast else None, "fast_path": m.fast is not None}})
            self._maybe_ready()

        fut.add_done_callback(done)

    def _resolve(self, rid: int, track: str) -> None:
        alias = self.tracks[track].alias
        assert self._loop is not None
        fut = self._loop.run_in_executor(self._registry, self._resolve_alias, alias)

        def done(f: asyncio.Future[str]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self.send({"op": "resolved", "id": rid, "error": str(exc)})
            else:
                self.send({"op": "resolved", "id": rid, "version": f.result()})

        fut.add_done_callback(done)

    def _resolve_alias(self, alias: str) -> str:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.cfg.tracking_uri)
        return str(self._client.get_model_version_by_alias(self.cfg.model_name, alias).version)

    def _maybe_ready(self) -> None:
        """Ask for connections once every track has the version the board says serves (at
        the replica's start, none serves yet: a worker then answers 503 until one loads, as a
        one-process replica does)."""
        if self.ready or not self._started or not all(t.has_serving_version() for t in self.tracks.values()):
            return
        self.ready = True
        self.place.board.ints[self.place.base + W_READY] = 1
        self.send({"op": "ready"})

    # -- connections ---------------------------------------------------------------------------
    def _connection(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        if self.server is None or self._loop is None:
            sock.close()
            return
        if self._protocol is None:
            self._protocol = _counted(self.server.config.http_protocol_class, self.place)
        server, proto = self.server, self._protocol

        def factory() -> asyncio.Protocol:
            return proto(config=server.config, server_state=server.server_state,  # type: ignore[no-any-return]
                         app_state=server.lifespan.state)

        self._loop.create_task(_serve_connection(self._loop, factory, sock))


async def _serve_connection(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol],
                            sock: socket.socket) -> None:
    try:
        await loop.connect_accepted_socket(factory, sock)
    except OSError as exc:  # the client left before we took it over
        log.debug("handed-over connection lost", extra={"error": repr(exc)})
        sock.close()


def _counted(base: type, place: Place) -> type:
    """The server's protocol class, counting this worker's open connections on the board
    (the supervisor gives new connections to the worker with the fewest)."""
    ints, opened, closed = place.board.ints, place.base + W_OPENED, place.base + W_CLOSED

    class Counted(base):  # type: ignore[misc]
        def connection_made(self, transport: Any) -> None:
            ints[opened] += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            ints[closed] += 1
            super().connection_lost(exc)

    return Counted


def run(cfg: Config, index: int, sock: socket.socket, board: Board, run_dir: Path,
        make_server: Callable[[Config, ReplicaApp], Any]) -> None:
    """The worker's life, in the forked child: returns when the server has stopped."""
    logs.setup(cfg.instance_id, cfg.log_level, worker=index)
    place = Place(board, index, run_dir)
    metrics = Metrics(cfg.instance_id, cfg.model_name, cfg.model_alias, shared_dir=run_dir / METRICS_DIR,
                      workers=place.worker_counts)
    link = Link(sock, place, cfg)
    primary = WorkerTrack(link, "primary", cfg.model_alias)
    compare = WorkerTrack(link, "compare", cfg.compare_alias) if cfg.compare_alias else None
    replica = ReplicaApp(cfg, manager=primary, metrics=metrics, place=place,  # type: ignore[arg-type]
                         compare_manager=compare)
    metrics.track_pending(place.total_pending)
    server = make_server(cfg, replica)
    link.server = server
    server.run(sockets=[])
