"""Canary and shadow groups: their replicas, and that adding, resizing or removing one touches no
container of another group."""

from __future__ import annotations

from typing import Any

import pytest

from app import contract
from mockrun import CONTAINER_TYPE, DeclaredStack, attempt, run_program
from stackconfig.settings import ConfigError
from tests.program.helpers import env_map

CANARY = {"name": "challenger", "role": "canary", "alias": "challenger", "replicas": 2, "trafficPercent": 10}
SHADOW = {"name": "candidate", "role": "shadow", "alias": "candidate", "replicas": 1, "mirrorPercent": 50}
# What a balancer-config change may touch: the nginx container (its uploads), nothing else.
BALANCER = "balancer"


def state(stack: DeclaredStack) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {(r.type, r.name): (r.inputs, r.parent, r.protect, r.depends_on) for r in stack.resources}


def changes(before: DeclaredStack, after: DeclaredStack) -> tuple[set[str], set[str], set[str]]:
    """(added, removed, changed) resource names between two runs."""
    old, new = state(before), state(after)
    added = {k[1] for k in set(new) - set(old)}
    removed = {k[1] for k in set(old) - set(new)}
    changed = {k[1] for k in set(old) & set(new) if old[k] != new[k]}
    assert all(k[0] == CONTAINER_TYPE for k in set(new) ^ set(old)), "only containers come and go"
    return added, removed, changed


def test_group_replicas_are_named_after_their_group_and_serve_its_alias() -> None:
    stack = run_program("dev", {"groups": [CANARY, SHADOW]})
    names = [r.name for r in stack.replicas()]
    assert names == ["replica-0", "replica-1", "replica-candidate-0", "replica-challenger-0", "replica-challenger-1"]
    for name, alias, weight_alias in [
        ("replica-challenger-0", "challenger", "replica-challenger-w1"),
        ("replica-challenger-1", "challenger", "replica-challenger-w1"),
        ("replica-candidate-0", "candidate", "replica-candidate-w1"),
    ]:
        replica = stack.container(name)
        assert replica.parent == "replicas"
        assert replica.inputs["name"] == f"mlserve-dev-{name}" and replica.inputs["hostname"] == name
        assert replica.inputs["networksAdvanced"][0]["aliases"] == [name, weight_alias]
        env = env_map(replica.inputs["envs"])
        assert env[contract.ENV_MODEL_ALIAS] == alias and env[contract.ENV_MODEL_NAME] == "iris-classifier"
        assert env[contract.ENV_INSTANCE_ID] == f"mlserve-dev-{name}"
        # Rolled in its own chain, from the same start as the default group.
        assert replica.inputs["wait"] is True and replica.inputs["healthcheck"]["tests"]
    assert "trainer" in stack.container("replica-challenger-0").depends_on
    assert "replica-challenger-0" in stack.container("replica-challenger-1").depends_on
    assert not set(stack.container("replica-candidate-0").depends_on) & set(names)
    assert stack.output("replicaNames")[2:] == ["mlserve-dev-replica-challenger-0", "mlserve-dev-replica-challenger-1", "mlserve-dev-replica-candidate-0"]


def test_group_resources_and_gpus() -> None:
    stack = run_program("prod", {"groups": [{**CANARY, "replicaCpus": "4", "gpuDeviceIds": ["1"]}, SHADOW]})
    canary = stack.container("replica-challenger-0").inputs
    assert canary["cpus"] == "4" and canary["memory"] == 4096 and canary["deviceRequests"][0]["deviceIds"] == ["1"]
    shadow = stack.container("replica-candidate-0").inputs
    assert shadow["cpus"] == "2" and shadow["deviceRequests"][0]["deviceIds"] == ["0"]  # prod's ids, from the start


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_adding_a_group_adds_its_replicas_and_touches_no_other_container(stack: str) -> None:
    before = run_program(stack)
    after = run_program(stack, {"groups": [CANARY]})
    added, removed, changed = changes(before, after)
    assert added == {"replica-challenger-0", "replica-challenger-1"} and not removed
    assert changed <= {BALANCER}, changed


