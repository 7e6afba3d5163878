"""Pulumi.yaml's config schema (the one place of types and defaults), the stack files and the README agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mockrun import PROJECT_ROOT, read_stack_config
from stackconfig import settings

SCHEMA_TYPES = {"string": str, "integer": int, "boolean": bool, "array": list}


def project() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())


def test_project_runtime_is_python_with_venv_and_pip() -> None:
    doc = project()
    assert doc["name"] == "mlserve"
    assert doc["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}


def python_type(key: str) -> type:
    """What a key's value decodes to: its schema type, or for a structured key (declared without
    a type, pulumi/pulumi#11321) the type settings.STRUCTURED_KEYS documents."""
    entry = project()["config"][key]
    return settings.STRUCTURED_KEYS[key] if "type" not in entry else SCHEMA_TYPES[entry["type"]]


@pytest.mark.parametrize("key", sorted(settings.DEFAULTS))
def test_schema_entry_is_well_formed(key: str) -> None:
    entry = project()["config"][key]
    if "type" in entry:
        assert entry["type"] in SCHEMA_TYPES, f"{key}: Pulumi knows only {sorted(SCHEMA_TYPES)}"
        assert key not in settings.STRUCTURED_KEYS, f"{key} has a type but is listed as structured"
    else:
        # Only keys documented as structured may go without a type.
        assert key in settings.STRUCTURED_KEYS, f"{key} has no type and is not in settings.STRUCTURED_KEYS"
        assert entry["description"].startswith("Structured"), f"{key}: say in its description that it is structured"
    assert len(entry.get("description", "")) > 20, f"{key} needs a description"
    default = settings.DEFAULTS[key]
    if default is not None:
        assert isinstance(default, python_type(key)), f"{key}: default {default!r} is not a {python_type(key)}"
    if entry.get("type") == "array":
        assert entry["items"]["type"] in SCHEMA_TYPES


def test_structured_keys_are_declared_without_a_type() -> None:
    for key in settings.STRUCTURED_KEYS:
        assert key in project()["config"] and "type" not in project()["config"][key], key


def test_schema_defaults_parse_to_the_same_settings_as_no_config() -> None:
    """What the CLI hands over (schema defaults, JSON-encoded) means the same as nothing set."""
    encoded = {
        key: entry["default"] if isinstance(entry["default"], str) else json.dumps(entry["default"])
        for key, entry in project()["config"].items()
        if "default" in entry
    }
    assert settings.parse("s", encoded) == settings.parse("s", {})


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_files_use_known_keys_with_schema_types(stack: str) -> None:
    name, values = read_stack_config(stack)
    assert name == "mlserve" and values
    schema = project()["config"]
    for key, value in values.items():
        assert key in schema, f"Pulumi.{stack}.yaml sets unknown key {key}"
        assert isinstance(value, python_type(key)), f"Pulumi.{stack}.yaml: {key}={value!r}"


def test_config_reference_lists_every_key_with_its_default() -> None:
    text = (PROJECT_ROOT / "README.md").read_text()
    table = text.split("| Key | Default |", 1)[1].split("\n\n", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == set(settings.DEFAULTS)
    for key, default in settings.DEFAULTS.items():
        shown = "(unset)" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        assert f"`{shown}`" in rows[key] or shown in rows[key], f"README.md: {key} default {shown}"


def test_readme_free_paths_exist() -> None:
    assert Path(PROJECT_ROOT / "Pulumi.dev.yaml").exists() and Path(PROJECT_ROOT / "Pulumi.prod.yaml").exists()
