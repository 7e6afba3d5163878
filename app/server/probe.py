"""`python -m app.server.probe`: exit 0 when this container's replica is ready (the image's
HEALTHCHECK, and the healthcheck the program declares). Reads where the replica listens from
the same variables the server does, and imports nothing heavy: it runs every few seconds."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping

from app import contract

_ANY_ADDRESS = ("", "0.0.0.0", "::")


def ready_url(env: Mapping[str, str]) -> str:
    """The replica's readiness URL as seen from inside its own network namespace."""
    host = env.get(contract.ENV_BIND_HOST, "").strip()
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    port = env.get(contract.ENV_PORT) or str(contract.REPLICA_PORT)
    return f"http://{host}:{port}{contract.ROUTE_READY}"


def main() -> int:
    try:
        with urllib.request.urlopen(ready_url(os.environ), timeout=3) as r:
            return 0 if r.status == 200 else 1
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
