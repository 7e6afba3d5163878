"""The replica with every request on uvicorn's ASGI cycle, as before ReplicaHttpProtocol
answered invocations without it (app/server/protocol.py): head and body still in one write.
Only for replica_bench.py's side-by-side figure (`--only ours,ours-asgi`).

Run as `python -m benchmarks.replica_asgi_path`, configured like `python -m app.server`.
"""

from __future__ import annotations

import sys

import uvicorn

from app.server import __main__ as replica_main
from app.server import config as config_mod
from app.server.asgi import ReplicaApp
from app.server.protocol import OneWriteHttpToolsProtocol

_replica_config = replica_main.server_config


def _asgi_only(cfg: config_mod.Config, replica: ReplicaApp) -> uvicorn.Config:
    config = _replica_config(cfg, replica)
    config.http = OneWriteHttpToolsProtocol
    return config


if __name__ == "__main__":
    replica_main.server_config = _asgi_only
    sys.exit(replica_main.main())
