"""The MLflow tracking server and model registry: MySQL backend, artifacts proxied to MinIO.

Gated schema upgrades. Before the server container is created (first deploy, or a new MLflow
image: pulumi-docker replaces a container delete-before-replace), a one-shot job runs
`mlflow db upgrade` with the new image, and the server's image input is only known once that
job exited 0 (`common.after_success`). The job is named after the image tag
(`mlflow-db-upgrade-<imageTag>`), so a new tag is a new job, run before the server is touched.
If the migration fails, the program stops before it registers the server: the engine neither
deletes nor replaces the old one, which keeps running on the schema it knows (back the
database up before bumping MLflow: a half-done migration is MLflow's to recover from). On an
empty database the job creates the schema.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from app import contract
from components.common import after_success, healthcheck, one_shot_job, python_http_probe, service_container, type_token
from stackconfig.names import MLFLOW_PRIVATE_URL, ROLE_DB_UPGRADE, ROLE_MLFLOW
from stackconfig.settings import Settings

# The server answers /health before the API is usable only for a moment; schema creation
# on a fresh database takes a while.
START_PERIOD_S = 60
# The MLflow image's HEALTHCHECK runs the same command with the same timings (a test compares).
HEALTH_TEST = python_http_probe(contract.MLFLOW_PORT, contract.ROUTE_HEALTH)


# The backend URI carries the database password: from the (secret) environment, never the argv.
DB_UPGRADE_COMMAND = ["sh", "-c", 'exec mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"']


def db_upgrade_resource(settings: Settings) -> str:
    """Named by the image tag: a new tag is a new job, run before the new server."""
    return f"mlflow-db-upgrade-{settings.images.app_tag}"


def allowed_hosts(settings: Settings) -> list[str]:
    """Host headers MLflow accepts on its API (it answers 403 to others).

    Replicas and the trainer use mlflow:5000; healthchecks use loopback; the UI, when
    published, is reached as localhost:<port> or 127.0.0.1:<port>.
    """
    hosts = [f"{contract.MLFLOW_HOST}:{contract.MLFLOW_PORT}", contract.MLFLOW_HOST]
    for local in ("localhost", "127.0.0.1"):
        hosts.append(f"{local}:{contract.MLFLOW_PORT}")
        if settings.mlflow_ui_port is not None and settings.mlflow_ui_port != contract.MLFLOW_PORT:
            hosts.append(f"{local}:{settings.mlflow_ui_port}")
    return hosts


def server_command(settings: Settings, hosts: list[str] | None = None) -> list[str]:
    """`mlflow server` as both targets run it; `hosts`: the allowed Host headers (default: the Docker target's)."""
    return [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        str(contract.MLFLOW_PORT),
        # One worker and no job runner: ~0.5 GB instead of ~2.7 GB.
        "--workers",
        "1",
        "--serve-artifacts",
        "--allowed-hosts",
        ",".join(allowed_hosts(settings) if hosts is None else hosts),
    ]


class TrackingServer(pulumi.ComponentResource):
    url: str  # on the private network
    container: docker.Container
    db_upgrade: docker.Container

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        image: pulumi.Input[str],
        network: pulumi.Input[str],
        backend_uri: pulumi.Input[str],
        bucket: pulumi.Input[str],
        s3_endpoint: str,
        s3_access_key: pulumi.Input[str],
        s3_secret_key: pulumi.Input[str],
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(type_token("TrackingServer"), name, None, opts)
        self.url = MLFLOW_PRIVATE_URL
        # Credentials go through the environment (a secret input), never the command line.
        envs = pulumi.Output.all(backend_uri, s3_access_key, s3_secret_key, bucket).apply(
            lambda v: [
                f"MLFLOW_BACKEND_STORE_URI={v[0]}",
                f"MLFLOW_ARTIFACTS_DESTINATION=s3://{v[3]}",
                f"MLFLOW_S3_ENDPOINT_URL={s3_endpoint}",
                f"AWS_ACCESS_KEY_ID={v[1]}",
                f"AWS_SECRET_ACCESS_KEY={v[2]}",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
            ]
        )
        self.db_upgrade = one_shot_job(
            db_upgrade_resource(settings),
            stack=settings.stack,
            role=ROLE_DB_UPGRADE,
            image=image,
            command=DB_UPGRADE_COMMAND,
            envs=pulumi.Output.secret(pulumi.Output.from_input(backend_uri).apply(lambda uri: [f"MLFLOW_BACKEND_STORE_URI={uri}"])),
            network=network,
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )
        ports = (
            [docker.ContainerPortArgs(internal=contract.MLFLOW_PORT, external=settings.mlflow_ui_port, ip="127.0.0.1")]
            if settings.mlflow_ui_port is not None
            else None
        )
        self.container = service_container(
            "mlflow",
            stack=settings.stack,
            role=ROLE_MLFLOW,
            # Known only once the migration exited 0: a failed one stops here.
            image=after_success(self.db_upgrade, image),
            command=server_command(settings),
            envs=pulumi.Output.secret(envs),
            ports=ports,
            network=network,
            aliases=[contract.MLFLOW_HOST],
            health=healthcheck(HEALTH_TEST, interval_s=settings.health_interval_s, start_period_s=START_PERIOD_S),
            wait_timeout_s=START_PERIOD_S + 120,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*depends_on, self.db_upgrade]),
        )
        self.register_outputs({"container": self.container.name, "url": self.url})
