"""Run the Pulumi program under mocks and return what it declared.

The single harness used by the mock unit tests, the local stack runner, the
policy tests and the mock-run benchmark: they all look at the resources the
program registers instead of restating them.

    from mockrun import run_program
    stack = run_program("dev", {"replicas": 5})
    stack.containers()            # docker:index/container:Container resources
    stack.by_name("replica-0").inputs["envs"]
    stack.outputs["entryUrl"].value

Each call gets a fresh mock monitor, a fresh root stack and fresh config, so it
can be called many times in one process. Config comes from Pulumi.yaml's defaults,
then Pulumi.<stack>.yaml, then `overrides` (an override of None removes the key), encoded
the way the Pulumi CLI hands config to a Python program: strings as they are,
everything else as JSON.
"""

from __future__ import annotations

from .harness import (
    CONTAINER as CONTAINER_TYPE,
)
from .harness import (
    PROJECT_ROOT,
    DeclaredResource,
    DeclaredStack,
    OutputValue,
    RunResult,
    attempt,
    read_stack_config,
    run_program,
)

__all__ = [
    "CONTAINER_TYPE",
    "PROJECT_ROOT",
    "DeclaredResource",
    "DeclaredStack",
    "OutputValue",
    "RunResult",
    "attempt",
    "read_stack_config",
    "run_program",
]
