"""Each policy against the program's own resources (both stacks pass) and broken variants (each fires).

The resources come from `mockrun.run_program`, the program run under mocks; a broken
variant is the same declared stack with one resource changed (or a config override), and
the test asserts that the policy names that resource.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from conftest import STACKS, declared_stack, to_rules

from mockrun import DeclaredResource, DeclaredStack
from policies import rules

RULES = {rule.name: rule for rule in rules.RULES}


def context(stack: str) -> rules.Context:
    return rules.Context(stack=stack)


def violations(rule: str, resources: list[rules.Resource], stack: str) -> list[rules.Violation]:
    return RULES[rule].run(resources, context(stack))


def mutated(
    declared: DeclaredStack, name: str, change: Callable[[DeclaredResource], DeclaredResource], type_: str | None = None
) -> list[rules.Resource]:
    target = declared.by_name(name, type_)
    return to_rules(change(r) if r is target else r for r in declared)


def with_inputs(resource: DeclaredResource, **changes: Any) -> DeclaredResource:
    inputs = dict(resource.inputs)
    for key, value in changes.items():
        if value is None:
            inputs.pop(key, None)
        else:
            inputs[key] = value
    return dataclasses.replace(resource, inputs=inputs)


def assert_fires(found: list[rules.Violation], name: str, *words: str) -> None:
    assert found, f"no violation reported for {name!r}"
    mine = [v for v in found if v.resource == name]
    assert mine, f"violations name other resources: {[v.message for v in found]}"
    for violation in mine:
        assert f"'{name}'" in violation.message
    for word in words:
        assert any(word in v.message for v in mine), f"{word!r} not in {[v.message for v in mine]}"


def first_non_balancer_service(declared: DeclaredStack) -> DeclaredResource:
    for container in declared.containers():
        resource = to_rules([container])[0]
        if not rules.is_balancer(resource) and not rules.is_replica(resource):
            return container
    raise AssertionError("no service container besides the balancer and the replicas")


# --- both stacks, as declared, pass every policy --------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_declared_stack_passes(rule: str, stack: str) -> None:
    resources = to_rules(declared_stack(stack))
    assert len(resources) >= 10, f"only {len(resources)} resources registered"
    assert violations(rule, resources, stack) == []


def test_the_rules_have_something_to_check() -> None:
    """The passing runs above are not vacuous: each rule's subject exists in the stacks."""
    prod = to_rules(declared_stack("prod"))
    types = {r.type for r in prod}
    assert {rules.CONTAINER, rules.VOLUME, rules.RANDOM_PASSWORD, rules.IMAGE} <= types, types
    balancers = [r for r in prod if r.type == rules.CONTAINER and rules.is_balancer(r)]
    assert balancers, "no container with the balancer's role label"
    # The balancer publishes on a public address in prod, and that is allowed.
    assert any(rules._public(p.get("ip")) for b in balancers for p in b.props.get("ports", [])), "balancer publishes nothing"
    assert all(r.protect for r in prod if r.type == rules.VOLUME)
    replicas = [r for r in prod if rules.is_replica(r)]
    assert replicas and all(rules.requests_gpu(r) for r in replicas), "prod replicas request no GPU"
    credentials = [
        (r.name, n) for r in prod if r.type == rules.CONTAINER for _, n, v in rules._env(r) if rules._credential_parts(n, v)
    ]
    assert len(credentials) >= 3, f"expected MySQL, MinIO and MLflow credentials in env, found {credentials}"


def test_prod_cuda_replicas_are_recognised() -> None:
    prod = to_rules(declared_stack("prod"))
    cuda_images = [r.name for r in prod if r.type == rules.IMAGE and rules._builds_cuda(r)]
    assert cuda_images, "prod builds no CUDA image"
    for replica in (r for r in prod if rules.is_replica(r)):
        assert set(cuda_images) & set(replica.dependencies), f"{replica.name} does not depend on the CUDA image"


# --- broken variants ---------------------------------------------------------------------------


def test_published_service_port_fires() -> None:
    declared = declared_stack("prod")
    service = first_non_balancer_service(declared)
    internal = 3306
    broken = mutated(declared, service.name, lambda r: with_inputs(r, ports=[{"internal": internal, "external": internal}]))
    assert_fires(violations("balancer-only-public-ports", broken, "prod"), service.name, "0.0.0.0")


