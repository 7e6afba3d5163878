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


def test_ready_is_in_rotation_once_an_invocation_was_answered() -> None:
    from app.server.probe import in_rotation

    loaded = {"model": {"loaded_at": 1000.0}}
    assert not in_rotation({**loaded, "served": 0}, grace_s=16, now=1010.0)
    assert in_rotation({**loaded, "served": 1}, grace_s=16, now=1000.5)


def test_without_traffic_rotation_is_assumed_after_the_grace() -> None:
    from app.server.probe import in_rotation

    loaded = {"model": {"loaded_at": 1000.0}, "served": 0}
    assert not in_rotation(loaded, grace_s=16, now=1015.9)
    assert in_rotation(loaded, grace_s=16, now=1016.0)
    assert not in_rotation({"model": {"loaded_at": None}, "served": 0}, grace_s=16, now=5000.0)


def test_no_grace_means_ready_is_enough() -> None:
    from app.server.probe import in_rotation

    assert in_rotation({"model": {"loaded_at": None}, "served": 0}, grace_s=0, now=0.0)
