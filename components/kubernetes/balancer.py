"""nginx on the Kubernetes target: a ConfigMap with the rendered conf, a Deployment of two pods,
a PodDisruptionBudget and the Service `balancer`, the stack's one entry point.

The conf is `nginx.render.render(settings)` for the cluster (its resolver and fully qualified
group names); it depends on neither the replica count nor the weights, so scaling never touches
the balancer. A ConfigMap edit alone restarts nothing: the pods carry a hash of the conf as an
annotation, so a changed conf is a changed pod template, which rolls the pods (one at a time:
maxSurge 1, maxUnavailable 0).
"""

from __future__ import annotations

import hashlib

import pulumi
import pulumi_kubernetes as k8s

import nginx.render as nginx_render
from app import contract
from components.balancer import STOP_GRACE_S
from components.common import type_token
from stackconfig.names import ROLE_BALANCER
from stackconfig.settings import Settings

from .common import CONFIG_HASH_ANNOTATION, child, cluster, exact_resources, http_probe, metadata, pre_stop_sleep, selector

CONFIG_MAP = "balancer-conf"
PORT_NAME = "http"
POD_REPLICAS = 2
PDB_MAX_UNAVAILABLE = 1
# A stopping pod leaves the Service's endpoints; the preStop sleep covers the time until every
# node's proxy has noticed. Then nginx's graceful quit (the image's STOPSIGNAL, SIGQUIT).
PRE_STOP_S = 5
RESOURCES = exact_resources(str(nginx_render.CLUSTER_WORKER_PROCESSES), "512Mi")
CONF_VOLUME = "conf"


def conf_files(settings: Settings) -> dict[str, str]:
    """ConfigMap key -> content: the main conf and the stub_status snippet."""
    return {
        nginx_render.CONF_FILE: nginx_render.render(settings),
        nginx_render.STATUS_FILE: nginx_render.render_status(settings),
    }


def conf_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + files[key].encode() + b"\0")
    return digest.hexdigest()


class ClusterBalancer(pulumi.ComponentResource):
    service: k8s.core.v1.Service

    def __init__(self, name: str, *, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token("ClusterBalancer"), name, None, opts)
        k = cluster(settings)
        files = conf_files(settings)
        self.config_map = k8s.core.v1.ConfigMap(
            CONFIG_MAP,
            k8s.core.v1.ConfigMapInitArgs(metadata=metadata(settings, CONFIG_MAP, ROLE_BALANCER), data=files),
            opts=child(self),
        )
        conf_dir = nginx_render.CONF_DIR_IN_CONTAINER
        mounts = [
            k8s.core.v1.VolumeMountArgs(
                name=CONF_VOLUME, mount_path=f"{conf_dir}/{nginx_render.CONF_FILE}", sub_path=nginx_render.CONF_FILE, read_only=True
            ),
            k8s.core.v1.VolumeMountArgs(
                name=CONF_VOLUME,
                mount_path=f"{conf_dir}/{nginx_render.STATUS_DIR}/{nginx_render.STATUS_FILE}",
                sub_path=nginx_render.STATUS_FILE,
                read_only=True,
            ),
        ]
        health = http_probe(nginx_render.HEALTH_ROUTE, PORT_NAME, period_s=10, failures=3)
        self.deployment = k8s.apps.v1.Deployment(
            "balancer",
            k8s.apps.v1.DeploymentInitArgs(
                metadata=metadata(settings, "balancer", ROLE_BALANCER),
                spec=k8s.apps.v1.DeploymentSpecArgs(
                    replicas=POD_REPLICAS,
                    selector=selector(settings, ROLE_BALANCER),
                    strategy=k8s.apps.v1.DeploymentStrategyArgs(
                        type="RollingUpdate",
                        rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
                    ),
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(
                            labels=metadata(settings, "balancer", ROLE_BALANCER).labels,
                            annotations={CONFIG_HASH_ANNOTATION: conf_hash(files)},
                        ),
                        spec=k8s.core.v1.PodSpecArgs(
                            termination_grace_period_seconds=PRE_STOP_S + STOP_GRACE_S,
                            containers=[
                                k8s.core.v1.ContainerArgs(
                                    name="nginx",
                                    image=settings.images.nginx,
                                    ports=[k8s.core.v1.ContainerPortArgs(name=PORT_NAME, container_port=contract.BALANCER_PORT)],
                                    volume_mounts=mounts,
                                    resources=RESOURCES,
                                    readiness_probe=health,
                                    liveness_probe=health,
                                    lifecycle=pre_stop_sleep(PRE_STOP_S),
                                )
                            ],
                            volumes=[
                                k8s.core.v1.VolumeArgs(
                                    name=CONF_VOLUME, config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=CONFIG_MAP)
                                )
                            ],
                            topology_spread_constraints=[
                                k8s.core.v1.TopologySpreadConstraintArgs(
                                    max_skew=1,
                                    topology_key="kubernetes.io/hostname",
                                    when_unsatisfiable="ScheduleAnyway",
                                    label_selector=selector(settings, ROLE_BALANCER),
                                    match_label_keys=["pod-template-hash"],
                                )
                            ],
                        ),
                    ),
                ),
            ),
            opts=child(self, depends_on=[self.config_map]),
        )
        k8s.policy.v1.PodDisruptionBudget(
            "balancer-pdb",
            k8s.policy.v1.PodDisruptionBudgetInitArgs(
                metadata=metadata(settings, "balancer", ROLE_BALANCER),
                spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(max_unavailable=PDB_MAX_UNAVAILABLE, selector=selector(settings, ROLE_BALANCER)),
            ),
            opts=child(self),
        )
        self.service = k8s.core.v1.Service(
            "balancer-service",
            k8s.core.v1.ServiceInitArgs(
                metadata=metadata(settings, contract.BALANCER_HOST, ROLE_BALANCER),
                spec=k8s.core.v1.ServiceSpecArgs(
                    type=k.balancer_service_type,
                    selector=selector(settings, ROLE_BALANCER).match_labels,
                    ports=[k8s.core.v1.ServicePortArgs(name=PORT_NAME, port=settings.balancer.port, target_port=PORT_NAME)],
                ),
            ),
            opts=child(self),
        )
        self.register_outputs({"service": contract.BALANCER_HOST})
