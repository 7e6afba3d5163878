"""The manifests of every object the cluster stacks declare: Kubernetes' own schemas (the oldest
supported version and the newest kubernetes-validate ships, strict: no unknown field) and the
semantic checks no schema makes (semantics.py). Each check is shown to fail on a broken copy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from mockrun import DeclaredStack
from mockrun.manifests import manifests

from . import semantics
from .helpers import SECRET_MARKERS

OLDEST = "1.30"
NEWEST = kubernetes_validate.utils.latest_version()
VERSIONS = (OLDEST, NEWEST)
KINDS = {
    "Namespace", "Secret", "ConfigMap", "Service", "Deployment", "StatefulSet", "Job",
    "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
}


def validate(manifest: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


def test_the_newest_schema_is_not_the_oldest() -> None:
    assert tuple(int(x) for x in NEWEST.split(".")[:2]) > (1, 30), NEWEST


def test_every_kind_the_program_declares_is_covered(cluster: DeclaredStack, in_cluster: DeclaredStack, autoscaled: DeclaredStack) -> None:
    declared = {m["kind"] for stack in (cluster, in_cluster, autoscaled) for m in manifests(stack)}
    assert declared == KINDS


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(any_cluster: DeclaredStack, version: str) -> None:
    found = manifests(any_cluster)
    assert len(found) >= 15
    for manifest in found:
        try:
            validate(manifest, version)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{semantics.name_of(manifest)} against {version}: {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("Deployment", lambda m: m["spec"]["template"]["spec"]["containers"][0].update(imagePullPolcy="Always")),  # misspelled field
        ("Deployment", lambda m: m["spec"].update(replicas="three")),
        ("Service", lambda m: m["spec"]["ports"][0].update(port="http")),
        ("Job", lambda m: m["spec"]["template"]["spec"].update(restartPolicy=["Never"])),
        ("PodDisruptionBudget", lambda m: m["spec"].update(maxUnavailable=[1])),
        ("NetworkPolicy", lambda m: m["spec"].update(ingres=[])),
        ("Secret", lambda m: m.update(stringData=[1])),
    ],
)
def test_the_schema_check_fails_on_a_broken_object(cluster: DeclaredStack, version: str, kind: str, break_it: Callable[[dict[str, Any]], None]) -> None:
    original = next(m for m in manifests(cluster) if m["kind"] == kind)
    validate(original, version)
    broken = copy.deepcopy(original)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, version)


@pytest.mark.parametrize("check", sorted(semantics.CHECKS))
def test_semantic_check_passes(any_cluster: DeclaredStack, check: str) -> None:
    found = manifests(any_cluster)
    if check == "no-literal-credentials":
        assert semantics.check_no_literal_credentials(found, SECRET_MARKERS) == []
    else:
        assert semantics.CHECKS[check](found) == []


def _first(found: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    return next(m for m in found if m["kind"] == kind and name_part in m["metadata"]["name"])


def _gpu_request(found: list[dict[str, Any]]) -> None:
    c = _first(found, "Deployment", "replica-w")["spec"]["template"]["spec"]["containers"][0]
    c["resources"]["requests"]["nvidia.com/gpu"] = "1"


def _fractional_gpu(found: list[dict[str, Any]]) -> None:
    c = _first(found, "Deployment", "replica-w")["spec"]["template"]["spec"]["containers"][0]
    c["resources"]["limits"]["nvidia.com/gpu"] = "0.5"


def _request_below_limit(found: list[dict[str, Any]]) -> None:
    c = _first(found, "Deployment", "replica-w")["spec"]["template"]["spec"]["containers"][0]
    c["resources"]["requests"]["cpu"] = "500m"


def _selector_mismatch(found: list[dict[str, Any]]) -> None:
    _first(found, "Deployment", "replica-w")["spec"]["selector"]["matchLabels"]["mlserve.weight"] = "9"


def _service_two_groups(found: list[dict[str, Any]]) -> None:
    del _first(found, "Service", "replica-w")["spec"]["selector"]["mlserve.weight"]


def _service_bad_port(found: list[dict[str, Any]]) -> None:
    _first(found, "Service", "replica-w")["spec"]["ports"][0]["targetPort"] = "metrics"


def _both_zero(found: list[dict[str, Any]]) -> None:
    _first(found, "Deployment", "replica-w")["spec"]["strategy"]["rollingUpdate"].update(maxSurge=0, maxUnavailable=0)


def _pdb_both_bounds(found: list[dict[str, Any]]) -> None:
    _first(found, "PodDisruptionBudget")["spec"]["minAvailable"] = 1


def _hpa_min_above_max(found: list[dict[str, Any]]) -> None:
    hpa = _first(found, "HorizontalPodAutoscaler")
    hpa["spec"]["minReplicas"] = hpa["spec"]["maxReplicas"] + 1


def _hpa_and_replicas(found: list[dict[str, Any]]) -> None:
    _first(found, "Deployment", "replica-w")["spec"]["replicas"] = 2


def _literal_password(found: list[dict[str, Any]]) -> None:
    c = _first(found, "StatefulSet", "mysql")["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [e if e["name"] != "MYSQL_PASSWORD" else {"name": "MYSQL_PASSWORD", "value": "hunter2"} for e in c["env"]]


def _url_password(found: list[dict[str, Any]]) -> None:
    c = _first(found, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    c["env"].append({"name": "MLFLOW_TRACKING_URI", "value": "mysql+pymysql://u:p4ss@db:3306/x"})


def _missing_secret_key(found: list[dict[str, Any]]) -> None:
    del _first(found, "Secret")["stringData"]["backend-store-uri"]


def _short_grace(found: list[dict[str, Any]]) -> None:
    _first(found, "Deployment", "replica-w")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10


def _missing_config_key(found: list[dict[str, Any]]) -> None:
    del _first(found, "ConfigMap")["data"]["nginx.conf"]


def _statefulset_without_governor(found: list[dict[str, Any]]) -> None:
    _first(found, "StatefulSet", "minio")["spec"]["serviceName"] = "minio-gone"


def _other_namespace(found: list[dict[str, Any]]) -> None:
    _first(found, "Service", "mlflow")["metadata"]["namespace"] = "elsewhere"


# (check, the stack fixture to break, how)
BROKEN = [
    ("extended-resources", "cluster", _gpu_request),
    ("extended-resources", "cluster", _fractional_gpu),
    ("extended-resources", "cluster", _request_below_limit),
    ("workload-selectors", "cluster", _selector_mismatch),
    ("services-select-one-workload", "cluster", _service_two_groups),
    ("services-select-one-workload", "cluster", _service_bad_port),
    ("rolling-updates", "cluster", _both_zero),
    ("disruption-budgets", "cluster", _pdb_both_bounds),
    ("autoscalers", "autoscaled", _hpa_min_above_max),
    ("autoscalers", "autoscaled", _hpa_and_replicas),
    ("no-literal-credentials", "in_cluster", _literal_password),
    ("no-literal-credentials", "cluster", _url_password),
    ("no-literal-credentials", "cluster", _missing_secret_key),
    ("termination-grace", "cluster", _short_grace),
    ("config-volumes", "cluster", _missing_config_key),
    ("governing-services", "in_cluster", _statefulset_without_governor),
    ("names-and-namespace", "cluster", _other_namespace),
]


@pytest.mark.parametrize(("check", "fixture", "break_it"), BROKEN, ids=[f"{c}-{f.__name__.strip('_')}" for c, _, f in BROKEN])
def test_semantic_check_fails_on_a_broken_copy(
    request: pytest.FixtureRequest, check: str, fixture: str, break_it: Callable[[list[dict[str, Any]]], None]
) -> None:
    found = manifests(request.getfixturevalue(fixture))
    run = semantics.CHECKS[check]
    assert run(found) == []
    broken = copy.deepcopy(found)
    break_it(broken)
    assert run(broken), f"{check} did not notice {break_it.__name__}"
    # The schema alone passes every broken copy but the structurally invalid ones: that is why the checks exist.


def test_every_semantic_check_has_a_broken_case() -> None:
    assert {check for check, _, _ in BROKEN} == set(semantics.CHECKS)


@pytest.mark.parametrize("break_it", [_gpu_request, _selector_mismatch, _both_zero, _pdb_both_bounds])
def test_the_schemas_pass_what_only_the_semantic_checks_catch(cluster: DeclaredStack, break_it: Callable[[list[dict[str, Any]]], None]) -> None:
    broken = copy.deepcopy(manifests(cluster))
    break_it(broken)
    for manifest in broken:
        for version in VERSIONS:
            validate(manifest, version)


def test_manifests_are_plain_ints_and_unwrapped_secrets(cluster: DeclaredStack) -> None:
    found = manifests(cluster)
    secret = next(m for m in found if m["kind"] == "Secret")
    assert secret["stringData"]["backend-store-uri"].startswith("mysql+pymysql://")
    deployment = _first(found, "Deployment", "replica-w")
    assert isinstance(deployment["spec"]["replicas"], int)
    assert isinstance(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], int)
