"""Replica groups (canary, shadow) on the Kubernetes target: each one is more of the same objects,
selected by its own labels, and adding one touches no object of another group."""

from __future__ import annotations

from mockrun import attempt, run_program
from mockrun.manifests import manifests
from stackconfig.settings import ConfigError
from tests.program.test_groups import CANARY, SHADOW

from . import semantics
from .helpers import IN_CLUSTER, container, env_values, obj, replica_deployments


def test_each_group_is_its_own_deployment_service_and_budget() -> None:
    stack = run_program("cluster", {**IN_CLUSTER, "groups": [CANARY, SHADOW]})
    names = [d.inputs["metadata"]["name"] for d in replica_deployments(stack)]
    assert names == ["replica-w3", "replica-w2", "replica-w1", "replica-challenger-w1", "replica-candidate-w1"]
    canary = obj(stack, "Deployment", "replica-challenger-w1")
    assert canary.inputs["spec"]["replicas"] == 2
    assert canary.inputs["spec"]["selector"]["matchLabels"]["mlserve.group"] == "challenger"
    assert env_values(container(canary))["MLSERVE_MODEL_ALIAS"] == "challenger"
    assert obj(stack, "Service", "replica-candidate-w1").inputs["spec"]["selector"]["mlserve.group"] == "candidate"
    found = manifests(stack)
    for check, run in semantics.CHECKS.items():
        assert run(found) == [], check


def test_adding_groups_touches_no_object_of_the_default_group() -> None:
    before = run_program("cluster", IN_CLUSTER)
    after = run_program("cluster", {**IN_CLUSTER, "groups": [CANARY, SHADOW]})
    old = {(r.type, r.name): r.inputs for r in before.resources}
    new = {(r.type, r.name): r.inputs for r in after.resources}
    assert not set(old) - set(new)
    # Only nginx learns of the groups (an upstream each, the canary split, the shadow's mirror):
    # its conf, and the pod template that carries the conf's hash.
    assert sorted(key[1] for key in old if old[key] != new[key]) == ["balancer", "balancer-conf"]
    assert {key[1] for key in set(new) - set(old)} == {
        f"replica-{group}-w1{suffix}" for group in ("challenger", "candidate") for suffix in ("", "-service", "-pdb")
    }


def test_a_group_with_a_docker_only_gpu_mode_fails_naming_its_field() -> None:
    result = attempt("cluster", {**IN_CLUSTER, "groups": [{**CANARY, "gpuMode": "all"}]})
    assert isinstance(result.error, ConfigError) and result.error.key == "groups[0].gpuMode", result.error
    assert len(result.declared) == 0
