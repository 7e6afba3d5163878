"""The replica as it was before app/server/protocol.py: uvicorn's own httptools protocol, which
sends a response's head and body in two writes (and takes every request through its ASGI
cycle: benchmarks/replica_asgi_path.py keeps the one write and drops only the direct path).
For replica_bench.py's side-by-side figure (`--only ours,ours-2w`) and as the replica whose
answers a kill can truncate (tests/app/test_replica_kill.py).

Run as `python -m benchmarks.replica_two_writes`, configured like `python -m app.server`.
"""

from __future__ import annotations

import sys

import uvicorn

from app.server import __main__ as replica_main
from app.server import config as config_mod
from app.server.asgi import ReplicaApp

_replica_config = replica_main.server_config


def _two_writes(cfg: config_mod.Config, replica: ReplicaApp) -> uvicorn.Config:
    config = _replica_config(cfg, replica)
    config.http = "httptools"
    return config


if __name__ == "__main__":
    replica_main.server_config = _two_writes
    sys.exit(replica_main.main())
