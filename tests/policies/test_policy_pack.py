"""The CrossGuard side of the pack: the wrappers, fed CrossGuard's own argument objects.

`policies/__main__.py` only hands `build_policies()` to `PolicyPack` (which starts a gRPC
server, so it is never imported here). These tests drive each policy's `validate` the way
the analyzer does: properties behind CrossGuard's unknown-checking proxy, options as
`PolicyResourceOptions`, the stack name from PULUMI_STACK.
"""

from __future__ import annotations

from typing import Any

import pytest
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_ARRAY_VALUE, UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policies import pack, rules
from stackconfig.names import LABEL_ROLE, ROLE_BALANCER, ROLE_MYSQL, ROLE_REPLICA


def role_label(role: str) -> dict[str, Any]:
    return {"labels": [{"label": LABEL_ROLE, "value": role}]}


def options(protect: bool = False, parent: str | None = None) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent)


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:prod::mlserve::{type_}::{name}"


def run_resource_policy(policy: ResourceValidationPolicy, type_: str, name: str, props: dict[str, Any], **kw: Any) -> list[str]:
    reported: list[str] = []
    args = ResourceValidationArgs(
        type_,
        unknown_checking_proxy(props),
        urn(type_, name),
        name,
        options(kw.get("protect", False)),
        None,
        {},
        {},
    )
    policy.validate(args, lambda message, urn=None: reported.append(message))
    return reported


def by_name() -> dict[str, Any]:
    return {p.name: p for p in pack.build_policies()}


def test_one_mandatory_policy_per_rule() -> None:
    policies = by_name()
    assert sorted(policies) == sorted(r.name for r in rules.RULES)
    for rule in rules.RULES:
        expected = ResourceValidationPolicy if rule.scope == "resource" else StackValidationPolicy
        assert isinstance(policies[rule.name], expected)
        assert policies[rule.name].enforcement_level.value == "mandatory"


def test_plain_turns_unknowns_into_the_sentinel() -> None:
    props = unknown_checking_proxy(
        {"envs": ["A=1", UNKNOWN_STRING_VALUE], "ports": UNKNOWN_ARRAY_VALUE, "healthcheck": {"tests": ["CMD", "x"]}}
    )
    assert pack.plain(props) == {"envs": ["A=1", rules.UNKNOWN], "ports": rules.UNKNOWN, "healthcheck": {"tests": ["CMD", "x"]}}


def test_public_port_reported_through_crossguard() -> None:
    policy = by_name()["balancer-only-public-ports"]
    published = {"ports": [{"internal": 3306, "external": 3306}], "image": "mysql:8.4.3"}
    messages = run_resource_policy(policy, rules.CONTAINER, "mysql", {**published, **role_label(ROLE_MYSQL)})
    assert messages and "'mysql'" in messages[0]
    # The balancer itself may publish; it is known by its role label.
    assert run_resource_policy(policy, rules.CONTAINER, "nginx", {**published, **role_label(ROLE_BALANCER)}) == []


def test_unknown_props_do_not_break_a_policy() -> None:
    policy = by_name()["pinned-images"]
    assert run_resource_policy(policy, rules.CONTAINER, "replica-0", {"image": UNKNOWN_STRING_VALUE}) == []
    assert run_resource_policy(policy, rules.CONTAINER, "replica-0", {"image": "mlserve-replica"})


@pytest.mark.parametrize(("stack", "fires"), [("prod", True), ("dev", False), ("acme/prod", True)])
def test_protect_and_stack_name(monkeypatch: pytest.MonkeyPatch, stack: str, fires: bool) -> None:
    monkeypatch.setenv("PULUMI_STACK", stack)
    policy = by_name()["protected-data-volumes"]
    assert bool(run_resource_policy(policy, rules.VOLUME, "mysql-data", {"name": "v"})) is fires
    assert run_resource_policy(policy, rules.VOLUME, "mysql-data", {"name": "v"}, protect=True) == []


def test_stack_policy_sees_outputs_and_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULUMI_STACK", "prod")
    image = PolicyResource(
        rules.IMAGE,
        unknown_checking_proxy({"imageName": "r:1-cuda", "build": {"args": {rules.VARIANT_BUILD_ARG: "cuda"}}}),
        urn(rules.IMAGE, "replica-image"),
        "replica-image",
        options(),
        None,
        None,
        [],
        {},
    )
    password = PolicyResource(
        rules.RANDOM_PASSWORD,
        unknown_checking_proxy({"result": "s3cr3t-generated"}),
        urn(rules.RANDOM_PASSWORD, "mysql-password"),
        "mysql-password",
        options(),
        None,
        None,
        [],
        {},
    )
    replica = PolicyResource(
        rules.CONTAINER,
        unknown_checking_proxy({"envs": ["DB_PASSWORD=s3cr3t-generated", "API_TOKEN=literal"], **role_label(ROLE_REPLICA)}),
        urn(rules.CONTAINER, "replica-0"),
        "replica-0",
        options(),
        None,
        None,
        [image],
        {},
    )
    args = StackValidationArgs([image, password, replica], {}, {})
    reported: list[tuple[str, str | None]] = []
    by_name()["gpu-replicas-request-gpu"].validate(args, lambda m, u=None: reported.append((m, u)))
    assert len(reported) == 1 and "'replica-0'" in reported[0][0] and reported[0][1] == replica.urn
    reported.clear()
    by_name()["no-literal-passwords"].validate(args, lambda m, u=None: reported.append((m, u)))
    assert [m for m, _ in reported] == [
        "Container 'replica-0': env API_TOKEN holds a literal credential; it must come from a generated secret (RandomPassword)"
    ]