def test_resizing_and_removing_a_group_touch_only_that_group() -> None:
    two = run_program("dev", {"groups": [CANARY, SHADOW]})
    grown = run_program("dev", {"groups": [{**CANARY, "replicas": 3}, SHADOW]})
    added, removed, changed = changes(two, grown)
    assert added == {"replica-challenger-2"} and not removed and not changed
    shrunk = run_program("dev", {"groups": [CANARY]})
    added, removed, changed = changes(two, shrunk)
    assert removed == {"replica-candidate-0"} and not added and changed <= {BALANCER}


def test_moving_a_group_in_the_list_changes_nothing() -> None:
    assert not any(changes(run_program("dev", {"groups": [CANARY, SHADOW]}), run_program("dev", {"groups": [SHADOW, CANARY]})))


def test_a_group_alias_change_replaces_that_group_only() -> None:
    before = run_program("dev", {"groups": [CANARY, SHADOW]})
    after = run_program("dev", {"groups": [{**CANARY, "alias": "rival"}, SHADOW]})
    added, removed, changed = changes(before, after)
    assert not added and not removed and changed == {"replica-challenger-0", "replica-challenger-1"}


def test_scaling_the_default_group_touches_no_group_replica() -> None:
    before = run_program("dev", {"groups": [CANARY, SHADOW]})
    after = run_program("dev", {"groups": [CANARY, SHADOW], "replicas": 4})
    added, removed, changed = changes(before, after)
    assert added == {"replica-2", "replica-3"} and not removed and not changed


GROUP_ERRORS: list[tuple[Any, str]] = [
    ([{**CANARY, "trafficPercent": 150}], "groups[0].trafficPercent"),
    ([{**SHADOW, "mirrorPercent": -5}], "groups[0].mirrorPercent"),
    ([{k: v for k, v in CANARY.items() if k != "alias"}], "groups[0].alias"),
    ([CANARY, {**CANARY, "role": "shadow", "mirrorPercent": 1, "trafficPercent": None}], "groups[1].trafficPercent"),
    ([CANARY, {**SHADOW, "name": "challenger"}], "groups[1].name"),
    ([{**CANARY, "colour": "blue"}], "groups[0].colour"),
    ("challenger", "groups"),
]


@pytest.mark.parametrize(("groups", "key"), GROUP_ERRORS, ids=[k for _, k in GROUP_ERRORS])
def test_an_invalid_group_fails_naming_the_field_and_registers_nothing(groups: Any, key: str) -> None:
    result = attempt("dev", {"groups": groups})
    assert isinstance(result.error, ConfigError) and result.error.key == key, result.error
    assert f"'{key}'" in str(result.error)
    assert len(result.declared) == 0, [r.name for r in result.declared]


def test_groups_in_a_stack_file_are_yaml_as_the_cli_hands_them_over(tmp_path: Any) -> None:
    """`pulumi config set --path 'groups[0].trafficPercent' 0` writes structured YAML into the
    stack file; the CLI hands the whole key over as JSON, which is what the mock run does."""
    import shutil

    from mockrun import PROJECT_ROOT

    shutil.copy(PROJECT_ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(PROJECT_ROOT / "__main__.py", tmp_path / "__main__.py")
    (tmp_path / "Pulumi.canary.yaml").write_text(
        "config:\n"
        "  mlserve:groups:\n"
        "    - {name: challenger, role: canary, alias: challenger, replicas: 1, trafficPercent: 0}\n"
        "    - name: candidate\n"
        "      role: shadow\n"
        "      alias: candidate\n"
        "      mirrorPercent: '12.5'\n"
    )
    stack = run_program("canary", project_root=tmp_path)
    settings = stack.settings()
    assert [(g.name, g.traffic_percent, g.mirror_percent) for g in settings.groups] == [
        ("default", 100.0, 0.0), ("challenger", 0.0, 0.0), ("candidate", 0.0, 12.5)]
    assert {r.name for r in stack.replicas()} >= {"replica-challenger-0", "replica-candidate-0"}
