"""A one-shot job that trains and registers a demo model when the registry has none of that name."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from app import contract
from components.common import LOG_DRIVER, LOG_OPTS, RESTART_JOB, container_name, labels, type_token
from components.settings import ReplicaGroup, Settings


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
        self.container = docker.Container(
            "trainer",
            docker.ContainerArgs(
                name=container_name(settings.stack, "trainer"),
                image=image,
                command=["python", "-m", contract.TRAINER_MODULE],
                envs=trainer_envs(settings.default_group, tracking_url),
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network)],
                # Wait for the job to finish, so that replicas created after it find a model.
                attach=True,
                must_run=False,
                restart=RESTART_JOB,
                log_driver=LOG_DRIVER,
                log_opts=LOG_OPTS,
                labels=labels(settings.stack, "trainer"),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )
        self.register_outputs({"container": self.container.name})