def test_service_on_loopback_or_host_network() -> None:
    declared = declared_stack("dev")
    service = first_non_balancer_service(declared)
    loopback = mutated(
        declared, service.name, lambda r: with_inputs(r, ports=[{"internal": 5000, "external": 5000, "ip": "127.0.0.1"}])
    )
    assert violations("balancer-only-public-ports", loopback, "dev") == []
    host = mutated(declared, service.name, lambda r: with_inputs(r, networkMode="host"))
    assert_fires(violations("balancer-only-public-ports", host, "dev"), service.name, "host's network")


@pytest.mark.parametrize(
    ("missing", "words"),
    [({"healthcheck": None}, "healthcheck"), ({"memory": None}, "memory"), ({"cpus": None}, "CPU"), ({"memory": 0}, "memory")],
)
@pytest.mark.parametrize("stack", STACKS)
def test_replica_without_limit_or_healthcheck_fires(stack: str, missing: dict[str, Any], words: str) -> None:
    declared = declared_stack(stack)
    replica = declared.replicas()[-1]
    assert replica.inputs.get("healthcheck") and replica.inputs.get("memory") and replica.inputs.get("cpus")
    broken = mutated(declared, replica.name, lambda r: with_inputs(r, **missing))
    assert_fires(violations("replica-limits-and-healthcheck", broken, stack), replica.name, words)


def test_disabled_healthcheck_fires() -> None:
    declared = declared_stack("dev")
    replica = declared.replicas()[0]
    broken = mutated(declared, replica.name, lambda r: with_inputs(r, healthcheck={"tests": ["NONE"]}))
    assert_fires(violations("replica-limits-and-healthcheck", broken, "dev"), replica.name, "healthcheck")


