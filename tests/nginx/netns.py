"""Run a live nginx scenario script where it can bind Docker's DNS address (127.0.0.11:53)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from nginx.render import RESOLVER_ADDRESS


def isolated_command(script: Path, *args: str) -> list[str] | None:
    """The command running `script` in a fresh network namespace when we may (nothing it binds can
    collide with a local stack, nothing is left behind), else in ours if 127.0.0.11:53 is free;
    None when neither is possible."""
    command = [sys.executable, str(script), *args]
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
        if probe.returncode == 0:
            return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((RESOLVER_ADDRESS, 53))
    except OSError:
        return None
    return command
