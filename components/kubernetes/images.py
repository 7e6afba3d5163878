"""The two app images, built from `app/` and pushed to `imageRegistry`, under immutable tags.

A cluster pulls from a registry, so unlike the Docker target the images are pushed (with the
credentials of `docker login` on the machine running Pulumi: pulumi-docker reads the Docker
config file when the program gives none). Immutable tags: the tag is `imageTag`, the variant
and a hash of what goes into the build (the build context as .dockerignore leaves it, the
Dockerfile, the build args), so a tag, once pushed, never names other content, and a registry
that refuses tag overwrites is fine. Pods go further and pull by digest (`repo_digest`).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping
from pathlib import Path

import pulumi
import pulumi_docker as docker

from app import contract
from components.common import APP_CONTEXT, type_token
from components.images import replica_variant
from stackconfig.names import PROJECT
from stackconfig.settings import Settings

from .common import cluster

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HASH_CHARS = 12


def _ignored(relative: str, patterns: list[str]) -> bool:
    """A minimal .dockerignore reading: glob patterns, `**/` matching at any depth."""
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        parts = relative.split("/")
        if fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def context_hash(dockerfile: str, args: Mapping[str, str], root: Path = PROJECT_ROOT) -> str:
    """Hash of one image's build inputs: context files (less .dockerignore), Dockerfile, args."""
    context = root / APP_CONTEXT
    ignore_file = context / ".dockerignore"
    patterns = [line.strip() for line in ignore_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    digest = hashlib.sha256()
    files = sorted(p for p in context.rglob("*") if p.is_file())
    for path in files:
        relative = path.relative_to(context).as_posix()
        if _ignored(relative, patterns):
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(b"dockerfile\0" + (context / dockerfile).read_bytes())
    for key in sorted(args):
        digest.update(f"arg\0{key}={args[key]}\0".encode())
    return digest.hexdigest()[:HASH_CHARS]


def immutable_tag(settings: Settings, dockerfile: str, args: Mapping[str, str], suffix: str = "") -> str:
    return f"{settings.images.app_tag}{suffix}-{context_hash(dockerfile, args)}"


class PushedImages(pulumi.ComponentResource):
    replica: pulumi.Output[str]  # registry/name@sha256:...
    tracking: pulumi.Output[str]
    replica_tag: str
    tracking_tag: str

    def __init__(self, name: str, *, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token("PushedImages"), name, None, opts)
        registry = cluster(settings).image_registry
        server = registry.split("/", 1)[0]
        variant = replica_variant(settings)
        replica_args = {contract.BUILD_ARG_VARIANT: variant}
        self.replica_tag = immutable_tag(settings, contract.REPLICA_DOCKERFILE, replica_args, f"-{variant}")
        self.tracking_tag = immutable_tag(settings, contract.TRACKING_DOCKERFILE, {})
        self.replica_image = docker.Image(
            "replica-image",
            docker.ImageArgs(
                image_name=f"{registry}/{PROJECT}-replica:{self.replica_tag}",
                build=docker.DockerBuildArgs(
                    context=APP_CONTEXT,
                    dockerfile=f"{APP_CONTEXT}/{contract.REPLICA_DOCKERFILE}",
                    args=replica_args,
                ),
                registry=docker.RegistryArgs(server=server),
                skip_push=False,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.tracking_image = docker.Image(
            "mlflow-image",
            docker.ImageArgs(
                image_name=f"{registry}/{PROJECT}-mlflow:{self.tracking_tag}",
                build=docker.DockerBuildArgs(
                    context=APP_CONTEXT,
                    dockerfile=f"{APP_CONTEXT}/{contract.TRACKING_DOCKERFILE}",
                ),
                registry=docker.RegistryArgs(server=server),
                skip_push=False,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.replica = self.replica_image.repo_digest
        self.tracking = self.tracking_image.repo_digest
        self.register_outputs({"replica": self.replica, "tracking": self.tracking})
