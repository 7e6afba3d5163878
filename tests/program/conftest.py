"""Fixtures of the program's mock tests: each stack file run once per session, under mocks."""

from __future__ import annotations

import pytest

from mockrun import DeclaredStack, run_program


def declared(stack: str) -> DeclaredStack:
    result = run_program(stack)
    # A mock test must be able to fail: a program that registered nothing passes nothing.
    assert result.containers(), f"stack {stack} registered no container"
    return result


@pytest.fixture(scope="session")
def dev() -> DeclaredStack:
    return declared("dev")


@pytest.fixture(scope="session")
def prod() -> DeclaredStack:
    return declared("prod")


@pytest.fixture(scope="session", params=["dev", "prod"])
def any_stack(request: pytest.FixtureRequest, dev: DeclaredStack, prod: DeclaredStack) -> DeclaredStack:
    return {"dev": dev, "prod": prod}[request.param]
