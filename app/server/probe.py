"""`python -m app.server.probe`: exit 0 when this container's replica is ready (the image's
HEALTHCHECK). Reads the port the replica listens on from the same variable the server
does, and imports nothing heavy: it runs every few seconds."""

from __future__ import annotations

import os
import sys
import urllib.request

from app import contract


def main() -> int:
    port = os.environ.get(contract.ENV_PORT) or str(contract.REPLICA_PORT)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{contract.ROUTE_READY}", timeout=3) as r:
            return 0 if r.status == 200 else 1
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
