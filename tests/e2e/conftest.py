"""One live local stack for the whole e2e session, always taken down (and purged) at the end.

The stack is the dev stack with 3 replicas weighted 1, 1, 3 (overrides, as `pulumi config set`
would make them), in a temporary state directory. The tests run in file order and each leaves
the stack serving with every declared replica up, so the next can build on it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from procstack.stack import LocalStack

START_OVERRIDES = {"replicas": 3, "weights": [1, 1, 3]}


def _missing_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "the local stack binds 127.0.0.11:53 and edits /etc/hosts: run as root"
    for binary in ("mariadbd", "mariadb-install-db"):
        if not (shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}") or os.path.exists(f"/usr/bin/{binary}")):
            return f"{binary} missing: apt-get install mariadb-server (scripts/setup.sh does)"
    return None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    problem = _missing_prerequisites()
    if problem:
        # In CI the set-up script installs everything: a missing piece there is a failure.
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    ls = LocalStack("dev", tmp_path_factory.mktemp("proc-stack"))
    try:
        ls.up(START_OVERRIDES)
        yield ls
    finally:
        ls.down(purge=True)
