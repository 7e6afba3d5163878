"""The target key and the Kubernetes-only keys: every invalid or target-incompatible value stops
the program naming the key and the reason, before any resource; secrets must be secrets."""

from __future__ import annotations

import pytest

from mockrun import attempt, read_stack_config
from stackconfig import settings
from stackconfig.settings import ConfigError

from .helpers import IN_CLUSTER, SECRETS

# (stack, overrides, secrets, key the message must name, words it must contain)
Case = tuple[str, dict[str, object], dict[str, object], str, tuple[str, ...]]
INVALID: list[Case] = [
    ("dev", {"target": "swarm"}, {}, "target", ("docker, kubernetes",)),
    # Kubernetes-only keys on the Docker target.
    *[("dev", {key: value}, {}, key, ("only used when target is 'kubernetes'",)) for key, value in [
        ("namespace", "ml"), ("imageRegistry", "registry.example.com/ml"), ("inClusterStores", True),
        ("inClusterStores", False), ("s3Endpoint", "https://s3.example.com"), ("replicaMaxSurge", 0),
        ("autoscaleMaxReplicas", 4), ("balancerServiceType", "LoadBalancer"), ("gpuNodeSelector", ["a=b"]),
        ("clusterDomain", "example.org"), ("clusterDns", "10.96.0.10"),
    ]],
    ("dev", {}, {"databaseUrl": "mysql+pymysql://u:p@h/db"}, "databaseUrl", ("only used when target is 'kubernetes'",)),
    ("dev", {}, {"kubeconfig": "apiVersion: v1"}, "kubeconfig", ("only used when target is 'kubernetes'",)),
    # Docker-only keys and values on the Kubernetes target.
    ("cluster", {"dockerHost": "ssh://deploy@gpu-box"}, SECRETS, "dockerHost", ("not used when target is 'kubernetes'", "kubeconfig")),
    ("cluster", {"mlflowUiPort": 5000}, SECRETS, "mlflowUiPort", ("not used when target is 'kubernetes'", "port-forward")),
    ("cluster", {"balancerBindIp": "127.0.0.1"}, SECRETS, "balancerBindIp", ("not used when target is 'kubernetes'", "balancerServiceType")),
    ("cluster", {"healthIntervalSeconds": 2}, SECRETS, "healthIntervalSeconds", ("not used when target is 'kubernetes'", "probes")),
    ("cluster", {"balancerWorkerProcesses": "1"}, SECRETS, "balancerWorkerProcesses", ("not used when target is 'kubernetes'", "one per CPU of the pod")),
    ("cluster", {"replicaCpuSet": "0-3"}, SECRETS, "replicaCpuSet", ("not used when target is 'kubernetes'", "static CPU manager")),
    ("cluster", {"balancerCpuSet": "0"}, SECRETS, "balancerCpuSet", ("not used when target is 'kubernetes'", "static CPU manager")),
    ("cluster", {"gpuMode": "all"}, SECRETS, "gpuMode", ("Docker-only", "gpuMode count")),
    ("cluster", {"gpuMode": "devices", "gpuDeviceIds": ["0", "1"]}, SECRETS, "gpuMode", ("Docker-only", "device plugin")),
    ("cluster", {"gpuDeviceIds": ["0"]}, SECRETS, "gpuDeviceIds", ("not used when target is 'kubernetes'",)),
    # Required on Kubernetes.
    ("cluster", {"imageRegistry": None}, SECRETS, "imageRegistry", ("required",)),
    ("cluster", {}, {}, "databaseUrl", ("required", "inClusterStores", "--secret")),
    ("cluster", {"s3Endpoint": None}, SECRETS, "s3Endpoint", ("required",)),
    ("cluster", {}, {k: v for k, v in SECRETS.items() if k != "s3SecretAccessKey"}, "s3SecretAccessKey", ("required",)),
    # Secrets must be secrets.
    ("cluster", {"databaseUrl": SECRETS["databaseUrl"]}, {}, "databaseUrl", ("must be set as a secret", "--secret databaseUrl")),
    ("cluster", {**IN_CLUSTER, "kubeconfig": "apiVersion: v1"}, {}, "kubeconfig", ("must be set as a secret",)),
    # Values.
    ("cluster", {}, {**SECRETS, "databaseUrl": "postgresql://u:topsecret@h/db"}, "databaseUrl", ("mysql+pymysql://", "not shown")),
    ("cluster", {"s3Endpoint": "s3.example.com"}, SECRETS, "s3Endpoint", ("http:// or https://",)),
    ("cluster", {"imageRegistry": "https://registry.example.com"}, SECRETS, "imageRegistry", ("registry host",)),
    ("cluster", {"namespace": "ML_Serving"}, SECRETS, "namespace", ("DNS label",)),
    ("cluster", {"clusterDomain": "Cluster.Local"}, SECRETS, "clusterDomain", ("DNS name",)),
    ("cluster", {"clusterDns": "10.96.0.10:99999"}, SECRETS, "clusterDns", ("IPv4 address or a DNS name",)),
    ("cluster", {"imagePullSecret": "pull"}, SECRETS, "imagePullSecret", ("needs 'namespace'",)),
    ("cluster", {"balancerServiceType": "Ingress"}, SECRETS, "balancerServiceType", ("ClusterIP, NodePort, LoadBalancer",)),
    ("cluster", {"replicaMaxSurge": 0, "replicaMaxUnavailable": 0}, SECRETS, "replicaMaxUnavailable", ("at least 1",)),
    ("cluster", {"replicaMaxSurge": 101}, SECRETS, "replicaMaxSurge", ("0 to 100",)),
    ("cluster", {"autoscaleMaxReplicas": 0}, SECRETS, "autoscaleMaxReplicas", ("1 to 200",)),
    ("cluster", {"replicas": 4, "weights": [1, 1, 1, 2], "autoscaleMaxReplicas": 2}, SECRETS, "autoscaleMaxReplicas", ("at least", "(3")),
    ("cluster", {"autoscaleCpuPercent": 50}, SECRETS, "autoscaleCpuPercent", ("only used with autoscaleMaxReplicas",)),
    ("cluster", {"autoscaleMaxReplicas": 5, "autoscaleCpuPercent": 5}, SECRETS, "autoscaleCpuPercent", ("10 to 100",)),
    ("cluster", {"replicaCpus": "0.0005"}, SECRETS, "replicaCpus", ("multiple of 0.001",)),
    ("cluster", {"gpuMode": "none", "gpuCount": None}, SECRETS, "gpuNodeSelector", ("only used with gpuMode count",)),
    ("cluster", {"gpuRuntimeClass": "Nvidia_Runtime"}, SECRETS, "gpuRuntimeClass", ("DNS name",)),
    ("cluster", {"gpuNodeSelector": ["gpu"]}, SECRETS, "gpuNodeSelector", ("key=value",)),
    ("cluster", {"gpuNodeSelector": ["a=b", "a=c"]}, SECRETS, "gpuNodeSelector", ("twice",)),
    ("cluster", {"storageClass": "fast"}, SECRETS, "storageClass", ("only used with inClusterStores",)),
    ("cluster", {**IN_CLUSTER, "s3Endpoint": "https://s3.example.com"}, {}, "s3Endpoint", ("not used with inClusterStores",)),
    ("cluster", IN_CLUSTER, {"databaseUrl": SECRETS["databaseUrl"]}, "databaseUrl", ("not used with inClusterStores",)),
    ("cluster", {**IN_CLUSTER, "mysqlStorageGi": 0}, {}, "mysqlStorageGi", ("1 to 65536",)),
    ("cluster", {"inClusterStores": "sometimes"}, SECRETS, "inClusterStores", ("true or false",)),
]


