"""The stack on a real Docker engine: a stand-in for `pulumi up` (test and local-run tooling).

The Pulumi CLI and its provider plugins cannot be had where this project is tested, and no
registry is reachable. This package takes the resources the program declares under mocks
(`mockrun`) and applies them through the Docker API as pulumi-docker would (`apply`, `mapping`,
`build`), after building every image a registry would serve from Debian's packages and PyPI
(`standins`). The program never imports it. Usage: `python -m enginestack --help`.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator


@contextlib.contextmanager
def stack_lock(stack: str) -> Iterator[None]:
    """One user of a stack's names on this engine at a time (tests, report, a local run)."""
    with open(f"/tmp/mlserve-engine-{stack}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
