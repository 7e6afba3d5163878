"""The MLflow tracking server on the Kubernetes target: a schema-migration Job, then a Deployment
and a ClusterIP Service `mlflow` (the host name the Docker target's containers use too), and the
optional demo-model Job.

Jobs are named after the image tag they run (`mlflow-db-upgrade-<tag>`, `trainer-<tag>`): a new
image is a new Job, run to completion (pulumi-kubernetes waits for a Job to succeed) before what
depends on it is updated; an unchanged image runs nothing again.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from app import contract
from components.common import type_token
from components.tracking import server_command
from components.trainer import trainer_envs
from stackconfig.names import MLFLOW_PRIVATE_URL, ROLE_DB_UPGRADE, ROLE_MLFLOW, ROLE_TRAINER, service_host
from stackconfig.settings import Settings

from .common import (
    DEFAULT_STOP_GRACE_S,
    child,
    cluster,
    env,
    env_pairs,
    exact_resources,
    http_probe,
    job_name,
    metadata,
    secret_env,
    selector,
)
from .stores import JOB_BACKOFF_LIMIT, KEY_BACKEND_URI, KEY_S3_ACCESS_KEY, KEY_S3_SECRET_KEY, StoreRefs

PORT_NAME = "http"
MLFLOW_RESOURCES = exact_resources("1", "1Gi")
TRAINER_RESOURCES = exact_resources("1", "1Gi")
# `mlflow db upgrade <url>` with the URL taken from the environment inside the process, so the
# database password is in no process's argument list. An empty database gets the whole schema.
DB_UPGRADE = [
    "python",
    "-c",
    "import os; from mlflow.db import upgrade; upgrade.main([os.environ['MLFLOW_BACKEND_STORE_URI']], prog_name='mlflow db upgrade')",
]
# Seconds the server may take to answer /health after start (schema checks on a slow database).
STARTUP_BUDGET_S = 180


def allowed_hosts(settings: Settings) -> list[str]:
    """Host headers MLflow accepts on its API: every name clients use for the Service (short,
    namespaced, .svc and fully qualified), with and without the port, and localhost for
    `kubectl port-forward svc/mlflow 5000`."""
    k = cluster(settings)
    names = [
        contract.MLFLOW_HOST,
        f"{contract.MLFLOW_HOST}.{k.namespace}",
        f"{contract.MLFLOW_HOST}.{k.namespace}.svc",
        service_host(contract.MLFLOW_HOST, k.namespace, k.cluster_domain),
    ]
    local = [f"{host}:{contract.MLFLOW_PORT}" for host in ("localhost", "127.0.0.1")]
    return [f"{name}:{contract.MLFLOW_PORT}" for name in names] + names + local


def pull_secrets(settings: Settings) -> list[k8s.core.v1.LocalObjectReferenceArgs] | None:
    name = cluster(settings).image_pull_secret
    return [k8s.core.v1.LocalObjectReferenceArgs(name=name)] if name else None


def store_env(stores: StoreRefs, bucket: str) -> list[k8s.core.v1.EnvVarArgs]:
    """What the MLflow server and the migration read: credentials only through the Secret."""
    return [
        secret_env("MLFLOW_BACKEND_STORE_URI", stores.secret, KEY_BACKEND_URI),
        env("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{bucket}"),
        env("MLFLOW_S3_ENDPOINT_URL", stores.s3_endpoint),
        secret_env("AWS_ACCESS_KEY_ID", stores.secret, KEY_S3_ACCESS_KEY),
        secret_env("AWS_SECRET_ACCESS_KEY", stores.secret, KEY_S3_SECRET_KEY),
        env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    ]


class ClusterTracking(pulumi.ComponentResource):
    url: str  # inside the namespace
    deployment: k8s.apps.v1.Deployment
    trainer: k8s.batch.v1.Job | None

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        image: pulumi.Input[str],
        image_tag: str,
        replica_image: pulumi.Input[str],
        replica_image_tag: str,
        stores: StoreRefs,
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(type_token("ClusterTracking"), name, None, opts)
        self.url = MLFLOW_PRIVATE_URL
        pulls = pull_secrets(settings)
        self.migration = k8s.batch.v1.Job(
            "mlflow-db-upgrade",
            k8s.batch.v1.JobInitArgs(
                metadata=metadata(settings, job_name(ROLE_DB_UPGRADE, image_tag), ROLE_DB_UPGRADE),
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=JOB_BACKOFF_LIMIT,
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=metadata(settings, ROLE_DB_UPGRADE, ROLE_DB_UPGRADE).labels),
                        spec=k8s.core.v1.PodSpecArgs(
                            restart_policy="OnFailure",
                            image_pull_secrets=pulls,
                            containers=[
                                k8s.core.v1.ContainerArgs(
                                    name="db-upgrade",
                                    image=image,
                                    command=DB_UPGRADE,
                                    env=[secret_env("MLFLOW_BACKEND_STORE_URI", stores.secret, KEY_BACKEND_URI)],
                                    resources=MLFLOW_RESOURCES,
                                )
                            ],
                        ),
                    ),
                ),
            ),
            opts=child(self, depends_on=depends_on),
        )
        template_labels = metadata(settings, "mlflow", ROLE_MLFLOW).labels
        self.deployment = k8s.apps.v1.Deployment(
            "mlflow",
            k8s.apps.v1.DeploymentInitArgs(
                metadata=metadata(settings, "mlflow", ROLE_MLFLOW),
                spec=k8s.apps.v1.DeploymentSpecArgs(
                    replicas=1,
                    selector=selector(settings, ROLE_MLFLOW),
                    # The new server is ready before the old one stops: replicas keep polling.
                    strategy=k8s.apps.v1.DeploymentStrategyArgs(
                        type="RollingUpdate",
                        rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
                    ),
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=template_labels),
                        spec=k8s.core.v1.PodSpecArgs(
                            termination_grace_period_seconds=DEFAULT_STOP_GRACE_S,
                            image_pull_secrets=pulls,
                            containers=[
                                k8s.core.v1.ContainerArgs(
                                    name="mlflow",
                                    image=image,
                                    command=server_command(settings, allowed_hosts(settings)),
                                    env=store_env(stores, settings.bucket),
                                    ports=[k8s.core.v1.ContainerPortArgs(name=PORT_NAME, container_port=contract.MLFLOW_PORT)],
                                    resources=MLFLOW_RESOURCES,
                                    startup_probe=http_probe(contract.ROUTE_HEALTH, PORT_NAME, period_s=5, failures=STARTUP_BUDGET_S // 5),
                                    readiness_probe=http_probe(contract.ROUTE_HEALTH, PORT_NAME, period_s=10, failures=3),
                                    liveness_probe=http_probe(contract.ROUTE_HEALTH, PORT_NAME, period_s=10, failures=6),
                                )
                            ],
                        ),
                    ),
                ),
            ),
            opts=child(self, depends_on=[self.migration]),
        )
        self.service = k8s.core.v1.Service(
            "mlflow-service",
            k8s.core.v1.ServiceInitArgs(
                metadata=metadata(settings, contract.MLFLOW_HOST, ROLE_MLFLOW),
                spec=k8s.core.v1.ServiceSpecArgs(
                    type="ClusterIP",
                    selector=selector(settings, ROLE_MLFLOW).match_labels,
                    ports=[k8s.core.v1.ServicePortArgs(name=PORT_NAME, port=contract.MLFLOW_PORT, target_port=PORT_NAME)],
                ),
            ),
            opts=child(self),
        )
        self.trainer = None
        if settings.train_demo_model:
            # Waited for, so that the replicas created after it find a model.
            self.trainer = k8s.batch.v1.Job(
                "trainer",
                k8s.batch.v1.JobInitArgs(
                    metadata=metadata(settings, job_name("trainer", replica_image_tag), ROLE_TRAINER),
                    spec=k8s.batch.v1.JobSpecArgs(
                        backoff_limit=JOB_BACKOFF_LIMIT,
                        template=k8s.core.v1.PodTemplateSpecArgs(
                            metadata=k8s.meta.v1.ObjectMetaArgs(labels=metadata(settings, "trainer", ROLE_TRAINER).labels),
                            spec=k8s.core.v1.PodSpecArgs(
                                restart_policy="OnFailure",
                                image_pull_secrets=pulls,
                                containers=[
                                    k8s.core.v1.ContainerArgs(
                                        name="trainer",
                                        image=replica_image,
                                        command=["python", "-m", contract.TRAINER_MODULE],
                                        env=env_pairs(trainer_envs(settings.default_group, self.url)),
                                        resources=TRAINER_RESOURCES,
                                    )
                                ],
                            ),
                        ),
                    ),
                ),
                opts=child(self, depends_on=[self.deployment, self.service]),
            )
        self.register_outputs({"url": self.url})
