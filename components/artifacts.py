"""MLflow's artifact store: MinIO with a named volume, and the bucket created by a one-shot job."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker
import pulumi_random as random

from app import contract
from components.common import healthcheck, one_shot_job, service_container, type_token
from components.metadata import password
from stackconfig.names import ROLE_BUCKET, ROLE_MINIO, container_name
from stackconfig.settings import Settings

DATA_DIR = "/data"
# `mc` is in the MinIO server image (curl is not); `mc ready local` checks the server.
HEALTH_TEST = ["CMD", "mc", "ready", "local"]
# The alias name in MC_HOST_<alias> that the bucket job's command refers to.
MC_ALIAS = "local"


class ArtifactStore(pulumi.ComponentResource):
    access_key: pulumi.Output[str]
    secret_key: pulumi.Output[str]
    endpoint: str
    bucket: str

    def __init__(
        self, name: str, *, settings: Settings, network: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(type_token("ArtifactStore"), name, None, opts)
        self.bucket = settings.bucket
        self.endpoint = f"http://{contract.MINIO_HOST}:{contract.MINIO_PORT}"
        user = random.RandomString(
            "minio-user",
            random.RandomStringArgs(length=16, special=False, upper=False),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.access_key = pulumi.Output.secret(user.result)
        self.secret_key = password("minio-password", self).result
        self.volume = docker.Volume(
            "minio-data",
            docker.VolumeArgs(name=f"{container_name(settings.stack, 'minio')}-data"),
            opts=pulumi.ResourceOptions(parent=self, protect=settings.protect_data, retain_on_delete=settings.protect_data),
        )
        credentials = pulumi.Output.all(self.access_key, self.secret_key)
        self.container = service_container(
            "minio",
            stack=settings.stack,
            role=ROLE_MINIO,
            image=settings.images.minio,
            command=["server", DATA_DIR],
            envs=credentials.apply(lambda c: [f"MINIO_ROOT_USER={c[0]}", f"MINIO_ROOT_PASSWORD={c[1]}"]),
            volumes=[docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path=DATA_DIR)],
            network=network,
            aliases=[contract.MINIO_HOST],
            health=healthcheck(HEALTH_TEST, interval_s=settings.health_interval_s),
            wait_timeout_s=120,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # MLflow never creates its bucket; `--ignore-existing` makes a re-run harmless.
        self.bucket_job = one_shot_job(
            "minio-bucket",
            stack=settings.stack,
            role=ROLE_BUCKET,
            image=settings.images.minio_client,
            command=["mb", "--ignore-existing", f"{MC_ALIAS}/{self.bucket}"],
            envs=credentials.apply(
                lambda c: [f"MC_HOST_{MC_ALIAS}=http://{c[0]}:{c[1]}@{contract.MINIO_HOST}:{contract.MINIO_PORT}"]
            ),
            network=network,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.container]),
        )
        self.register_outputs({"container": self.container.name, "bucket": self.bucket})
