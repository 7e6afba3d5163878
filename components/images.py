"""The two images we build from `app/`: the replica (CPU or CUDA variant) and the MLflow server.

Both are built on the Docker host and never pushed, from the base `pythonImage` (their
PYTHON_IMAGE build argument); their first layers are the same (app/Dockerfile.*), so the
host stores the base and the model runtime once. Containers take the image's `repo_digest`,
which for an image built without a push is its ID (`sha256:...`, what pulumi-docker returns):
a rebuild whose content changed rolls the replicas (see replicas.py), a rebuild with identical
content changes nothing. The MLflow version is pinned once, in app/requirements.txt, which both
Dockerfiles install.
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
                    args={contract.BUILD_ARG_VARIANT: variant, contract.BUILD_ARG_PYTHON_IMAGE: settings.images.python},
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
                    args={contract.BUILD_ARG_PYTHON_IMAGE: settings.images.python},
                ),
                skip_push=True,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.replica = self.replica_image.repo_digest
        self.tracking = self.tracking_image.repo_digest
        self.register_outputs({"replica": self.replica, "tracking": self.tracking})
