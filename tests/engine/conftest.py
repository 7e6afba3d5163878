"""The dev-shaped test stack (Pulumi.enginetest.yaml) on a real Docker engine, for the session.

Brought up with `enginestack` (the stand-in for `pulumi up`) on a free loopback port and taken
down afterwards with everything it made: containers, network, volumes and the two app image tags
(the stand-in base images stay cached, see README). No engine answering skips these tests, except
in CI (CI=true), where scripts/test.sh has started one and a missing engine is a failure.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from stackconfig.names import LABEL_ROLE, LABEL_STACK

STACK = "enginetest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def engine() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable engine
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Docker engine answers ({exc}); `bash scripts/engine.sh start` starts one")
    return client


class Running:
    """The stack under test: the applier, its config and helpers to read the engine."""

    def __init__(self, engine: Any) -> None:
        from enginestack.apply import EngineStack

        self.engine = engine
        self.stack = EngineStack(STACK, engine, log=lambda line: print(line, flush=True))
        self.port = free_port()
        self.config: dict[str, object | None] = {"balancerPort": self.port}
        self.entry = f"http://127.0.0.1:{self.port}"

    def up(self, **changes: object) -> Any:
        self.config.update(changes)
        return self.stack.up(self.config)

    def containers(self, role: str | None = None) -> list[Any]:
        found = [c for c in self.stack.running() if role is None or (c.labels or {}).get(LABEL_ROLE) == role]
        for c in found:
            c.reload()
        return sorted(found, key=lambda c: c.name)

    def container(self, name: str) -> Any:
        c = self.engine.containers.get(f"mlserve-{STACK}-{name}")
        c.reload()
        return c


# One stack for every engine module (bringing one up builds the app images and starts every
# service: minutes on two cores); each test states the config it needs through `up`.
@pytest.fixture(scope="session")
def running(engine: Any) -> Iterator[Running]:
    from enginestack import stack_lock, standins

    standins.build_standins(engine, log=lambda line: None)
    with stack_lock(STACK):
        stack = Running(engine)
        # MLSERVE_ENGINE_KEEP=1 (while writing tests): reuse a stack left running, and leave it.
        keep = os.environ.get("MLSERVE_ENGINE_KEEP") == "1"
        if keep:
            stack.port = int(os.environ.get("MLSERVE_ENGINE_PORT", "18080"))
            stack.config["balancerPort"] = stack.port
            stack.entry = f"http://127.0.0.1:{stack.port}"
        else:
            stack.stack.down(purge=True)  # leftovers of an interrupted run
        try:
            stack.up()
            yield stack
        finally:
            if not keep:
                _remove_left_behind(stack)
                stack.stack.down(purge=True, remove_images=True)


def _remove_left_behind(stack: Running) -> None:
    """Containers of the app images outside the stack (the tests run the trainer by hand), were
    one left behind (a run interrupted, a builder's intermediate container): they would keep
    `down` from removing the images. Named in the output, so that a leak shows."""
    from docker.errors import NotFound

    from mockrun import run_program

    for image in run_program(STACK, stack.config).images():
        try:
            found = stack.engine.containers.list(all=True, filters={"ancestor": str(image.inputs["imageName"])})
        except NotFound:
            continue
        for c in found:
            if (c.labels or {}).get(LABEL_STACK) != STACK:
                print(f"removing {c.name} ({c.status}, {c.attrs['Config'].get('Cmd')}): left behind", flush=True)
                c.remove(force=True)