@pytest.mark.parametrize(("stack", "overrides", "secrets", "key", "words"), INVALID, ids=[f"{c[3]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_or_incompatible_key_fails_naming_it_and_registers_nothing(
    stack: str, overrides: dict[str, object], secrets: dict[str, object], key: str, words: tuple[str, ...]
) -> None:
    result = attempt(stack, overrides, secrets=secrets)
    assert isinstance(result.error, ConfigError), f"expected a ConfigError, got {result.error!r}"
    assert result.error.key == key, str(result.error)
    message = str(result.error)
    assert f"'{key}'" in message
    for word in words:
        assert word in message, f"{message!r} should mention {word!r}"
    assert len(result.declared) == 0, f"registered before failing: {[r.name for r in result.declared]}"


def test_an_invalid_secret_is_not_echoed() -> None:
    result = attempt("cluster", secrets={**SECRETS, "databaseUrl": "postgresql://u:topsecret@h/db"})
    assert isinstance(result.error, ConfigError) and "topsecret" not in str(result.error)


def test_the_failing_cases_fail_because_of_their_values() -> None:
    """The same stacks with valid values register."""
    assert attempt("cluster", secrets=SECRETS).error is None
    assert attempt("cluster", IN_CLUSTER).error is None
    assert attempt("dev").error is None


def test_target_defaults_to_docker_and_the_docker_stacks_are_unchanged() -> None:
    assert settings.DEFAULTS["target"] == "docker"
    for stack in ("dev", "prod"):
        parsed = attempt(stack).declared.settings()
        assert parsed.target == "docker" and parsed.kubernetes is None


def test_kubernetes_only_keys_are_described_so_and_have_no_default() -> None:
    """The list in settings and the descriptions in Pulumi.yaml agree; without a default, "set"
    means set by the user, which is what the Docker target's check needs."""
    marked = {key for key, spec in settings.SCHEMA.items() if spec.description.startswith("Kubernetes only")}
    assert marked == set(settings.KUBERNETES_ONLY_KEYS)
    for key in settings.KUBERNETES_ONLY_KEYS:
        assert settings.SCHEMA[key].default is None, key


def test_secret_keys_are_the_credentials() -> None:
    secret = {key for key, spec in settings.SCHEMA.items() if spec.secret}
    assert secret == {"kubeconfig", "databaseUrl", "s3AccessKeyId", "s3SecretAccessKey", "tlsKey"}


def test_example_cluster_stack_sets_kubernetes_and_no_secret() -> None:
    _, values = read_stack_config("cluster")
    assert values["target"] == "kubernetes"
    assert not {key for key in values if settings.SCHEMA[key].secret}


def test_settings_repr_hides_secrets() -> None:
    parsed = attempt("cluster", secrets=SECRETS).declared.settings()
    assert parsed.kubernetes is not None
    text = repr(parsed)
    assert all(str(value) not in text for value in SECRETS.values())
    assert "s3.eu-west-1.amazonaws.com" in text  # the rest is shown


def test_kubernetes_defaults() -> None:
    parsed = attempt("cluster", IN_CLUSTER).declared.settings()
    k = parsed.kubernetes
    assert k is not None
    assert k.namespace == "mlserve-cluster" and k.create_namespace
    assert k.cluster_domain == "cluster.local" and k.dns_resolver == "kube-dns.kube-system.svc.cluster.local"
    assert (k.max_surge, k.max_unavailable) == (1, 0)
    assert k.autoscaling is None and k.balancer_service_type == "LoadBalancer"
    assert isinstance(k.stores, settings.InClusterStores) and (k.stores.mysql_storage_gi, k.stores.minio_storage_gi) == (10, 50)
    other = attempt("cluster", {**IN_CLUSTER, "clusterDomain": "corp.example", "namespace": "ml"}).declared.settings().kubernetes
    assert other is not None
    assert other.dns_resolver == "kube-dns.kube-system.svc.corp.example" and not other.create_namespace


def test_example_cluster_stack_uses_known_keys_with_schema_types() -> None:
    types = {"string": str, "integer": int, "boolean": bool, "array": list}
    _, values = read_stack_config("cluster")
    for key, value in values.items():
        assert key in settings.SCHEMA, f"Pulumi.cluster.yaml sets unknown key {key}"
        declared = settings.SCHEMA[key].type
        assert declared is None or isinstance(value, types[declared]), f"Pulumi.cluster.yaml: {key}={value!r}"
