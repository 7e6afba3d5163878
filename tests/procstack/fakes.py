"""Declared stacks made by hand: containers with only the inputs a test is about (a real mock run
of the program is in the `declared` fixture of the tests that need one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mockrun import CONTAINER_TYPE, DeclaredResource, DeclaredStack
from stackconfig.names import LABEL_ROLE, container_name


def container(
    resource: str,
    role: str | None,
    *,
    command: Sequence[str] = (),
    envs: Sequence[str] = (),
    aliases: Sequence[str] = (),
    image: str = "example:1",
    **inputs: Any,
) -> DeclaredResource:
    labels = [] if role is None else [{"label": LABEL_ROLE, "value": role}]
    return DeclaredResource(
        type=CONTAINER_TYPE,
        name=resource,
        urn=f"urn:pulumi:dev::mlserve::{CONTAINER_TYPE}::{resource}",
        custom=True,
        inputs={
            "name": container_name("dev", resource),
            "image": image,
            "command": list(command),
            "envs": list(envs),
            "labels": labels,
            "networksAdvanced": [{"name": "mlserve-dev", "aliases": list(aliases)}],
            **inputs,
        },
        secret_paths=frozenset(),
        parent=None,
        parent_type=None,
        depends_on=(),
        protect=False,
        delete_before_replace=False,
        ignore_changes=(),
        replace_on_changes=(),
        retain_on_delete=False,
        provider="",
        custom_timeouts={},
    )


def stack(*containers: DeclaredResource) -> DeclaredStack:
    return DeclaredStack(stack="dev", project="mlserve", config={}, resources=tuple(containers), outputs={})
