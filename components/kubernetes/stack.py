"""The serving stack on a Kubernetes cluster, from the same settings as the Docker target.

One explicit `kubernetes.Provider` (kubeconfig from the `kubeconfig` secret or the environment;
the namespace of the stack as its default) is handed to every component, whose resources inherit
it: no resource falls back to a default provider and its ambient kubeconfig context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from app import contract
from stackconfig.names import LABEL_ROLE, LABEL_STACK, PROJECT, ROLE_BALANCER, service_host
from stackconfig.settings import InClusterStores, Settings

from .balancer import PORT_NAME as BALANCER_PORT_NAME
from .balancer import ClusterBalancer
from .common import cluster, metadata, selector_labels
from .images import PushedImages
from .replicas import ClusterReplicas
from .stores import ClusterStores
from .tracking import ClusterTracking


@dataclass(frozen=True)
class ClusterServing:
    provider: k8s.Provider
    namespace: str
    stores: ClusterStores
    images: PushedImages
    tracking: ClusterTracking
    replicas: ClusterReplicas
    balancer: ClusterBalancer


def entry_url(settings: Settings) -> str:
    """The balancer's URL inside the cluster (any namespace)."""
    k = cluster(settings)
    return f"http://{service_host(contract.BALANCER_HOST, k.namespace, k.cluster_domain)}:{settings.balancer.port}"


def mlflow_url(settings: Settings) -> str:
    k = cluster(settings)
    return f"http://{service_host(contract.MLFLOW_HOST, k.namespace, k.cluster_domain)}:{contract.MLFLOW_PORT}"


def _network_policies(settings: Settings, opts: pulumi.ResourceOptions) -> None:
    """Only nginx is reachable from outside: every other pod of the stack accepts traffic from the
    stack's own pods only; the balancer pods accept anyone on their HTTP port. (Ingress only:
    the stores may be outside the cluster, and the replicas reach MLflow, which reaches S3.)"""
    stack_pods = k8s.meta.v1.LabelSelectorArgs(match_labels={LABEL_STACK: settings.stack})
    k8s.networking.v1.NetworkPolicy(
        "internal-only",
        k8s.networking.v1.NetworkPolicyInitArgs(
            metadata=metadata(settings, "internal-only", "network-policy"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={LABEL_STACK: settings.stack},
                    match_expressions=[
                        k8s.meta.v1.LabelSelectorRequirementArgs(key=LABEL_ROLE, operator="NotIn", values=[ROLE_BALANCER])
                    ],
                ),
                policy_types=["Ingress"],
                ingress=[k8s.networking.v1.NetworkPolicyIngressRuleArgs(from_=[k8s.networking.v1.NetworkPolicyPeerArgs(pod_selector=stack_pods)])],
            ),
        ),
        opts=opts,
    )
    k8s.networking.v1.NetworkPolicy(
        "balancer-ingress",
        k8s.networking.v1.NetworkPolicyInitArgs(
            metadata=metadata(settings, "balancer-ingress", "network-policy"),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(settings, ROLE_BALANCER)),
                policy_types=["Ingress"],
                ingress=[
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        ports=[k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=BALANCER_PORT_NAME)]
                    )
                ],
            ),
        ),
        opts=opts,
    )


def declare(settings: Settings) -> ClusterServing:
    k = cluster(settings)
    provider = k8s.Provider(
        "cluster",
        k8s.ProviderArgs(
            kubeconfig=pulumi.Output.secret(k.kubeconfig.value) if k.kubeconfig else None,
            namespace=k.namespace,
            # Server-side apply (the default of pulumi-kubernetes 4, stated here because the
            # autoscaler rule depends on it: a Deployment under an HPA states no replica count).
            enable_server_side_apply=True,
        ),
    )
    depends: list[pulumi.Resource] = []
    if k.create_namespace:
        namespace = k8s.core.v1.Namespace(
            "namespace",
            k8s.core.v1.NamespaceInitArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=k.namespace, labels={LABEL_STACK: settings.stack, "app.kubernetes.io/part-of": PROJECT}
                )
            ),
            # Deleting a namespace deletes the volume claims in it: protectData keeps it.
            opts=pulumi.ResourceOptions(
                provider=provider, protect=settings.protect_data, retain_on_delete=settings.protect_data
            ),
        )
        depends.append(namespace)
    opts = pulumi.ResourceOptions(providers={"kubernetes": provider}, depends_on=depends)
    _network_policies(settings, pulumi.ResourceOptions(provider=provider, depends_on=depends))
    stores = ClusterStores("stores", settings=settings, opts=opts)
    images = PushedImages("images", settings=settings)
    tracking = ClusterTracking(
        "tracking",
        settings=settings,
        image=images.tracking,
        image_tag=images.tracking_tag,
        replica_image=images.replica,
        replica_image_tag=images.replica_tag,
        stores=stores.refs,
        depends_on=stores.ready,
        opts=opts,
    )
    replicas = ClusterReplicas(
        "replicas",
        settings=settings,
        image=images.replica,
        # Replicas are ready only once a model is registered: after the demo job if any.
        after=[tracking.trainer if tracking.trainer else tracking.deployment],
        opts=opts,
    )
    balancer = ClusterBalancer("balancer", settings=settings, opts=opts)
    return ClusterServing(provider, k.namespace, stores, images, tracking, replicas, balancer)


def exports(settings: Settings, serving: ClusterServing) -> dict[str, Any]:
    """The Docker target's outputs, in cluster terms: the entry URL (the load balancer's address
    for a LoadBalancer Service once it has one, else the in-cluster URL), the MLflow URL inside
    the cluster, the replica Deployments, the namespace in place of the network, and the
    generated store credentials (in-cluster stores only) as secrets."""
    fallback = entry_url(settings)
    port = settings.balancer.port

    def from_status(status: k8s.core.v1.outputs.ServiceStatus | None) -> str:
        balancer = status.load_balancer if status is not None else None
        for ingress in (balancer.ingress if balancer is not None else None) or []:
            host = ingress.hostname or ingress.ip
            if host:
                return f"http://{host}:{port}"
        return fallback

    entry: Any = fallback
    if cluster(settings).balancer_service_type == "LoadBalancer":
        entry = serving.balancer.service.status.apply(from_status)
    outputs: dict[str, Any] = {
        "entryUrl": entry,
        "mlflowUrl": mlflow_url(settings),
        "replicaNames": serving.replicas.names,
        "networkName": serving.namespace,
        "namespace": serving.namespace,
    }
    if isinstance(cluster(settings).stores, InClusterStores):
        outputs.update(serving.stores.generated)
    return outputs
