from __future__ import annotations

import pytest

from mockrun import DeclaredStack, run_program


@pytest.fixture(scope="session")
def declared() -> DeclaredStack:
    """The dev stack with three replicas weighted 1, 2, 2, as the program declares it."""
    return run_program("dev", {"replicas": 3, "weights": [1, 2, 2]})
