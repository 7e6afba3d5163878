"""Model replicas on the Kubernetes target: per replica group and, within it, per weight, one
Deployment, one headless Service, one PodDisruptionBudget and (autoscaleMaxReplicas) one
HorizontalPodAutoscaler, all named `weight_alias(weight, group)` (`replica-w3`, as the Docker
target's network alias). nginx resolves the Service's fully qualified name; a headless Service
answers with the addresses of its Ready pods, so readiness decides nginx membership. A canary or
shadow group is one more group in settings: more of the same objects, no other change here.

Scaling (`pulumi config set replicas 5`) changes `spec.replicas` of the Deployments whose count
changed (or their autoscaler's minimum), and nothing else: no name, label or pod template depends
on the count. A weight that appears is a new Deployment; one that disappears is deleted.

Stopping, in order: the pod is marked terminating and leaves the Service's endpoints; the preStop
sleep (PRE_STOP_S) keeps it serving while that reaches the cluster DNS (its TTL) and nginx (its
resolver validity); then SIGTERM: /ready turns 503 and the replica drains for
shutdownGraceSeconds; Kubernetes kills STOP_MARGIN_S later. Hence
terminationGracePeriodSeconds = PRE_STOP_S + shutdownGraceSeconds + STOP_MARGIN_S.

Rolling updates: maxSurge 1 / maxUnavailable 0 by default (a new pod is Ready before an old one
stops); on a cluster without a spare GPU a surge pod stays Pending, so both are config keys.
The Deployments are chained with depends_on, so that Pulumi rolls one group Deployment at a time
(it waits for each rollout) and at most one surge pod exists at once.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from app import contract
from components.common import type_token
from components.replicas import STOP_MARGIN_S, replica_envs, wait_timeout_s
from nginx.render import RESOLVER_VALID_S
from stackconfig.names import LABEL_GROUP, LABEL_WEIGHT, MLFLOW_PRIVATE_URL, ROLE_REPLICA, weight_alias
from stackconfig.settings import ReplicaGroup, Settings

from .common import (
    child,
    cluster,
    cpu_quantity,
    env_pairs,
    exact_resources,
    http_probe,
    memory_quantity,
    metadata,
    pod_name_env,
    pre_stop_sleep,
    selector_labels,
)
from .tracking import pull_secrets

PORT_NAME = "http"
GPU_RESOURCE = "nvidia.com/gpu"
# The taint NVIDIA's GPU operator and most managed GPU node pools put on GPU nodes.
GPU_TOLERATION = k8s.core.v1.TolerationArgs(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
NODE_TOPOLOGY_KEY = "kubernetes.io/hostname"
# CoreDNS answers for cluster names with a TTL of 5 s (its kubernetes plugin's default).
CLUSTER_DNS_TTL_S = 5
# The endpoint change reaching CoreDNS after the pod is marked terminating.
ENDPOINT_PROPAGATION_S = 5
PRE_STOP_S = RESOLVER_VALID_S + CLUSTER_DNS_TTL_S + ENDPOINT_PROPAGATION_S
# Startup probe: the model download and load may take as long as the Docker target waits for a
# replica (modelLoadTimeoutSeconds plus a probe: components.replicas.wait_timeout_s); probing
# every STARTUP_PERIOD_S sees a quick start quickly.
STARTUP_PERIOD_S = 5


def startup_failures(settings: Settings) -> int:
    return -(-wait_timeout_s(settings) // STARTUP_PERIOD_S)  # rounded up
READY_PERIOD_S = 5
LIVE_PERIOD_S = 10
LIVE_FAILURES = 3
PDB_MAX_UNAVAILABLE = 1
SHM_VOLUME = "dshm"


def termination_grace_s(settings: Settings) -> int:
    return PRE_STOP_S + settings.serving.shutdown_grace_s + STOP_MARGIN_S


def group_weights(group: ReplicaGroup) -> list[tuple[int, int]]:
    """(weight, replica count) of each distinct weight of a group, in order of first appearance."""
    order: list[int] = []
    for weight in group.weights:
        if weight not in order:
            order.append(weight)
    return [(weight, group.weights.count(weight)) for weight in order]


def group_labels(group: ReplicaGroup, weight: int) -> dict[str, str]:
    return {LABEL_GROUP: group.name, LABEL_WEIGHT: str(weight)}


def replica_env(settings: Settings, group: ReplicaGroup) -> list[k8s.core.v1.EnvVarArgs]:
    """The Docker target's replica environment, with the instance id taken from the pod's name."""
    pairs = [p for p in replica_envs(settings, group, "", MLFLOW_PRIVATE_URL) if not p.startswith(f"{contract.ENV_INSTANCE_ID}=")]
    return [*env_pairs(pairs), pod_name_env(contract.ENV_INSTANCE_ID)]


def pod_spec(settings: Settings, group: ReplicaGroup, image: pulumi.Input[str], weight: int) -> k8s.core.v1.PodSpecArgs:
    k = cluster(settings)
    resources = group.resources
    gpu = resources.gpu.mode != "none"
    container = k8s.core.v1.ContainerArgs(
        name="replica",
        image=image,
        command=["python", "-m", contract.REPLICA_MODULE],
        env=replica_env(settings, group),
        ports=[k8s.core.v1.ContainerPortArgs(name=PORT_NAME, container_port=contract.REPLICA_PORT)],
        resources=exact_resources(
            cpu_quantity(resources.cpus),
            memory_quantity(resources.memory_mb),
            # Whole GPUs, in limits only: the request is set equal by Kubernetes.
            {GPU_RESOURCE: str(resources.gpu.count)} if gpu else None,
        ),
        startup_probe=http_probe(contract.ROUTE_READY, PORT_NAME, period_s=STARTUP_PERIOD_S, failures=startup_failures(settings)),
        readiness_probe=http_probe(contract.ROUTE_READY, PORT_NAME, period_s=READY_PERIOD_S, failures=1),
        liveness_probe=http_probe(contract.ROUTE_HEALTH, PORT_NAME, period_s=LIVE_PERIOD_S, failures=LIVE_FAILURES, timeout_s=5),
        lifecycle=pre_stop_sleep(PRE_STOP_S),
        volume_mounts=[k8s.core.v1.VolumeMountArgs(name=SHM_VOLUME, mount_path="/dev/shm")],
    )
    return k8s.core.v1.PodSpecArgs(
        containers=[container],
        termination_grace_period_seconds=termination_grace_s(settings),
        image_pull_secrets=pull_secrets(settings),
        # /dev/shm of replicaShmMb (the container runtime's default is 64 MB). Memory-backed: it
        # counts against the memory limit.
        volumes=[
            k8s.core.v1.VolumeArgs(
                name=SHM_VOLUME,
                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit=memory_quantity(resources.shm_mb)),
            )
        ],
        tolerations=[GPU_TOLERATION] if gpu else None,
        node_selector=dict(k.gpu_node_selector) if gpu and k.gpu_node_selector else None,
        runtime_class_name=k.gpu_runtime_class if gpu else None,
        # Spread the pods of one revision over nodes; ScheduleAnyway: never leave one Pending for it.
        topology_spread_constraints=[
            k8s.core.v1.TopologySpreadConstraintArgs(
                max_skew=1,
                topology_key=NODE_TOPOLOGY_KEY,
                when_unsatisfiable="ScheduleAnyway",
                label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(settings, ROLE_REPLICA, group_labels(group, weight))),
                match_label_keys=["pod-template-hash"],
            )
        ],
    )


class ClusterReplicas(pulumi.ComponentResource):
    deployments: list[k8s.apps.v1.Deployment]
    names: list[str]

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        image: pulumi.Input[str],
        after: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(type_token("ClusterReplicas"), name, None, opts)
        k = cluster(settings)
        self.deployments = []
        self.names = []
        previous = list(after)
        for group in settings.groups:
            for weight, count in group_weights(group):
                alias = weight_alias(weight, group.name)
                extra = group_labels(group, weight)
                match = selector_labels(settings, ROLE_REPLICA, extra)
                deployment = k8s.apps.v1.Deployment(
                    alias,
                    k8s.apps.v1.DeploymentInitArgs(
                        metadata=metadata(settings, alias, ROLE_REPLICA, extra),
                        spec=k8s.apps.v1.DeploymentSpecArgs(
                            # With an autoscaler the Deployment states no count: server-side apply
                            # would otherwise reset what the autoscaler set on every update.
                            replicas=None if k.autoscaling else count,
                            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match),
                            strategy=k8s.apps.v1.DeploymentStrategyArgs(
                                type="RollingUpdate",
                                rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                                    max_surge=k.max_surge, max_unavailable=k.max_unavailable
                                ),
                            ),
                            progress_deadline_seconds=wait_timeout_s(settings) + 60,
                            template=k8s.core.v1.PodTemplateSpecArgs(
                                metadata=k8s.meta.v1.ObjectMetaArgs(labels=metadata(settings, alias, ROLE_REPLICA, extra).labels),
                                spec=pod_spec(settings, group, image, weight),
                            ),
                        ),
                    ),
                    opts=child(self, depends_on=previous),
                )
                k8s.core.v1.Service(
                    f"{alias}-service",
                    k8s.core.v1.ServiceInitArgs(
                        metadata=metadata(settings, alias, ROLE_REPLICA, extra),
                        spec=k8s.core.v1.ServiceSpecArgs(
                            cluster_ip="None",
                            selector=match,
                            ports=[k8s.core.v1.ServicePortArgs(name=PORT_NAME, port=contract.REPLICA_PORT, target_port=PORT_NAME)],
                        ),
                    ),
                    opts=child(self),
                )
                k8s.policy.v1.PodDisruptionBudget(
                    f"{alias}-pdb",
                    k8s.policy.v1.PodDisruptionBudgetInitArgs(
                        metadata=metadata(settings, alias, ROLE_REPLICA, extra),
                        spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                            max_unavailable=PDB_MAX_UNAVAILABLE, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match)
                        ),
                    ),
                    opts=child(self),
                )
                if k.autoscaling:
                    k8s.autoscaling.v2.HorizontalPodAutoscaler(
                        f"{alias}-hpa",
                        k8s.autoscaling.v2.HorizontalPodAutoscalerInitArgs(
                            metadata=metadata(settings, alias, ROLE_REPLICA, extra),
                            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                                    api_version="apps/v1", kind="Deployment", name=alias
                                ),
                                min_replicas=count,
                                max_replicas=k.autoscaling.max_replicas,
                                metrics=[
                                    k8s.autoscaling.v2.MetricSpecArgs(
                                        type="Resource",
                                        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                                            name="cpu",
                                            target=k8s.autoscaling.v2.MetricTargetArgs(
                                                type="Utilization", average_utilization=k.autoscaling.cpu_percent
                                            ),
                                        ),
                                    )
                                ],
                            ),
                        ),
                        opts=child(self, depends_on=[deployment]),
                    )
                self.deployments.append(deployment)
                self.names.append(alias)
                previous = [deployment]
        self.register_outputs({"names": self.names})
