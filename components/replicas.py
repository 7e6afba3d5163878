"""N model replicas serving `models:/<name>@<alias>`, GPU-aware, that roll one at a time.

Naming
    Pulumi name `replica-<i>` (i from 0), container name `mlserve-<stack>-replica-<i>`.
    Each replica joins the private network with the aliases `replica-<i>` and
    `replica-w<W>` (W = its weight); nginx resolves the weight aliases at run time, so the
    balancer never takes a replica output and never changes when replicas come and go.
    Replicas of a named group (`groups`: canary, shadow) are `replica-<group>-<i>` with the
    alias `replica-<group>-w<W>` (stackconfig/names.py); the default group keeps the names
    above, so stacks made before groups keep every container.

What happens when several replicas must be replaced (an image rebuild, a new imageTag,
another modelAlias, new resource limits)
    Facts (pulumi-docker 5.2 / pulumi 3.27x; read in the sources, see ../shared/ARCHITECTURE.md,
    and pulumi/pulumi#838, #2167, #19056):
    - pulumi-docker marks every `Container` delete-before-replace: the old container is
      stopped and removed before its replacement is created. A replacement is downtime for
      that one container.
    - The engine runs independent steps in parallel (by default 4 x cores). Without
      ordering, an image change would delete every replica at about the same moment.
    - `depends_on` orders them: the SDK sends replica i+1's registration only once
      replica i's URN is known, and the engine answers a registration only when its step
      (here: delete, then create) has finished. With `wait=True` the provider's create
      returns only once Docker reports the container "healthy" (healthcheck on /ready,
      which the replica passes once its model is loaded), bounded by `wait_timeout`.
    - A resource linked to a replaced one only by `depends_on` is not deleted with it
      (its inputs do not change): replica i+1 keeps serving while replica i is replaced.
    What this program does with that
    - replica-0 depends on the demo-model job (or the MLflow server), replica-i on
      replica-(i-1); each named group has its own chain from the same start, so groups
      roll side by side and never wait for (or change) one another; every replica has a healthcheck on /ready, `wait=True` and
      `wait_timeout=wait_timeout_s(settings)` (modelLoadTimeoutSeconds plus a probe). An image change therefore replaces replica-0, waits
      until the new one is ready, then replica-1, and so on: at most one replica is down
      at any time, and nginx (max_fails, proxy_next_upstream) routes around it.
    What it does not do, and the costs
    - The first `pulumi up` creates replicas one after another too (N x start time).
    - If a new replica does not become healthy within wait_timeout_s, the update stops
      with that one replica down and the others untouched (still on the old image);
      fix and run `pulumi up` again.
    - Scaling up adds replicas at the end of the chain and touches no existing one;
      scaling down removes the highest indexes.
    - Changing one replica's weight changes its weight alias, so only that replica is
      replaced (its neighbours' inputs do not change).
    - None of this was run against a Docker engine here (none is available); the mock
      tests assert the declared chain, healthcheck, wait and timeouts.

Stopping
    `destroy_grace_seconds` (pulumi-docker's stop timeout on delete; unset means an
    immediate kill) and `stop_timeout` are shutdownGraceSeconds + 5: the replica stops
    taking requests on SIGTERM and drains for shutdownGraceSeconds, Docker kills 5 s later.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

import nginx.render as nginx_render
from app import contract
from components.common import REPLICA_PROBE, healthcheck, service_container, type_token
from stackconfig.names import ROLE_REPLICA, container_name, replica_resource, weight_alias
from stackconfig.settings import GROUP_SHADOW, GpuSettings, ReplicaGroup, Settings

# The replica image's HEALTHCHECK uses the same probe and timings, with the default
# healthIntervalSeconds (a test compares them).
HEALTH_TIMEOUT_S = 5


def start_period_s(settings: Settings) -> int:
    """The healthcheck's start period: modelLoadTimeoutSeconds. Docker does not count failed
    probes during it, and with start_interval it probes every 2 s meanwhile, so a quick start
    is seen quickly."""
    return settings.serving.model_load_timeout_s


def wait_timeout_s(settings: Settings) -> int:
    """How long `pulumi up` waits for a new replica to be healthy (and a rollout per replica):
    the model load timeout, plus one probe interval and timeout for the probe that sees it
    ready (below Docker 25, start_interval is ignored and probes come every interval)."""
    return settings.serving.model_load_timeout_s + settings.health_interval_s + HEALTH_TIMEOUT_S


HEALTH_RETRIES = 3
STOP_MARGIN_S = 5
NVIDIA_DRIVER = "nvidia"


def replica_envs(settings: Settings, group: ReplicaGroup, instance_id: str, tracking_url: str) -> list[str]:
    serving = settings.serving
    envs = [
        f"{contract.ENV_TRACKING_URI}={tracking_url}",
        f"{contract.ENV_MODEL_NAME}={group.model.name}",
        f"{contract.ENV_MODEL_ALIAS}={group.model.alias}",
        f"{contract.ENV_GROUP}={group.name}",
        f"{contract.ENV_INSTANCE_ID}={instance_id}",
        f"{contract.ENV_BIND_HOST}=0.0.0.0",
        f"{contract.ENV_PORT}={contract.REPLICA_PORT}",
        f"{contract.ENV_POLL_INTERVAL_S}={serving.poll_interval_s:g}",
        f"{contract.ENV_MAX_BATCH_SIZE}={serving.max_batch_size}",
        f"{contract.ENV_MAX_BATCH_WAIT_MS}={serving.max_batch_wait_ms:g}",
        f"{contract.ENV_MAX_QUEUE}={serving.max_queue}",
        f"{contract.ENV_MAX_BODY_BYTES}={serving.max_body_mb * 2**20}",
        f"{contract.ENV_SCORING_TIMEOUT_S}={serving.scoring_timeout_s}",
        f"{contract.ENV_SHUTDOWN_GRACE_S}={serving.shutdown_grace_s}",
        f"{contract.ENV_DEVICE}={contract.DEVICE_AUTO}",
        f"{contract.ENV_PREDICT_KERNELS}={'true' if serving.predict_kernels else 'false'}",
        f"{contract.ENV_PAYLOAD_LOG_PERCENT}={serving.payload_log_percent:g}",
        f"{contract.ENV_ROTATION_GRACE_S}={rotation_grace_s(settings)}",
    ]
    if group.role == GROUP_SHADOW:
        # A shadow scores each copy with the primary's alias too and counts where they agree.
        envs.append(f"{contract.ENV_COMPARE_ALIAS}={settings.default_group.model.alias}")
    workers = group.resources.workers
    if workers != 1:
        # Absent for one process (the replica's own default), so that replicas of stacks from
        # before the key keep their inputs.
        envs.append(f"{contract.ENV_WORKERS}={workers if workers is not None else contract.WORKERS_PER_GPU}")
    return envs


def rotation_grace_s(settings: Settings) -> int:
    """How long after its model loaded a replica without traffic is taken to be in rotation.

    Healthy must mean in nginx's rotation, or a rollout stops the next replica while the new
    one is still shut out: nginx counts the 503s a loading replica answers (Docker's DNS names
    it from its start) and skips it for fail_timeout, and finds an address change within its
    DNS refresh period. The probe (app/server/probe.py) calls the replica healthy once it has
    answered an invocation, or once this much time has passed since its model loaded."""
    return settings.balancer.fail_timeout_s + nginx_render.RESOLVER_VALID_S + 1


def gpu_args(gpu: GpuSettings, index: int) -> tuple[str | None, list[docker.ContainerDeviceRequestArgs] | None]:
    """(gpus, device_requests) of one replica; pulumi-docker rejects both set at once."""
    if gpu.mode == "none":
        return None, None
    if gpu.mode == "all":
        return "all", None
    request = docker.ContainerDeviceRequestArgs(driver=NVIDIA_DRIVER, capabilities=["gpu"])
    if gpu.mode == "count":
        request.count = gpu.count
    else:  # "devices": gpuCount ids per replica, round-robin over gpuDeviceIds
        request.device_ids = list(gpu.devices_for(index))
    return None, [request]


class ModelReplicas(pulumi.ComponentResource):
    containers: list[docker.Container]
    names: list[pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        image: pulumi.Input[str],
        network: pulumi.Input[str],
        tracking_url: str,
        after: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(type_token("ModelReplicas"), name, None, opts)
        self.containers = []
        stop_s = settings.serving.shutdown_grace_s + STOP_MARGIN_S
        for group in settings.groups:
            resources = group.resources
            # Each group rolls in its own chain from `after`: adding, resizing or removing a
            # group changes no input or dependency of another group's replicas.
            previous: list[pulumi.Resource] = list(after)
            for index, weight in enumerate(group.weights):
                resource = replica_resource(index, group.name)
                instance = container_name(settings.stack, resource)
                gpus, device_requests = gpu_args(resources.gpu, index)
                container = service_container(
                    resource,
                    stack=settings.stack,
                    role=ROLE_REPLICA,
                    hostname=resource,
                    image=image,
                    command=["python", "-m", contract.REPLICA_MODULE],
                    envs=replica_envs(settings, group, instance, tracking_url),
                    network=network,
                    aliases=[resource, weight_alias(weight, group.name)],
                    cpus=resources.cpus,
                    cpu_set=settings.replica_cpu_set.spec if settings.replica_cpu_set else None,
                    memory_mb=resources.memory_mb,
                    shm_mb=resources.shm_mb,
                    gpus=gpus,
                    device_requests=device_requests,
                    health=healthcheck(
                        REPLICA_PROBE,
                        interval_s=settings.health_interval_s,
                        timeout_s=HEALTH_TIMEOUT_S,
                        retries=HEALTH_RETRIES,
                        start_period_s=start_period_s(settings),
                    ),
                    wait_timeout_s=wait_timeout_s(settings),
                    stop_grace_s=stop_s,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=previous),
                )
                self.containers.append(container)
                previous = [container]
        self.names = [c.name for c in self.containers]
        self.register_outputs({"names": self.names})
