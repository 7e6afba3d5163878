"""The two images we build from `app/`: the replica (CPU or CUDA variant) and the MLflow server.

Both are built on the Docker host and never pushed. Containers take the image's
`repo_digest`, which for a local image is its ID: a rebuild whose content changed rolls
the replicas (see replicas.py), a rebuild with identical content changes nothing.
The MLflow version is pinned once, in app/requirements.txt, which both Dockerfiles install.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from app import contract
from components.common import APP_CONTEXT, type_token
from stackconfig.names import PROJECT
from stackconfig.settings import Settings


def replica_variant(settings: Settings) -> str:
    """CUDA wheels only where some group asks for GPUs; the default install stays CPU-only."""
    return "cuda" if any(g.resources.gpu.mode != "none" for g in settings.groups) else "cpu"


class AppImages(pulumi.ComponentResource):
    replica: pulumi.Output[str]
    tracking: pulumi.Output[str]

    def __init__(self, name: str, *, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token("AppImages"), name, None, opts)
        variant = replica_variant(settings)
        self.replica_image = docker.Image(
            "replica-image",
            docker.ImageArgs(
                image_name=f"{PROJECT}-replica:{settings.images.app_tag}-{variant}",
                build=docker.DockerBuildArgs(
                    context=APP_CONTEXT,
                    dockerfile=f"{APP_CONTEXT}/{contract.REPLICA_DOCKERFILE}",
                    args={contract.BUILD_ARG_VARIANT: variant},
                ),
                skip_push=True,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.tracking_image = docker.Image(
            "mlflow-image",
            docker.ImageArgs(
                image_name=f"{PROJECT}-mlflow:{settings.images.app_tag}",
                build=docker.DockerBuildArgs(
                    context=APP_CONTEXT,
                    dockerfile=f"{APP_CONTEXT}/{contract.TRACKING_DOCKERFILE}",
                ),
                skip_push=True,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.replica = self.replica_image.repo_digest
        self.tracking = self.tracking_image.repo_digest
        self.register_outputs({"replica": self.replica, "tracking": self.tracking})
