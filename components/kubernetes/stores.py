"""MLflow's two stores on the Kubernetes target, and the Secret every consumer reads them through.

External (the default): the database URL and the S3 credentials come from secret config keys;
the cluster runs nothing but a Secret holding them.

In-cluster (`inClusterStores: true`, for evaluation): MySQL and MinIO as StatefulSets, each with
a volume claim template and a headless governing Service (`mysql`, `minio`: the same host names
the Docker target uses). StatefulSets, not Deployments: a Deployment's rolling update starts the
new pod before the old one stops, and a ReadWriteOnce volume attached to the old pod's node keeps
the new one Pending (or two MySQL servers on one data directory). Passwords come from
pulumi-random and reach the pods only through `secretKeyRef`.

Either way the Secret has the same keys (SECRET_KEYS), so the MLflow server, the migration Job
and the bucket Job do not know which kind of store they use.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from app import contract
from components.artifacts import DATA_DIR as MINIO_DATA_DIR
from components.artifacts import MC_ALIAS
from components.common import type_token
from components.metadata import DATA_DIR as MYSQL_DATA_DIR
from components.metadata import DATABASE, USER, password
from components.metadata import HEALTH_TEST as MYSQL_HEALTH_TEST
from stackconfig.names import ROLE_BUCKET, ROLE_MINIO, ROLE_MYSQL
from stackconfig.settings import ExternalStores, InClusterStores, Settings

from .common import (
    DEFAULT_STOP_GRACE_S,
    child,
    cluster,
    env,
    exact_resources,
    exec_probe,
    http_probe,
    image_tag,
    job_name,
    metadata,
    secret_env,
    selector,
    selector_labels,
)

SECRET_NAME = "mlflow-stores"
# Keys of the Secret, the same for external and in-cluster stores.
KEY_BACKEND_URI = "backend-store-uri"
KEY_S3_ACCESS_KEY = "aws-access-key-id"
KEY_S3_SECRET_KEY = "aws-secret-access-key"
KEY_MC_HOST = "mc-host"  # the bucket Job's MC_HOST_<alias>: scheme://key:secret@host
# In-cluster only.
KEY_MYSQL_PASSWORD = "mysql-password"
KEY_MYSQL_ROOT_PASSWORD = "mysql-root-password"
KEY_MINIO_USER = "minio-user"
KEY_MINIO_PASSWORD = "minio-password"

MYSQL_RESOURCES = exact_resources("1", "1Gi")
MINIO_RESOURCES = exact_resources("1", "1Gi")
JOB_RESOURCES = exact_resources("250m", "256Mi")
# A Job that keeps failing (a store not reachable, wrong credentials) stops the update.
JOB_BACKOFF_LIMIT = 6


@dataclass(frozen=True)
class StoreRefs:
    """What consumers of the stores need: the Secret's name and the plain S3 endpoint."""

    secret: str
    s3_endpoint: str


