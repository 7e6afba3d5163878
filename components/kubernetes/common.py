"""What the Kubernetes components share: labels, object metadata, probes, env, quantities, names.

Labels: every object carries the stack and role labels of `stackconfig.names` (the same ones
the Docker target puts on its containers, by which tooling tells roles apart) and the
`app.kubernetes.io/*` ones. Selectors use only the stack, role and, for replicas, group and
weight labels: values that never change for the life of a workload (a Deployment's selector
is immutable).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

import pulumi
import pulumi_kubernetes as k8s

from stackconfig.names import LABEL_ROLE, LABEL_STACK, PROJECT, dns_label
from stackconfig.settings import KubernetesSettings, Settings

# Seconds Kubernetes keeps a container after its stop signal for services other than the replicas
# (which compute theirs from shutdownGraceSeconds).
DEFAULT_STOP_GRACE_S = 30
# Key of the pod annotation that holds a hash of the configuration the pods read: a new value
# rolls the pods (a ConfigMap edit alone does not restart anything).
CONFIG_HASH_ANNOTATION = f"{PROJECT}.io/config-sha256"


def cluster(settings: Settings) -> KubernetesSettings:
    """The Kubernetes settings; the components are only declared when target is kubernetes."""
    assert settings.kubernetes is not None, "Kubernetes components need target: kubernetes"
    return settings.kubernetes


def selector_labels(settings: Settings, role: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels a selector matches: stable for the life of the workload."""
    return {LABEL_STACK: settings.stack, LABEL_ROLE: role, **(extra or {})}


def labels(settings: Settings, role: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **selector_labels(settings, role, extra),
        "app.kubernetes.io/name": role,
        "app.kubernetes.io/instance": settings.stack,
        "app.kubernetes.io/part-of": PROJECT,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def metadata(
    settings: Settings,
    name: str,
    role: str,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> k8s.meta.v1.ObjectMetaArgs:
    """Metadata of a namespaced object: an explicit name (nothing is auto-named) and namespace."""
    return k8s.meta.v1.ObjectMetaArgs(
        name=name,
        namespace=cluster(settings).namespace,
        labels=labels(settings, role, extra_labels),
        annotations=dict(annotations) if annotations else None,
    )


def selector(settings: Settings, role: str, extra: Mapping[str, str] | None = None) -> k8s.meta.v1.LabelSelectorArgs:
    return k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(settings, role, extra))


def http_probe(path: str, port: str, *, period_s: int, failures: int, timeout_s: int = 3) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port),
        period_seconds=period_s,
        failure_threshold=failures,
        timeout_seconds=timeout_s,
    )


def exec_probe(command: list[str], *, period_s: int, failures: int, timeout_s: int = 5) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        exec_=k8s.core.v1.ExecActionArgs(command=command),
        period_seconds=period_s,
        failure_threshold=failures,
        timeout_seconds=timeout_s,
    )


def pre_stop_sleep(seconds: int) -> k8s.core.v1.LifecycleArgs:
    """Keep serving for `seconds` after the pod is marked terminating, while the endpoint
    removal reaches DNS and nginx. The sleep action (Kubernetes >= 1.30) needs no binary in the image."""
    return k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(sleep=k8s.core.v1.SleepActionArgs(seconds=seconds)))


def env(name: str, value: str) -> k8s.core.v1.EnvVarArgs:
    return k8s.core.v1.EnvVarArgs(name=name, value=value)


def secret_env(name: str, secret: str, key: str) -> k8s.core.v1.EnvVarArgs:
    """An env var read from a Secret at pod start: the value is in no pod spec."""
    return k8s.core.v1.EnvVarArgs(
        name=name,
        value_from=k8s.core.v1.EnvVarSourceArgs(secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=secret, key=key)),
    )


def pod_name_env(name: str) -> k8s.core.v1.EnvVarArgs:
    """An env var holding the pod's own name (the downward API)."""
    return k8s.core.v1.EnvVarArgs(
        name=name,
        value_from=k8s.core.v1.EnvVarSourceArgs(field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.name")),
    )


def env_pairs(pairs: list[str]) -> list[k8s.core.v1.EnvVarArgs]:
    """"K=V" strings (the shape the Docker target's helpers produce) as env vars."""
    return [env(*pair.split("=", 1)) for pair in pairs]


def cpu_quantity(cpus: str) -> str:
    """Docker's --cpus as a Kubernetes CPU quantity, in the API server's canonical form:
    whole CPUs as they are ("2"), fractions in millicores ("1.5" -> "1500m")."""
    value = Fraction(cpus)
    if value.denominator == 1:
        return str(value.numerator)
    millis = value * 1000
    assert millis.denominator == 1, f"{cpus} CPUs is not a whole number of millicores (settings check this)"
    return f"{millis.numerator}m"


def memory_quantity(megabytes: int) -> str:
    """Docker's MB (which are MiB: Docker multiplies by 1024*1024) as a Kubernetes quantity."""
    return f"{megabytes}Mi"


def exact_resources(cpu: str, memory: str, extra_limits: Mapping[str, str] | None = None) -> k8s.core.v1.ResourceRequirementsArgs:
    """Requests equal to limits: the pod is in the Guaranteed QoS class, as the Docker limits are
    hard. Extended resources (GPUs) go in limits only; Kubernetes sets the request equal."""
    return k8s.core.v1.ResourceRequirementsArgs(
        requests={"cpu": cpu, "memory": memory},
        limits={"cpu": cpu, "memory": memory, **(extra_limits or {})},
    )


def job_name(prefix: str, tag: str) -> str:
    """A Job named after the image tag it runs: a new tag is a new Job (a Job's pod template
    cannot change), the old one stays as the record of its run."""
    return dns_label(f"{prefix}-{tag}")


def image_tag(image: str) -> str:
    """The tag of `name:tag` (the settings require one)."""
    return image.rsplit(":", 1)[1]


def child(parent: pulumi.Resource, depends_on: list[pulumi.Resource] | None = None) -> pulumi.ResourceOptions:
    """Options of a resource owned by a component: the component's provider comes with the parent."""
    return pulumi.ResourceOptions(parent=parent, depends_on=depends_on)
