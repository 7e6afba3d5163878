"""CrossGuard wrappers around `policies.rules`: everything of the pack but the server.

`__main__.py` hands `build_policies()` to `PolicyPack`, whose constructor starts the
analyzer's gRPC server and never returns; the tests call `build_policies()` and the
adapters here directly, with CrossGuard's own argument objects.

Which stack counts as production: the stack's name, compared with the pack's config
`prodStacks` (default ["prod"]). Not the program's `protectData` setting, which is the very
thing the volume rule checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from policies import rules

_PROD_STACKS_SCHEMA = PolicyConfigSchema(
    properties={
        "prodStacks": {
            "type": "array",
            "items": {"type": "string"},
            "default": list(rules.DEFAULT_PROD_STACKS),
            "description": "Names of the stacks treated as production.",
        }
    }
)


def plain(value: Any) -> Any:
    """CrossGuard's property proxies as plain Python; values unknown during preview become UNKNOWN."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in value:
            try:
                out[str(key)] = plain(value[key])
            except UnknownValueError:
                out[str(key)] = rules.UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items: list[Any] = []
        for index in range(len(value)):
            try:
                items.append(plain(value[index]))
            except UnknownValueError:
                items.append(rules.UNKNOWN)
        return items
    return value


def _context(config: Mapping[str, Any]) -> rules.Context:
    stack = os.environ.get("PULUMI_STACK", "")
    prod_stacks = tuple(str(s) for s in config.get("prodStacks", rules.DEFAULT_PROD_STACKS))
    return rules.Context(stack=stack, prod_stacks=prod_stacks)


def _report(violations: list[rules.Violation], report_violation: ReportViolation) -> None:
    for violation in violations:
        report_violation(violation.message, violation.urn or None)


def _resource_policy(rule: rules.Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        resource = rules.Resource(
            type=args.resource_type,
            name=args.name,
            props=plain(args.props),
            urn=args.urn,
            protect=bool(args.opts.protect),
        )
        _report(rule.check(resource, _context(args.get_config())), report_violation)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=_PROD_STACKS_SCHEMA,
    )


def _stack_resource(resource: PolicyResource) -> rules.Resource:
    return rules.Resource(
        type=resource.resource_type,
        name=resource.name,
        props=plain(resource.props),
        urn=resource.urn,
        protect=bool(resource.opts.protect),
        dependencies=tuple(d.name for d in resource.dependencies),
    )


def _stack_policy(rule: rules.Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [_stack_resource(r) for r in args.resources]
        _report(rule.check(resources, _context(args.get_config())), report_violation)

    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=_PROD_STACKS_SCHEMA,
    )


def build_policies() -> list[Policy]:
    """One CrossGuard policy per rule, mandatory: a violation fails preview and up."""
    return [_resource_policy(r) if r.scope == "resource" else _stack_policy(r) for r in rules.RULES]
