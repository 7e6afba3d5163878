"""The program's declared resources (under mocks) as the policy rules see them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from mockrun import DeclaredResource, DeclaredStack, run_program
from policies import rules

STACKS = ("dev", "prod")


def _props(resource: DeclaredResource) -> dict[str, Any]:
    """Inputs, plus for a RandomPassword the `result` a provider returns (under mocks: the harness's)."""
    props = dict(resource.inputs)
    if resource.type == rules.RANDOM_PASSWORD:
        # The engine hands stack policies each resource's outputs; the harness records inputs,
        # so take the result from the same mock that produced it for the program.
        from pulumi.runtime import rpc

        from mockrun import harness

        _, state = harness._mock_state(resource.type, resource.name, resource.inputs)
        result = state["result"]
        props["result"] = rpc.unwrap_rpc_secret(result) if rpc.is_rpc_secret(result) else result
    return props


def to_rules(declared: Iterable[DeclaredResource]) -> list[rules.Resource]:
    return [
        rules.Resource(
            type=r.type,
            name=r.name,
            props=_props(r),
            urn=r.urn,
            protect=r.protect,
            secret_paths=r.secret_paths,
            dependencies=r.depends_on,
        )
        for r in declared
    ]


_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], DeclaredStack] = {}


def declared_stack(stack: str, overrides: Mapping[str, object] | None = None) -> DeclaredStack:
    """Run the program once per (stack, overrides) for the whole session: the rules never mutate it."""
    key = (stack, tuple(sorted((k, repr(v)) for k, v in (overrides or {}).items())))
    if key not in _CACHE:
        declared = run_program(stack, overrides)
        containers = declared.containers()
        # A run that registered nothing would make every rule pass vacuously.
        assert containers, f"the {stack} stack registered no containers"
        assert declared.replicas(), f"the {stack} stack registered no replicas"
        _CACHE[key] = declared
    return _CACHE[key]


@pytest.fixture(params=STACKS)
def stack_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Mutation = Callable[[DeclaredResource], DeclaredResource]
