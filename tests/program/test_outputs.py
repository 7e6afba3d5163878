"""Stack outputs, and secrets staying secret in outputs and inputs."""

from __future__ import annotations

from typing import Any

from mockrun import DeclaredStack

SECRET_MARKERS = ("mock-password-", "mock-string-minio-user")


def plain_strings(value: Any, path: tuple[Any, ...], secret_paths: frozenset[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], str]]:
    """Every string under `value` that is not inside a secret."""
    if any(path[: len(p)] == p for p in secret_paths):
        return []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in plain_strings(v, (*path, k), secret_paths)]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in plain_strings(v, (*path, i), secret_paths)]
    return [(path, value)] if isinstance(value, str) else []


def test_outputs(any_stack: DeclaredStack) -> None:
    outputs = any_stack.outputs
    assert {"entryUrl", "mlflowUrl", "replicaNames", "mysqlPassword", "mysqlRootPassword", "minioAccessKey", "minioSecretKey"} <= set(outputs)
    assert outputs["entryUrl"].value.startswith("http://") and not outputs["entryUrl"].secret
    assert outputs["replicaNames"].value == [r.inputs["name"] for r in any_stack.replicas()]
    assert outputs["replicaNames"].value


def test_generated_credentials_are_secret_outputs(any_stack: DeclaredStack) -> None:
    for key in ("mysqlPassword", "mysqlRootPassword", "minioAccessKey", "minioSecretKey"):
        output = any_stack.outputs[key]
        assert output.secret, key
        assert output.value and output.value.startswith("mock-"), key


def test_no_credential_appears_outside_a_secret_input(any_stack: DeclaredStack) -> None:
    checked = 0
    for resource in any_stack.resources:
        for path, text in plain_strings(resource.inputs, (), resource.secret_paths):
            checked += 1
            assert not any(marker in text for marker in SECRET_MARKERS), f"{resource.name} {path} leaks a credential"
    assert checked > 100
    # ... and the credentials do reach the containers that need them, as secrets.
    assert any_stack.container("mlflow").is_secret("envs")
    assert any_stack.container("mysql").is_secret("envs")
