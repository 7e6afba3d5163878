"""What every component shares: names, type tokens, log rotation, healthchecks."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_docker as docker

PROJECT = "mlserve"
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

LABEL_STACK = f"{PROJECT}.stack"
LABEL_ROLE = f"{PROJECT}.role"


def type_token(component: str) -> str:
    return f"{TYPE_PREFIX}:{component}"


def container_name(stack: str, role: str) -> str:
    """Docker-level container name, unique per host across stacks."""
    return f"{PROJECT}-{stack}-{role}"


def labels(stack: str, role: str) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label=LABEL_STACK, value=stack), docker.ContainerLabelArgs(label=LABEL_ROLE, value=role)]


def http_probe(port: int, path: str) -> list[str]:
    """A healthcheck command for our Python images (no curl in them): exit 1 unless 2xx."""
    url = f"http://127.0.0.1:{port}{path}"
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=3)"]


def healthcheck(
    test: Sequence[str], *, interval_s: int = 10, timeout_s: int = 5, retries: int = 3, start_period_s: int = 30
) -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(
        tests=list(test),
        interval=f"{interval_s}s",
        timeout=f"{timeout_s}s",
        retries=retries,
        start_period=f"{start_period_s}s",
        # Probe often while starting (Docker >= 25), so `wait=True` returns soon after ready.
        start_interval="2s",
    )


def one_shot_job(
    resource_name: str,
    *,
    stack: str,
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
            labels=labels(stack, resource_name),
        ),
        opts=opts,
    )
