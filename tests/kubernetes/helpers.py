"""Shared helpers of the Kubernetes target's tests."""

from __future__ import annotations

from typing import Any

from mockrun import DeclaredResource, DeclaredStack, run_program

# The external stores' credentials, as `pulumi config set --secret` would hand them over.
SECRETS: dict[str, object] = {
    "databaseUrl": "mysql+pymysql://mlflow:db-secret-pw@db.internal:3306/mlflow",
    "s3AccessKeyId": "AKIAEXAMPLEKEYID",
    "s3SecretAccessKey": "s3/secret+access-key",
}
SECRET_MARKERS = ("db-secret-pw", "AKIAEXAMPLEKEYID", "s3/secret+access-key", "s3%2Fsecret", "mock-password-", "mock-string-minio-user")
# Pulumi.cluster.yaml with in-cluster stores (its external store keys removed).
IN_CLUSTER: dict[str, object] = {"inClusterStores": True, "s3Endpoint": None}
HPA: dict[str, object] = {"autoscaleMaxReplicas": 6, "autoscaleCpuPercent": 60}
CPU_IN_CLUSTER: dict[str, object] = {
    **IN_CLUSTER,
    "gpuMode": None,
    "gpuCount": None,
    "gpuNodeSelector": None,
    "replicas": 2,
    "weights": None,
    "namespace": "ml-serving",
    "imagePullSecret": "registry-pull",
    "balancerServiceType": None,
    "storageClass": "fast-ssd",
    "trainDemoModel": False,
}


def declared(stack: str, overrides: dict[str, object], secrets: dict[str, object] | None = None) -> DeclaredStack:
    result = run_program(stack, overrides, secrets=secrets)
    # A mock test must be able to fail: a program that registered nothing passes nothing.
    assert result.kubernetes("Deployment"), f"stack {stack} {overrides} declared no Deployment"
    return result


def kind_of(resource: DeclaredResource) -> str:
    return resource.type.rsplit(":", 1)[1]


def obj(stack: DeclaredStack, kind: str, name: str) -> DeclaredResource:
    """The object of `kind` whose metadata.name is `name`."""
    found = [r for r in stack.kubernetes(kind) if r.inputs["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {[r.inputs['metadata']['name'] for r in stack.kubernetes(kind)]}"
    return found[0]


def pod_spec(resource: DeclaredResource) -> dict[str, Any]:
    spec: dict[str, Any] = resource.inputs["spec"]["template"]["spec"]
    return spec


def container(resource: DeclaredResource) -> dict[str, Any]:
    (only,) = pod_spec(resource)["containers"]
    return dict(only)


def env_values(container_spec: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or -> {"secret": (name, key)} / {"field": path} for valueFrom."""
    out: dict[str, Any] = {}
    for item in container_spec.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            out[item["name"]] = item["value"]
        elif "secretKeyRef" in source:
            out[item["name"]] = {"secret": (source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])}
        else:
            out[item["name"]] = {"field": source["fieldRef"]["fieldPath"]}
    return out


def replica_deployments(stack: DeclaredStack) -> list[DeclaredResource]:
    """The replica group Deployments, in the order the program declares them."""
    return [r for r in stack.resources if r.type == "kubernetes:apps/v1:Deployment" and r.parent == "replicas"]
