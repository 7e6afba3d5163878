"""The `groups` key: named canary and shadow groups decoded into `ReplicaGroup`s, every invalid
field named by its path (`groups[0].trafficPercent`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stackconfig import names
from stackconfig.settings import (
    GROUP_CANARY,
    GROUP_PRIMARY,
    GROUP_SHADOW,
    MAX_WEIGHT,
    ConfigError,
    Settings,
    parse,
)

CANARY = {"name": "challenger", "role": "canary", "alias": "challenger", "replicas": 1, "trafficPercent": 10}
SHADOW = {"name": "candidate", "role": "shadow", "alias": "candidate", "replicas": 1, "mirrorPercent": 50}


def with_groups(groups: Any, **top: Any) -> Settings:
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in top.items()}
    return parse("s", {**raw, "groups": json.dumps(groups)})


def test_no_groups_is_the_default_group_alone_answering_everything() -> None:
    s = parse("s", {})
    (group,) = s.groups
    assert group.name == names.DEFAULT_GROUP and group.role == GROUP_PRIMARY
    assert group.traffic_percent == 100 and group.mirror_percent == 0 and group.sticky_header is None
    assert with_groups([]).groups == s.groups


def test_a_canary_and_a_shadow_after_the_default_group() -> None:
    s = with_groups([CANARY, SHADOW])
    assert [g.name for g in s.groups] == ["default", "challenger", "candidate"]
    default, canary, shadow = s.groups
    assert default.traffic_percent == 90 and default.model.alias == "champion"
    assert canary.role == GROUP_CANARY and canary.traffic_percent == 10 and canary.mirror_percent == 0
    assert canary.model.name == default.model.name and canary.model.alias == "challenger"
    assert shadow.role == GROUP_SHADOW and shadow.mirror_percent == 50 and shadow.traffic_percent == 0
    assert s.groups_of_role(GROUP_CANARY) == (canary,) and s.groups_of_role(GROUP_SHADOW) == (shadow,)


def test_a_group_takes_the_top_level_resources_unless_it_sets_its_own() -> None:
    s = with_groups(
        [{**CANARY, "replicaMemoryMb": 4096}, {**SHADOW, "gpuMode": "count", "gpuCount": 2}],
        replicaCpus="2", replicaMemoryMb=1024, replicaShmMb=128,
    )
    default, canary, shadow = s.groups
    assert (canary.resources.cpus, canary.resources.memory_mb, canary.resources.shm_mb) == ("2", 4096, 128)
    assert canary.resources.gpu == default.resources.gpu
    assert shadow.resources.gpu.mode == "count" and shadow.resources.gpu.count == 2 and shadow.resources.memory_mb == 1024


def test_gpu_device_ids_are_inherited_only_by_groups_in_devices_mode() -> None:
    top = {"gpuMode": "devices", "gpuDeviceIds": ["0", "1"]}
    s = with_groups([CANARY, {**SHADOW, "gpuMode": "none"}, {**SHADOW, "name": "third", "gpuDeviceIds": ["2"]}], **top)
    _, canary, shadow, third = s.groups
    assert canary.resources.gpu.device_ids == ("0", "1")
    assert shadow.resources.gpu.mode == "none" and shadow.resources.gpu.device_ids == ()
    assert third.resources.gpu.device_ids == ("2",)


def test_shares_take_decimals_and_numeric_strings() -> None:
    """`pulumi config set --path 'groups[0].trafficPercent' 2.5` stores the string "2.5"."""
    s = with_groups([{**CANARY, "trafficPercent": "2.5"}, {**CANARY, "name": "other", "trafficPercent": 0.25}])
    assert [g.traffic_percent for g in s.groups] == [97.25, 2.5, 0.25]


def test_a_canary_at_zero_is_aborted_and_the_primary_answers_everything() -> None:
    s = with_groups([{**CANARY, "trafficPercent": 0}])
    assert s.groups[0].traffic_percent == 100 and s.groups[1].traffic_percent == 0 and s.groups[1].count == 1


def test_stickiness_is_one_header_for_every_canary() -> None:
    s = with_groups([{**CANARY, "stickyHeader": "X-User-ID"}, {**CANARY, "name": "other", "trafficPercent": 5}])
    assert [g.sticky_header for g in s.groups] == [None, "X-User-ID", "X-User-ID"]


def test_group_weights_are_one_per_replica_of_the_group() -> None:
    s = with_groups([{**CANARY, "replicas": 3, "weights": [1, 2, 3]}])
    assert s.groups[1].weights == (1, 2, 3) and s.groups[1].count == 3
    assert with_groups([{**CANARY, "replicas": 2}]).groups[1].weights == (1, 1)


def test_a_group_on_the_default_alias_is_allowed_with_a_warning() -> None:
    s = with_groups([{**CANARY, "alias": "champion"}])
    (warning,) = s.warnings
    assert "groups[0].alias" in warning


INVALID: list[tuple[Any, str, str]] = [
    ("not a list", "groups", "list of groups"),
    ({"name": "x"}, "groups", "list of groups"),
    (["challenger"], "groups[0]", "object"),
    ([{**CANARY, "trafficPercent": 101}], "groups[0].trafficPercent", "0 to 100"),
    ([{**CANARY, "trafficPercent": -1}], "groups[0].trafficPercent", "0 to 100"),
    ([{**CANARY, "trafficPercent": "ten"}], "groups[0].trafficPercent", "0 to 100"),
    ([{**CANARY, "trafficPercent": True}], "groups[0].trafficPercent", "0 to 100"),
    ([{**CANARY, "trafficPercent": 10.125}], "groups[0].trafficPercent", "2 decimals"),
    ([{**CANARY, "trafficPercent": "nan"}], "groups[0].trafficPercent", "0 to 100"),
    ([SHADOW, {**SHADOW, "name": "other", "mirrorPercent": 100.5}], "groups[1].mirrorPercent", "0 to 100"),
    ([{k: v for k, v in CANARY.items() if k != "alias"}], "groups[0].alias", "required"),
    ([{**CANARY, "alias": "v3"}], "groups[0].alias", "version"),
    ([{**CANARY, "alias": "no spaces"}], "groups[0].alias", "alias"),
    ([CANARY, {**SHADOW, "name": "challenger"}], "groups[1].name", "groups[0]"),
    ([{**CANARY, "name": "default"}], "groups[0].name", "default"),
    ([{**CANARY, "name": "w3"}], "groups[0].name", "w<number>"),
    ([{**CANARY, "name": "Canary"}], "groups[0].name", "lowercase"),
    ([{**CANARY, "name": "can-ary"}], "groups[0].name", "lowercase"),
    ([{**CANARY, "name": "3rd"}], "groups[0].name", "starting with a letter"),
    ([{**CANARY, "name": "a" * 21}], "groups[0].name", "1-20"),
    ([{k: v for k, v in CANARY.items() if k != "name"}], "groups[0].name", "lowercase"),
    ([{**CANARY, "role": "primary"}], "groups[0].role", "canary, shadow"),
    ([{**CANARY, "role": None}], "groups[0].role", "canary, shadow"),
    ([{**CANARY, "replica": 2}], "groups[0].replica", "not a field"),
    ([{**CANARY, "replicas": 0}], "groups[0].replicas", "1 to 200"),
    ([{**CANARY, "replicas": 2, "weights": [1]}], "groups[0].weights", "list of 2"),
    ([{**CANARY, "weights": [MAX_WEIGHT + 1]}], "groups[0].weights", "1 to 10"),
    ([{k: v for k, v in CANARY.items() if k != "trafficPercent"}], "groups[0].trafficPercent", "required"),
    ([{**CANARY, "mirrorPercent": 5}], "groups[0].mirrorPercent", "shadow"),
    ([{k: v for k, v in SHADOW.items() if k != "mirrorPercent"}], "groups[0].mirrorPercent", "required"),
    ([{**SHADOW, "trafficPercent": 5}], "groups[0].trafficPercent", "canary"),
    ([{**SHADOW, "stickyHeader": "X-User"}], "groups[0].stickyHeader", "canary"),
    ([{**CANARY, "stickyHeader": "X User"}], "groups[0].stickyHeader", "header name"),
    ([{**CANARY, "stickyHeader": "A"}, {**CANARY, "name": "b", "stickyHeader": "B"}], "groups[1].stickyHeader", "same"),
    ([{**CANARY, "trafficPercent": 60}, {**CANARY, "name": "b", "trafficPercent": 40.5}], "groups[1].trafficPercent", "100"),
    ([{**CANARY, "replicaMemoryMb": 100}], "groups[0].replicaMemoryMb", "512"),
    ([{**CANARY, "replicaCpus": "0"}], "groups[0].replicaCpus", "positive"),
    ([{**CANARY, "gpuMode": "some"}], "groups[0].gpuMode", "none, all"),
    ([{**CANARY, "gpuMode": "devices"}], "groups[0].gpuDeviceIds", "non-empty"),
    ([{**CANARY, "gpuDeviceIds": ["0"]}], "groups[0].gpuDeviceIds", "only used"),
    ([{**CANARY, "gpuMode": "devices", "gpuDeviceIds": ["0"], "gpuCount": 2}], "groups[0].gpuCount", "at most"),
]


@pytest.mark.parametrize(("groups", "key", "words"), INVALID, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(INVALID)])
def test_an_invalid_group_names_the_field_path(groups: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_groups(groups)
    assert caught.value.key == key, str(caught.value)
    assert f"'{key}'" in str(caught.value) and words in str(caught.value)


def test_groups_that_are_not_json_name_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("s", {"groups": "[{name: challenger"})
    assert caught.value.key == "groups"


def generated_names(group: str, count: int) -> set[str]:
    return {names.replica_resource(i, group) for i in range(count)} | {
        names.weight_alias(w, group) for w in range(1, MAX_WEIGHT + 1)
    } | {names.upstream_name(group)}


@pytest.mark.parametrize("other", ["a", "w", "wx", "replica", "a0", "x1y", "z" * 19])
def test_no_generated_name_of_a_valid_group_equals_one_of_another_group(other: str) -> None:
    """A group accepted by the parser gets names nobody else can have (200 replicas, every weight)."""
    s = with_groups([{**CANARY, "name": other}, {**SHADOW, "name": other + "b"}])
    sets = [generated_names(g.name, 200) for g in s.groups]
    for i, first in enumerate(sets):
        for second in sets[i + 1 :]:
            assert not first & second


@pytest.mark.parametrize(("top", "expected"), [
    ({}, 1), ({"replicaCpus": "1.5"}, 1), ({"replicaCpus": "0.5"}, 1), ({"replicaCpus": "2"}, 2),
    ({"replicaCpus": "4", "replicaWorkers": 2}, 2), ({"replicaCpus": "1", "replicaWorkers": 3}, 3),
    ({"replicaCpus": "8", "gpuMode": "count", "gpuCount": 2}, 2),
    ({"replicaCpus": "8", "gpuMode": "devices", "gpuDeviceIds": ["0", "1"]}, 1),
    ({"replicaCpus": "8", "gpuMode": "all"}, None),
])
def test_serving_processes_follow_the_cpus_or_the_gpus_unless_set(top: dict[str, Any], expected: int | None) -> None:
    """One process per whole CPU (a Python process serves on one core), one per GPU on GPU
    replicas (None: one per GPU the replica sees, gpuMode all), or the key."""
    assert with_groups([], **top).groups[0].resources.workers == expected


def test_a_group_takes_its_own_cpus_for_its_processes_or_the_keys() -> None:
    s = with_groups([{**CANARY, "replicaCpus": "3"}, SHADOW, {**CANARY, "name": "third", "replicaWorkers": 5}],
                    replicaCpus="2")
    assert [g.resources.workers for g in s.groups] == [2, 3, 2, 5]
    s = with_groups([{**CANARY, "replicaCpus": "3"}], replicaWorkers=4)
    assert [g.resources.workers for g in s.groups] == [4, 4]


@pytest.mark.parametrize(("config", "key"), [
    ({"replicaWorkers": "0"}, "replicaWorkers"), ({"replicaWorkers": "65"}, "replicaWorkers"),
    ({"groups": json.dumps([{**CANARY, "replicaWorkers": 0}])}, "groups[0].replicaWorkers"),
])
def test_serving_processes_out_of_range_fail_naming_the_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse("s", config)
    assert err.value.key == key