def _mc_host(endpoint: str, access_key: str, secret_key: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{quote(access_key, safe='')}:{quote(secret_key, safe='')}@{parts.netloc}"


class ClusterStores(pulumi.ComponentResource):
    refs: StoreRefs
    # What the MLflow server must wait for (the stores' StatefulSets, the bucket Job).
    ready: list[pulumi.Resource]
    # Generated credentials (in-cluster only), exported as secrets like the Docker target's.
    generated: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, *, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token("ClusterStores"), name, None, opts)
        stores = cluster(settings).stores
        self.generated = {}
        self.ready = []
        if isinstance(stores, ExternalStores):
            endpoint = stores.s3_endpoint
            data = pulumi.Output.secret(
                {
                    KEY_BACKEND_URI: stores.database_url.value,
                    KEY_S3_ACCESS_KEY: stores.s3_access_key_id.value,
                    KEY_S3_SECRET_KEY: stores.s3_secret_access_key.value,
                    KEY_MC_HOST: _mc_host(endpoint, stores.s3_access_key_id.value, stores.s3_secret_access_key.value),
                }
            )
        else:
            endpoint = f"http://{contract.MINIO_HOST}:{contract.MINIO_PORT}"
            data = self._generated_data(endpoint)
        self.refs = StoreRefs(secret=SECRET_NAME, s3_endpoint=endpoint)
        self.secret = k8s.core.v1.Secret(
            "stores-secret",
            k8s.core.v1.SecretInitArgs(
                metadata=metadata(settings, SECRET_NAME, "stores"),
                type="Opaque",
                string_data=data,
            ),
            opts=child(self),
        )
        if isinstance(stores, InClusterStores):
            self.ready += self._mysql(settings, stores)
            self.ready += self._minio(settings, stores)
        self.bucket_job = self._bucket_job(settings)
        self.ready.append(self.bucket_job)
        self.register_outputs({"secret": SECRET_NAME, "s3Endpoint": endpoint})

    def _generated_data(self, endpoint: str) -> pulumi.Output[dict[str, str]]:
        mysql_password = password("mysql-password", self).result
        mysql_root = password("mysql-root-password", self).result
        minio_user = random.RandomString(
            "minio-user", random.RandomStringArgs(length=16, special=False, upper=False), opts=pulumi.ResourceOptions(parent=self)
        ).result
        minio_password = password("minio-password", self).result
        self.generated = {
            "mysqlPassword": pulumi.Output.secret(mysql_password),
            "mysqlRootPassword": pulumi.Output.secret(mysql_root),
            "minioAccessKey": pulumi.Output.secret(minio_user),
            "minioSecretKey": pulumi.Output.secret(minio_password),
        }
        return pulumi.Output.secret(
            pulumi.Output.all(mysql_password, mysql_root, minio_user, minio_password).apply(
                lambda v: {
                    KEY_MYSQL_PASSWORD: v[0],
                    KEY_MYSQL_ROOT_PASSWORD: v[1],
                    KEY_MINIO_USER: v[2],
                    KEY_MINIO_PASSWORD: v[3],
                    KEY_BACKEND_URI: f"mysql+pymysql://{USER}:{v[0]}@{contract.MYSQL_HOST}:{contract.MYSQL_PORT}/{DATABASE}",
                    KEY_S3_ACCESS_KEY: v[2],
                    KEY_S3_SECRET_KEY: v[3],
                    KEY_MC_HOST: _mc_host(endpoint, v[2], v[3]),
                }
            )
        )

    def _data_options(self, settings: Settings) -> pulumi.ResourceOptions:
        """protectData: the StatefulSet (and with it its claims) survives `pulumi destroy`."""
        return pulumi.ResourceOptions(
            parent=self, depends_on=[self.secret], protect=settings.protect_data, retain_on_delete=settings.protect_data
        )

    def _claim(self, settings: Settings, name: str, size_gi: int, storage_class: str | None) -> k8s.core.v1.PersistentVolumeClaimArgs:
        return k8s.core.v1.PersistentVolumeClaimArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteOnce"],
                storage_class_name=storage_class,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": f"{size_gi}Gi"}),
            ),
        )

    def _retention(self, settings: Settings) -> k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs:
        """Claims outlive a scale-down always; on delete they go unless protectData keeps them,
        as the Docker target keeps or removes its volumes."""
        return k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
            when_deleted="Retain" if settings.protect_data else "Delete", when_scaled="Retain"
        )

    def _headless(self, settings: Settings, name: str, role: str, port: int) -> k8s.core.v1.Service:
        return k8s.core.v1.Service(
            f"{name}-service",
            k8s.core.v1.ServiceInitArgs(
                metadata=metadata(settings, name, role),
                spec=k8s.core.v1.ServiceSpecArgs(
                    cluster_ip="None",
                    selector=selector_labels(settings, role),
                    ports=[k8s.core.v1.ServicePortArgs(name=name, port=port, target_port=name)],
                ),
            ),
            opts=child(self),
        )

    def _store(self, settings: Settings, name: str, role: str, host: str, port: int,
               container: k8s.core.v1.ContainerArgs, size_gi: int, storage_class: str | None) -> list[pulumi.Resource]:
        """A store: one pod of a StatefulSet with its data on a claim mounted as `data`, behind a
        headless Service named `host` whose port `host` is the container's."""
        service = self._headless(settings, host, role, port)
        statefulset = k8s.apps.v1.StatefulSet(
            name,
            k8s.apps.v1.StatefulSetInitArgs(
                metadata=metadata(settings, name, role),
                spec=k8s.apps.v1.StatefulSetSpecArgs(
                    service_name=host,
                    replicas=1,
                    selector=selector(settings, role),
                    persistent_volume_claim_retention_policy=self._retention(settings),
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=metadata(settings, name, role).labels),
                        spec=k8s.core.v1.PodSpecArgs(termination_grace_period_seconds=DEFAULT_STOP_GRACE_S, containers=[container]),
                    ),
                    volume_claim_templates=[self._claim(settings, "data", size_gi, storage_class)],
                ),
            ),
            opts=self._data_options(settings),
        )
        return [service, statefulset]

    def _mysql(self, settings: Settings, stores: InClusterStores) -> list[pulumi.Resource]:
        probe_command = [c for c in MYSQL_HEALTH_TEST if c != "CMD"]
        container = k8s.core.v1.ContainerArgs(
            name="mysql",
            image=settings.images.mysql,
            env=[
                env("MYSQL_DATABASE", DATABASE),
                env("MYSQL_USER", USER),
                secret_env("MYSQL_PASSWORD", SECRET_NAME, KEY_MYSQL_PASSWORD),
                secret_env("MYSQL_ROOT_PASSWORD", SECRET_NAME, KEY_MYSQL_ROOT_PASSWORD),
            ],
            ports=[k8s.core.v1.ContainerPortArgs(name=contract.MYSQL_HOST, container_port=contract.MYSQL_PORT)],
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path=MYSQL_DATA_DIR)],
            resources=MYSQL_RESOURCES,
            # First start initialises the data directory: up to 5 minutes.
            startup_probe=exec_probe(probe_command, period_s=5, failures=60),
            readiness_probe=exec_probe(probe_command, period_s=10, failures=3),
            liveness_probe=exec_probe(probe_command, period_s=10, failures=6),
        )
        return self._store(settings, "mysql", ROLE_MYSQL, contract.MYSQL_HOST, contract.MYSQL_PORT, container,
                           stores.mysql_storage_gi, stores.storage_class)

    def _minio(self, settings: Settings, stores: InClusterStores) -> list[pulumi.Resource]:
        container = k8s.core.v1.ContainerArgs(
            name="minio",
            image=settings.images.minio,
            args=["server", MINIO_DATA_DIR],
            env=[
                secret_env("MINIO_ROOT_USER", SECRET_NAME, KEY_MINIO_USER),
                secret_env("MINIO_ROOT_PASSWORD", SECRET_NAME, KEY_MINIO_PASSWORD),
            ],
            ports=[k8s.core.v1.ContainerPortArgs(name=contract.MINIO_HOST, container_port=contract.MINIO_PORT)],
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path=MINIO_DATA_DIR)],
            resources=MINIO_RESOURCES,
            # MinIO's own health endpoints (no credentials needed).
            readiness_probe=http_probe("/minio/health/ready", contract.MINIO_HOST, period_s=10, failures=3),
            liveness_probe=http_probe("/minio/health/live", contract.MINIO_HOST, period_s=10, failures=6),
        )
        return self._store(settings, "minio", ROLE_MINIO, contract.MINIO_HOST, contract.MINIO_PORT, container,
                           stores.minio_storage_gi, stores.storage_class)

    def _bucket_job(self, settings: Settings) -> k8s.batch.v1.Job:
        """MLflow never creates its bucket; `--ignore-existing` makes a re-run harmless."""
        return k8s.batch.v1.Job(
            "minio-bucket",
            k8s.batch.v1.JobInitArgs(
                metadata=metadata(settings, job_name("minio-bucket", image_tag(settings.images.minio_client)), ROLE_BUCKET),
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=JOB_BACKOFF_LIMIT,
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=metadata(settings, "minio-bucket", ROLE_BUCKET).labels),
                        spec=k8s.core.v1.PodSpecArgs(
                            restart_policy="OnFailure",
                            containers=[
                                k8s.core.v1.ContainerArgs(
                                    name="mc",
                                    image=settings.images.minio_client,
                                    args=["mb", "--ignore-existing", f"{MC_ALIAS}/{settings.bucket}"],
                                    env=[secret_env(f"MC_HOST_{MC_ALIAS}", SECRET_NAME, KEY_MC_HOST)],
                                    resources=JOB_RESOURCES,
                                )
                            ],
                        ),
                    ),
                ),
            ),
            opts=child(self, depends_on=[self.secret, *self.ready]),
        )
