"""Decoding and meaning of config values (stackconfig/settings.py), without running the program."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from stackconfig import settings
from stackconfig.settings import ConfigError, parse

# String keys whose valid values JSON would turn into something else (a float, an int, a bool,
# null, a list): each must reach the settings as the very string the user wrote.
JSON_LOOKALIKES = [
    ("imageTag", "1.10", lambda s: s.images.app_tag),
    ("imageTag", "2", lambda s: s.images.app_tag),
    ("modelName", "123", lambda s: s.default_group.model.name),
    ("modelName", "true", lambda s: s.default_group.model.name),
    ("modelName", "null", lambda s: s.default_group.model.name),
    ("modelAlias", "2024", lambda s: s.default_group.model.alias),
    ("modelAlias", "1e3", lambda s: s.default_group.model.alias),
    ("bucket", "1234", lambda s: s.bucket),
    ("replicaCpus", "2.50", lambda s: s.default_group.resources.cpus),
]


@pytest.mark.parametrize(("key", "raw", "read"), JSON_LOOKALIKES, ids=[f"{k}={v}" for k, v, _ in JSON_LOOKALIKES])
def test_a_string_key_keeps_the_string_json_would_change(key: str, raw: str, read: Any) -> None:
    assert json.loads(raw) != raw or not isinstance(json.loads(raw), str)  # the case is one JSON would change
    assert read(parse("s", {key: raw})) == raw


@pytest.mark.parametrize(
    ("key", "raw", "expected", "read"),
    [
        ("replicas", "5", 5, lambda s: s.default_group.count),
        ("replicas", "007", 7, lambda s: s.default_group.count),
        ("trainDemoModel", "false", False, lambda s: s.train_demo_model),
        ("trainDemoModel", "True", True, lambda s: s.train_demo_model),
        ("weights", "[2, 3]", (2, 3), lambda s: s.default_group.weights),
        ("gpuDeviceIds", '["0", "GPU-1"]', ("0", "GPU-1"), lambda s: s.default_group.resources.gpu.device_ids),
    ],
)
def test_other_keys_decode_by_their_declared_type(key: str, raw: str, expected: Any, read: Any) -> None:
    extra = {"gpuMode": "devices"} if key == "gpuDeviceIds" else {}
    assert read(parse("s", {key: raw, **extra})) == expected


@pytest.mark.parametrize(("key", "raw"), [("replicas", "2.0"), ("replicas", "[2]"), ("trainDemoModel", "yes"), ("weights", "3")])
def test_a_value_of_the_wrong_type_names_the_key(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse("s", {key: raw})
    assert caught.value.key == key and repr(raw) in str(caught.value) or raw in str(caught.value)


# --- weights against the replica count ----------------------------------------------------------


def test_replicas_past_the_weights_list_get_weight_one_with_a_warning() -> None:
    s = parse("s", {"replicas": "5", "weights": "[3, 2, 1]"})
    assert s.default_group.weights == (3, 2, 1, 1, 1)
    (warning,) = s.warnings
    assert "'weights'" in warning and "3..4" in warning and "weight 1" in warning


def test_weights_past_the_count_are_kept_unused_with_a_warning() -> None:
    s = parse("s", {"replicas": "2", "weights": "[3, 2, 1]"})
    assert s.default_group.weights == (3, 2)
    (warning,) = s.warnings
    assert "'weights'" in warning and "[1]" in warning and "unused" in warning


def test_weights_of_the_right_length_warn_nothing() -> None:
    s = parse("s", {"replicas": "3", "weights": "[3, 2, 1]"})
    assert s.default_group.weights == (3, 2, 1) and s.warnings == ()
    assert parse("s", {"replicas": "4"}).default_group.weights == (1, 1, 1, 1)


# --- Pulumi.yaml is the one place of types and defaults -----------------------------------------


class _Recording(Mapping[str, Any]):
    """An empty config that records which keys the parser asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_the_parser_reads_every_declared_key() -> None:
    raw = _Recording()
    parse("s", raw)
    assert raw.asked == set(settings.SCHEMA), f"declared but never read: {set(settings.SCHEMA) - raw.asked}"


def test_defaults_come_from_pulumi_yaml() -> None:
    assert settings.DEFAULTS["replicas"] == 2 and settings.DEFAULTS["imageTag"] == "0.1.0"
    assert settings.SCHEMA["weights"].type == "array" and settings.DEFAULTS["weights"] is None
