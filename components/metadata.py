"""MLflow's metadata store: MySQL with a named volume, reachable only on the private network."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from app import contract
from components.common import healthcheck, service_container, type_token
from stackconfig.names import ROLE_MYSQL, container_name
from stackconfig.settings import Settings

DATABASE = "mlflow"
USER = "mlflow"
DATA_DIR = "/var/lib/mysql"
# MySQL initialises its data directory on first start; give it time before health counts.
START_PERIOD_S = 60
# `ping` answers 0 as soon as the server accepts connections, credentials or not.
HEALTH_TEST = ["CMD", "mysqladmin", "ping", "-h", "127.0.0.1", "--silent"]


def password(name: str, parent: pulumi.Resource) -> random.RandomPassword:
    """A secret that is safe inside URLs (no special characters; 32 alphanumerics ~ 190 bits)."""
    return random.RandomPassword(
        name, random.RandomPasswordArgs(length=32, special=False), opts=pulumi.ResourceOptions(parent=parent)
    )


class MetadataStore(pulumi.ComponentResource):
    password: pulumi.Output[str]
    root_password: pulumi.Output[str]
    backend_uri: pulumi.Output[str]

    def __init__(
        self, name: str, *, settings: Settings, network: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(type_token("MetadataStore"), name, None, opts)
        self.password = password("mysql-password", self).result
        self.root_password = password("mysql-root-password", self).result
        self.volume = docker.Volume(
            "mysql-data",
            docker.VolumeArgs(name=f"{container_name(settings.stack, 'mysql')}-data"),
            opts=pulumi.ResourceOptions(parent=self, protect=settings.protect_data, retain_on_delete=settings.protect_data),
        )
        envs = pulumi.Output.all(self.password, self.root_password).apply(
            lambda pw: [
                f"MYSQL_DATABASE={DATABASE}",
                f"MYSQL_USER={USER}",
                f"MYSQL_PASSWORD={pw[0]}",
                f"MYSQL_ROOT_PASSWORD={pw[1]}",
            ]
        )
        self.container = service_container(
            "mysql",
            stack=settings.stack,
            role=ROLE_MYSQL,
            image=settings.images.mysql,
            envs=envs,
            volumes=[docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=DATA_DIR)],
            network=network,
            aliases=[contract.MYSQL_HOST],
            health=healthcheck(HEALTH_TEST, interval_s=settings.health_interval_s, start_period_s=START_PERIOD_S),
            wait_timeout_s=START_PERIOD_S + 120,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.backend_uri = pulumi.Output.secret(
            self.password.apply(
                lambda pw: f"mysql+pymysql://{USER}:{pw}@{contract.MYSQL_HOST}:{contract.MYSQL_PORT}/{DATABASE}"
            )
        )
        self.register_outputs({"container": self.container.name})
