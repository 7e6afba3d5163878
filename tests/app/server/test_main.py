"""app/server/__main__.py: the process entry point."""

from __future__ import annotations

import subprocess
import sys

from app import contract

from .helpers import BASE_ENV, ROOT


def test_server_exits_2_with_the_bad_variable_named() -> None:
    out = subprocess.run([sys.executable, "-m", contract.REPLICA_MODULE], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", **BASE_ENV, contract.ENV_DEVICE: "tpu"}, timeout=120)
    assert out.returncode == 2 and contract.ENV_DEVICE in out.stderr
