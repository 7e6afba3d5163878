"""What every component shares: type tokens, log rotation, healthchecks, and the two container shapes.

Every container is either a long-running service (`service_container`) or a one-shot job
(`one_shot_job`); both carry the stack and role labels (`stackconfig.names`) by which tooling
tells containers apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_docker as docker

from app import contract
from stackconfig.names import LABEL_ROLE, LABEL_STACK, PROJECT, container_name

TYPE_PREFIX = f"{PROJECT}:stack"

# Build context of the images we build: `app/`, next to Pulumi.yaml. pulumi-docker
# resolves a relative `dockerfile` against the working directory (the project), not the
# context, hence both paths carry the directory.
APP_CONTEXT = "app"

# json-file logs rotated per container: a busy replica must not fill the host's disk.
LOG_DRIVER = "json-file"
LOG_OPTS = {"max-size": "10m", "max-file": "3"}

# Long-running services come back after a crash or a host reboot, unless stopped by hand.
RESTART_SERVICE = "unless-stopped"
# One-shot jobs (bucket creation, demo model) run once per create.
RESTART_JOB = "no"

# Seconds a service gets between its stop signal and the kill, on `docker stop` and on a
# Pulumi delete alike (pulumi-docker's destroy_grace_seconds defaults to an immediate kill).
DEFAULT_STOP_GRACE_S = 30


def type_token(component: str) -> str:
    return f"{TYPE_PREFIX}:{component}"


def labels(stack: str, role: str) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label=LABEL_STACK, value=stack), docker.ContainerLabelArgs(label=LABEL_ROLE, value=role)]


def python_http_probe(port: int, path: str) -> list[str]:
    """A healthcheck command for images with Python and no curl: exit 1 unless 2xx.

    The MLflow image's HEALTHCHECK runs the same command (a test compares them)."""
    url = f"http://127.0.0.1:{port}{path}"
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=3)"]


# The replica image's own probe module (its HEALTHCHECK runs the same): it reads the port the
# replica listens on from the replica's environment.
REPLICA_PROBE = ["CMD", "python", "-m", contract.PROBE_MODULE]


def healthcheck(
    test: Sequence[str], *, interval_s: int, timeout_s: int = 5, retries: int = 3, start_period_s: int = 30
) -> docker.ContainerHealthcheckArgs:
    """A service's healthcheck; `interval_s` is the stack's healthIntervalSeconds."""
    return docker.ContainerHealthcheckArgs(
        tests=list(test),
        interval=f"{interval_s}s",
        timeout=f"{timeout_s}s",
        retries=retries,
        start_period=f"{start_period_s}s",
        # Probe often while starting (Docker >= 25), so `wait=True` returns soon after ready.
        start_interval="2s",
    )


def service_container(
    resource_name: str,
    *,
    stack: str,
    role: str,
    image: pulumi.Input[str],
    network: pulumi.Input[str],
    aliases: Sequence[str],
    health: docker.ContainerHealthcheckArgs,
    wait_timeout_s: int,
    opts: pulumi.ResourceOptions,
    command: Sequence[str] | None = None,
    envs: pulumi.Input[Sequence[pulumi.Input[str]]] | None = None,
    stop_grace_s: int = DEFAULT_STOP_GRACE_S,
    stop_signal: str | None = None,
    hostname: str | None = None,
    ports: Sequence[docker.ContainerPortArgs] | None = None,
    volumes: Sequence[docker.ContainerVolumeArgs] | None = None,
    uploads: Sequence[docker.ContainerUploadArgs] | None = None,
    cpus: str | None = None,
    cpu_set: str | None = None,
    memory_mb: int | None = None,
    shm_mb: int | None = None,
    gpus: str | None = None,
    device_requests: Sequence[docker.ContainerDeviceRequestArgs] | None = None,
) -> docker.Container:
    """A long-running container on the private network: restarted unless stopped by hand, logs
    rotated, created only once healthy (`wait`), stopped with `stop_grace_s` to finish its work.

    A memory limit comes without swap: a container over its limit is killed and restarted,
    not slowed down."""
    return docker.Container(
        resource_name,
        docker.ContainerArgs(
            name=container_name(stack, resource_name),
            hostname=hostname,
            image=image,
            command=list(command) if command is not None else None,
            envs=envs,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network, aliases=list(aliases))],
            ports=list(ports) if ports is not None else None,
            volumes=list(volumes) if volumes is not None else None,
            uploads=list(uploads) if uploads is not None else None,
            cpus=cpus,
            cpu_set=cpu_set,
            memory=memory_mb,
            memory_swap=memory_mb,
            shm_size=shm_mb,
            gpus=gpus,
            device_requests=list(device_requests) if device_requests is not None else None,
            healthcheck=health,
            wait=True,
            wait_timeout=wait_timeout_s,
            restart=RESTART_SERVICE,
            stop_signal=stop_signal,
            destroy_grace_seconds=stop_grace_s,
            stop_timeout=stop_grace_s,
            log_driver=LOG_DRIVER,
            log_opts=LOG_OPTS,
            labels=labels(stack, role),
        ),
        opts=opts,
    )


def one_shot_job(
    resource_name: str,
    *,
    stack: str,
    role: str,
    image: pulumi.Input[str],
    command: list[str],
    envs: pulumi.Input[Sequence[pulumi.Input[str]]],
    network: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> docker.Container:
    """A container that runs once per create and is waited for (bucket creation, demo model).

    `attach=True` makes the create wait until the job exits, so whatever depends on it finds
    its work done; `must_run=False` because a finished job is not running.
    """
    return docker.Container(
        resource_name,
        docker.ContainerArgs(
            name=container_name(stack, resource_name),
            image=image,
            command=command,
            envs=envs,
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network)],
            attach=True,
            must_run=False,
            restart=RESTART_JOB,
            log_driver=LOG_DRIVER,
            log_opts=LOG_OPTS,
            labels=labels(stack, role),
        ),
        opts=opts,
    )


class JobFailed(RuntimeError):
    """A one-shot job exited with a non-zero code (or none): what waits for it must not go on."""


def after_success(job: docker.Container, value: pulumi.Input[str]) -> pulumi.Output[str]:
    """`value`, once `job` has exited 0; otherwise the program stops with JobFailed before the
    resource taking the value is registered, so Pulumi neither creates nor replaces it.

    Needed because pulumi-docker's create of an attached container waits for the container to
    end but ignores how it ended: the upstream provider (terraform-provider-docker,
    resource_docker_container_funcs.go) discards ContainerWait's status and only reads the exit
    code back into `exit_code`. A failed job would otherwise let its dependents go ahead."""
    name = job.name

    def check(args: list[Any]) -> Any:
        value, code, container = args
        if code != 0:
            raise JobFailed(
                f"one-shot container {container} exited with {code}; what waits for it was left as it was "
                f"(see `docker logs {container}`)"
            )
        return value

    return pulumi.Output.all(value, job.exit_code, name).apply(check)
