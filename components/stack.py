"""Assemble the serving stack from settings; __main__.py calls `declare` and exports."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import pulumi
import pulumi_docker as docker

from components.artifacts import ArtifactStore
from components.balancer import Balancer
from components.common import after_success
from components.images import AppImages
from components.metadata import MetadataStore
from components.network import PrivateNetwork
from components.replicas import ModelReplicas
from components.tracking import TrackingServer
from components.trainer import DemoModelTrainer
from stackconfig.names import MLFLOW_PRIVATE_URL
from stackconfig.settings import Settings


@dataclass(frozen=True)
class DeclaredServing:
    network: PrivateNetwork
    metadata: MetadataStore
    artifacts: ArtifactStore
    images: AppImages
    tracking: TrackingServer
    trainer: DemoModelTrainer | None
    replicas: ModelReplicas
    balancer: Balancer


def docker_host_name(settings: Settings) -> str:
    """The name users reach the Docker host by: the host of dockerHost, else localhost."""
    if settings.docker_host:
        parts = urlsplit(settings.docker_host)
        if parts.scheme in ("ssh", "tcp") and parts.hostname:
            return parts.hostname
    return "localhost"


def entry_url(settings: Settings) -> str:
    ip = settings.balancer.bind_ip
    host = docker_host_name(settings) if ip == "0.0.0.0" else ip
    scheme = "http" if settings.balancer.tls is None else "https"
    return f"{scheme}://{host}:{settings.balancer.port}"


def mlflow_url(settings: Settings) -> str:
    """Published on the Docker host's loopback only; else reachable on the private network only."""
    if settings.mlflow_ui_port is None:
        return MLFLOW_PRIVATE_URL
    return f"http://127.0.0.1:{settings.mlflow_ui_port}"


def declare(settings: Settings) -> DeclaredServing:
    opts = None
    if settings.docker_host:
        # Every Docker resource goes to the remote host (for example a GPU box over SSH).
        provider = docker.Provider("docker-host", docker.ProviderArgs(host=settings.docker_host))
        opts = pulumi.ResourceOptions(providers={"docker": provider})

    network = PrivateNetwork("network", stack=settings.stack, opts=opts)
    metadata = MetadataStore("metadata", settings=settings, network=network.name, opts=opts)
    artifacts = ArtifactStore("artifacts", settings=settings, network=network.name, opts=opts)
    images = AppImages("images", settings=settings, opts=opts)
    tracking = TrackingServer(
        "tracking",
        settings=settings,
        image=images.tracking,
        network=network.name,
        backend_uri=metadata.backend_uri,
        # Known only once the bucket job exited 0: MLflow never creates its bucket.
        bucket=after_success(artifacts.bucket_job, artifacts.bucket),
        s3_endpoint=artifacts.endpoint,
        s3_access_key=artifacts.access_key,
        s3_secret_key=artifacts.secret_key,
        depends_on=[metadata.container, artifacts.bucket_job],
        opts=opts,
    )
    trainer = None
    if settings.train_demo_model:
        trainer = DemoModelTrainer(
            "trainer",
            settings=settings,
            image=images.replica,
            network=network.name,
            tracking_url=tracking.url,
            depends_on=[tracking.container],
            opts=opts,
        )
    replicas = ModelReplicas(
        "replicas",
        settings=settings,
        image=images.replica,
        network=network.name,
        tracking_url=tracking.url,
        # Replicas are ready only once a model is registered: after the demo job if any.
        after=[trainer.container if trainer else tracking.container],
        opts=opts,
    )
    balancer = Balancer("balancer", settings=settings, network=network.name, opts=opts)
    return DeclaredServing(network, metadata, artifacts, images, tracking, trainer, replicas, balancer)
