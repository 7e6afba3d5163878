"""app/server/probe.py: the image's HEALTHCHECK command."""

from __future__ import annotations

import subprocess
import sys

from app import contract

from .helpers import ROOT


def test_probe_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "app.server.probe"], cwd=ROOT, capture_output=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", contract.ENV_PORT: str(port)})
    assert out.returncode == 1