@pytest.mark.parametrize(("suffix", "words"), [(":latest", "latest"), ("", "no tag")])
def test_unpinned_container_image_fires(suffix: str, words: str) -> None:
    declared = declared_stack("prod")
    service = first_non_balancer_service(declared)
    image = str(service.inputs["image"])
    assert rules.image_pin_problem(image) is None, image
    repository = image.split("@", 1)[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    broken = mutated(declared, service.name, lambda r: with_inputs(r, image=repository + suffix))
    assert_fires(violations("pinned-images", broken, "prod"), service.name, words)


def test_unpinned_built_image_fires() -> None:
    declared = declared_stack("dev")
    image = declared.images()[0]
    name = str(image.inputs["imageName"]).rsplit(":", 1)[0]
    broken = mutated(declared, image.name, lambda r: with_inputs(r, imageName=f"{name}:latest"), rules.IMAGE)
    assert_fires(violations("pinned-images", broken, "dev"), image.name, "latest")


def test_image_references() -> None:
    assert rules.image_pin_problem("registry:5000/team/app") == "has no tag (Docker reads that as `latest`)"
    assert rules.image_pin_problem("registry:5000/team/app:1.2") is None
    assert rules.image_pin_problem("nginx@sha256:" + "a" * 64) is None
    assert rules.image_pin_problem("sha256:" + "b" * 64) is None
    assert rules.image_pin_problem("nginx:LATEST") == "uses the `latest` tag"


def test_unprotected_volumes_in_prod_fire() -> None:
    declared = declared_stack("prod", {"protectData": False})
    volumes = declared.of_type(rules.VOLUME)
    assert volumes, "prod declares no volumes"
    found = violations("protected-data-volumes", to_rules(declared), "prod")
    for volume in volumes:
        assert_fires(found, volume.name, "not protected")
    # The same unprotected volumes are fine in dev: the rule is about production.
    assert violations("protected-data-volumes", to_rules(declared), "dev") == []


def test_prod_stacks_come_from_the_pack_config() -> None:
    declared = declared_stack("prod", {"protectData": False})
    staging = rules.Context(stack="acme/staging", prod_stacks=("prod", "staging"))
    assert RULES["protected-data-volumes"].run(to_rules(declared), staging)
    assert rules.Context(stack="acme/mlserve/prod").prod


def _credential_entry(declared: DeclaredStack) -> tuple[DeclaredResource, int, str]:
    """The first container env entry that holds a plain (non-URL) credential."""
    for container in declared.containers():
        for index, entry in enumerate(container.inputs.get("envs", [])):
            name, _, value = str(entry).partition("=")
            if rules._credential_parts(name, value) and "://" not in value:
                return container, index, name
    raise AssertionError("no container gets a password through its env")


def _url_entry(declared: DeclaredStack) -> tuple[DeclaredResource, int, str, str]:
    for container in declared.containers():
        for index, entry in enumerate(container.inputs.get("envs", [])):
            name, _, value = str(entry).partition("=")
            if "://" in value and rules._credential_parts(name, value):
                return container, index, name, value
    raise AssertionError("no container gets a URL with a password through its env")


@pytest.mark.parametrize("stack", STACKS)
def test_literal_password_fires(stack: str) -> None:
    declared = declared_stack(stack)
    container, index, name = _credential_entry(declared)

    def literal(r: DeclaredResource) -> DeclaredResource:
        envs = list(r.inputs["envs"])
        envs[index] = f"{name}=hunter2"
        return with_inputs(r, envs=envs)

    assert_fires(violations("no-literal-passwords", mutated(declared, container.name, literal), stack), container.name, name)


def test_literal_password_in_a_url_fires() -> None:
    declared = declared_stack("prod")
    container, index, name, value = _url_entry(declared)

    def literal(r: DeclaredResource) -> DeclaredResource:
        envs = list(r.inputs["envs"])
        scheme, rest = value.split("://", 1)
        userinfo, host = rest.split("@", 1)
        envs[index] = f"{name}={scheme}://{userinfo.split(':', 1)[0]}:changeme@{host}"
        return with_inputs(r, envs=envs)

    found = violations("no-literal-passwords", mutated(declared, container.name, literal), "prod")
    assert_fires(found, container.name, f"env {name} holds a literal credential")


def test_generated_password_not_kept_secret_fires() -> None:
    declared = declared_stack("prod")
    container, _, _ = _credential_entry(declared)
    plain = mutated(declared, container.name, lambda r: dataclasses.replace(r, secret_paths=frozenset()))
    assert_fires(violations("no-literal-passwords", plain, "prod"), container.name, "not a secret")


def _first_preview(resource: rules.Resource) -> rules.Resource:
    """A resource as the first preview sees it: passwords, and every credential computed from them, unknown."""
    if resource.type == rules.RANDOM_PASSWORD:
        return dataclasses.replace(resource, props={**resource.props, "result": rules.UNKNOWN})
    if resource.type == rules.CONTAINER and "envs" in resource.props:
        envs = [rules.UNKNOWN if rules._credential_parts(*str(e).partition("=")[::2]) else e for e in resource.props["envs"]]
        return dataclasses.replace(resource, props={**resource.props, "envs": envs})
    return resource


def test_unknown_values_are_not_judged_but_known_literals_are() -> None:
    declared = declared_stack("dev")
    container, index, name = _credential_entry(declared)
    first = [_first_preview(r) for r in to_rules(declared)]
    assert rules.generated_secrets(first) == set()
    assert violations("no-literal-passwords", first, "dev") == []

    def with_literal(r: rules.Resource) -> rules.Resource:
        if r.name != container.name or r.type != rules.CONTAINER:
            return r
        envs = list(r.props["envs"])
        envs[index] = f"{name}=hunter2"
        return dataclasses.replace(r, props={**r.props, "envs": envs})

    found = violations("no-literal-passwords", [with_literal(r) for r in first], "dev")
    assert_fires(found, container.name, name)


def test_gpu_replica_without_gpu_fires() -> None:
    declared = declared_stack("prod")
    replica = declared.replicas()[0]
    broken = mutated(declared, replica.name, lambda r: with_inputs(r, gpus=None, deviceRequests=None))
    assert_fires(violations("gpu-replicas-request-gpu", broken, "prod"), replica.name, "requests no GPU")
    # The same replica outside production is not this policy's business.
    assert violations("gpu-replicas-request-gpu", broken, "dev") == []


def test_cpu_replicas_in_prod_need_no_gpu() -> None:
    declared = declared_stack("prod", {"gpuMode": "none", "gpuDeviceIds": None})
    replicas = [r for r in to_rules(declared) if rules.is_replica(r)]
    assert replicas and not any(rules.requests_gpu(r) for r in replicas)
    assert violations("gpu-replicas-request-gpu", to_rules(declared), "prod") == []
