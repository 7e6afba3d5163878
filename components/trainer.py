"""A one-shot job that trains and registers a demo model when the registry has none of that name."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from app import contract
from components.common import one_shot_job, type_token
from stackconfig.names import ROLE_TRAINER
from stackconfig.settings import ReplicaGroup, Settings


def trainer_envs(group: ReplicaGroup, tracking_url: str) -> list[str]:
    return [
        f"{contract.ENV_TRACKING_URI}={tracking_url}",
        f"{contract.ENV_MODEL_NAME}={group.model.name}",
        f"{contract.ENV_MODEL_ALIAS}={group.model.alias}",
        # Never overwrite a user's model: register only when the name is unknown.
        f"{contract.ENV_TRAINER_ONLY_IF_EMPTY}=1",
    ]


class DemoModelTrainer(pulumi.ComponentResource):
    container: docker.Container

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        image: pulumi.Input[str],
        network: pulumi.Input[str],
        tracking_url: str,
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(type_token("DemoModelTrainer"), name, None, opts)
        # Waited for, so that replicas created after it find a model.
        self.container = one_shot_job(
            "trainer",
            stack=settings.stack,
            role=ROLE_TRAINER,
            image=image,
            command=["python", "-m", contract.TRAINER_MODULE],
            envs=trainer_envs(settings.default_group, tracking_url),
            network=network,
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )
        self.register_outputs({"container": self.container.name})
