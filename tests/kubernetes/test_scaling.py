"""`pulumi config set replicas N` on the Kubernetes target changes the replica counts and nothing
else: no resource appears, goes or changes another input, so nothing is replaced or rolled."""

from __future__ import annotations

from typing import Any

import pytest

from mockrun import DeclaredStack, run_program

from .helpers import HPA, IN_CLUSTER, SECRETS

Key = tuple[str, str]


def inputs(stack: DeclaredStack) -> dict[Key, dict[str, Any]]:
    return {(r.type, r.name): r.inputs for r in stack.resources}


def options(stack: DeclaredStack) -> dict[Key, tuple[Any, ...]]:
    return {(r.type, r.name): (r.parent, r.protect, r.retain_on_delete, r.provider) for r in stack.resources}


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two plain values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b), key=str) for p in diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def changes(before: DeclaredStack, after: DeclaredStack) -> dict[str, list[str]]:
    old, new = inputs(before), inputs(after)
    assert set(old) == set(new), f"resources added {set(new) - set(old)}, removed {set(old) - set(new)}"
    assert options(before) == options(after)
    return {key[1]: diff(old[key], new[key]) for key in old if old[key] != new[key]}


def count(stack: DeclaredStack, name: str) -> Any:
    return stack.by_name(name, "kubernetes:apps/v1:Deployment").inputs["spec"].get("replicas")


def test_scaling_the_example_changes_only_one_replica_count() -> None:
    """cluster: weights [3, 2, 1]; two more replicas get weight 1 (where the list ends)."""
    before = run_program("cluster", secrets=SECRETS)
    after = run_program("cluster", {"replicas": 5}, secrets=SECRETS)
    assert changes(before, after) == {"replica-w1": [".spec.replicas"]}
    assert (count(before, "replica-w1"), count(after, "replica-w1")) == (1, 3)


@pytest.mark.parametrize(("start", "end"), [(2, 5), (5, 2), (1, 200)])
def test_scaling_without_weights_changes_only_spec_replicas(start: int, end: int) -> None:
    base = {**IN_CLUSTER, "weights": None, "gpuMode": None, "gpuNodeSelector": None}
    before = run_program("cluster", {**base, "replicas": start})
    after = run_program("cluster", {**base, "replicas": end})
    assert changes(before, after) == {"replica-w1": [".spec.replicas"]}
    assert count(after, "replica-w1") == end


def test_scaling_with_autoscalers_changes_only_their_minimum() -> None:
    before = run_program("cluster", HPA, secrets=SECRETS)
    after = run_program("cluster", {**HPA, "replicas": 5}, secrets=SECRETS)
    assert changes(before, after) == {"replica-w1-hpa": [".spec.minReplicas"]}
    assert count(after, "replica-w1") is None


def test_scaling_leaves_the_balancer_conf_and_the_pod_templates_alone() -> None:
    """What the test above implies, said once more where it matters: no rollout."""
    before = run_program("cluster", IN_CLUSTER)
    after = run_program("cluster", {**IN_CLUSTER, "replicas": 6, "weights": [3, 2, 1, 1, 3, 2]})
    changed = changes(before, after)
    assert set(changed) == {"replica-w3", "replica-w2", "replica-w1"}
    assert all(paths == [".spec.replicas"] for paths in changed.values())


def test_a_new_weight_is_a_new_group_and_touches_no_other() -> None:
    before = run_program("cluster", IN_CLUSTER)
    after = run_program("cluster", {**IN_CLUSTER, "replicas": 4, "weights": [3, 2, 1, 7]})
    old, new = inputs(before), inputs(after)
    added = {key[1] for key in set(new) - set(old)}
    assert added == {"replica-w7", "replica-w7-service", "replica-w7-pdb"}
    assert not set(old) - set(new)
    assert [key for key in old if old[key] != new[key]] == []
