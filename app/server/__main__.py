"""`python -m app.server`: one replica process (one worker; replicas scale by containers)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import FrameType

import uvicorn

from app.server import config as config_mod
from app.server import logs, model
from app.server.asgi import ReplicaApp
from app.server.manager import bound_mlflow_client
from app.server.protocol import ReplicaHttpProtocol

log = logging.getLogger("app.server")

# Longer than any upstream keepalive_timeout nginx might use (default 60 s): if the
# replica closed an idle connection first, nginx could send a POST into a closing
# socket, and POSTs are not retried on another replica.
KEEPALIVE_S = 75


class _Server(uvicorn.Server):
    """uvicorn, with readiness dropped the moment SIGTERM/SIGINT arrives."""

    def __init__(self, config: uvicorn.Config, replica: ReplicaApp, grace_s: float) -> None:
        super().__init__(config)
        self.replica = replica
        self.grace_s = grace_s
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.replica.begin_drain()
        if self._watchdog is None:
            # The container is killed at the end of the grace period anyway; exiting
            # ourselves first keeps the exit (and its log line) ours.
            self._watchdog = threading.Timer(self.grace_s, _hard_exit)
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)


def _hard_exit() -> None:
    log.error("shutdown grace period exhausted; exiting with requests still open")
    logging.shutdown()
    os._exit(1)


def main() -> int:
    try:
        cfg = config_mod.from_env()
    except config_mod.ConfigError as exc:
        print(f"app.server: configuration error: {exc}", file=sys.stderr)
        return 2
    bound_mlflow_client()
    logs.setup(cfg.instance_id, cfg.log_level)
    model.import_model_libraries()  # first: before anything imports MLflow
    if cfg.workers != 1:
        # Several serving processes under a supervisor (supervisor.py): each runs make_server's.
        from app.server import supervisor

        return supervisor.run(cfg, make_server, after_drain=lambda: _linger(min(LINGER_S, cfg.shutdown_grace_s - 1.0)))
    replica = ReplicaApp(cfg)
    server = make_server(cfg, replica)
    server.run()
    if server.should_exit and server._watchdog is not None:  # stopped by a signal, not crashed
        _linger(min(LINGER_S, cfg.shutdown_grace_s - 1.0))
    return 0


def make_server(cfg: config_mod.Config, replica: ReplicaApp) -> _Server:
    return _Server(server_config(cfg, replica), replica, max(1.0, cfg.shutdown_grace_s - 0.25))


def server_config(cfg: config_mod.Config, replica: ReplicaApp) -> uvicorn.Config:
    # uvicorn stops accepting, lets open requests finish for this long, then runs the
    # lifespan shutdown; a little of the grace period is kept for that and for exiting.
    drain_s = max(0.5, cfg.shutdown_grace_s - 1.0)
    return uvicorn.Config(
        replica,
        host=cfg.bind_host,
        port=cfg.port,
        loop="uvloop",
        # httptools, with each response's head and body in one write, and invocations
        # answered without an ASGI cycle (protocol.py).
        http=ReplicaHttpProtocol,
        lifespan="on",
        workers=1,
        access_log=False,
        log_config=None,
        server_header=False,
        # Nothing here uses the client address; nginx's X-Forwarded-For stays in its own log.
        proxy_headers=False,
        date_header=False,
        timeout_keep_alive=KEEPALIVE_S,
        timeout_graceful_shutdown=int(drain_s) if drain_s >= 1 else 1,
    )


# After a stop signal uvicorn closes the listening socket at once and exits when the last
# request is answered, which can take milliseconds. Once the process exits, Docker's DNS drops
# the address, but nginx keeps it until its next lookup (up to its resolver's `valid`), and a
# connect to an address nobody holds waits for the whole connect timeout instead of failing.
# Held a little longer, the address refuses connections instead: nginx retries elsewhere at
# the cost of a retry and marks this replica failed for its fail_timeout, which covers the
# lookup delay after the exit. A second is a few hundred requests at the loads this serves.
LINGER_S = 1.0


def _linger(seconds: float) -> None:
    if seconds > 0:
        log.info("stopped listening; holding the address before exit", extra={"seconds": round(seconds, 2)})
        time.sleep(seconds)  # not a wait for a service: the process only keeps its address taken


if __name__ == "__main__":
    sys.exit(main())
