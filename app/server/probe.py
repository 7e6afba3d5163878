"""`python -m app.server.probe`: exit 0 when this container's replica is ready and in rotation
(the image's HEALTHCHECK, and the healthcheck the program declares). Reads where the replica
listens from the same variables the server does, and imports nothing heavy: it runs every few
seconds.

Ready is not yet in rotation. Docker's DNS names a container from its start, so nginx sends it
requests while it loads; the 503s mark it failed for the balancer's fail_timeout, and it gets
traffic again only when that runs out. A rollout that took "healthy" for "in rotation" would
stop the next replica meanwhile. So with MLSERVE_ROTATION_GRACE_S set (the program sets it to
the balancer's fail_timeout plus its DNS refresh period), healthy means ready and either an
invocation already answered (the balancer routes here) or a model loaded at least that long ago
(with no traffic at all, nothing can prove rotation and nothing is lost by waiting that long).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from app import contract

_ANY_ADDRESS = ("", "0.0.0.0", "::")


def base_url(env: Mapping[str, str]) -> str:
    """The replica's URL as seen from inside its own network namespace."""
    host = env.get(contract.ENV_BIND_HOST, "").strip()
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    port = env.get(contract.ENV_PORT) or str(contract.REPLICA_PORT)
    return f"http://{host}:{port}"


def ready_url(env: Mapping[str, str]) -> str:
    """The replica's readiness URL as seen from inside its own network namespace."""
    return base_url(env) + contract.ROUTE_READY


def in_rotation(health: Mapping[str, Any], grace_s: float, now: float) -> bool:
    """True once the replica answered an invocation, or its model loaded `grace_s` ago."""
    if grace_s <= 0 or int(health.get("served") or 0) > 0:
        return True
    loaded_at = (health.get("model") or {}).get("loaded_at")
    return loaded_at is not None and now - float(loaded_at) >= grace_s


def main() -> int:
    env = os.environ
    try:
        with urllib.request.urlopen(ready_url(env), timeout=3) as r:
            if r.status != 200:
                return 1
        grace_s = float(env.get(contract.ENV_ROTATION_GRACE_S) or 0)
        if grace_s > 0:
            with urllib.request.urlopen(base_url(env) + contract.ROUTE_HEALTH, timeout=3) as r:
                health = json.loads(r.read())
            if not in_rotation(health, grace_s, time.time()):
                print("ready, not yet in rotation: no invocation answered yet", file=sys.stderr)
                return 1
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
