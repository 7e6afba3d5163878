"""The nginx entry point: the one container published on the host.

Its configuration is `nginx.render.render(settings)`, uploaded as /etc/nginx/nginx.conf,
plus the stub_status snippet in /etc/nginx/status/. Neither depends on the replica count
or weights, and the container takes no replica output, so scaling or re-weighting
replicas never changes (or replaces) the balancer.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

import nginx.render as nginx_render
from app import contract
from components.common import LOG_DRIVER, LOG_OPTS, RESTART_SERVICE, container_name, healthcheck, labels, type_token
from components.settings import Settings

CONF_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.CONF_FILE}"
STATUS_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.STATUS_DIR}/{nginx_render.STATUS_FILE}"
# The official nginx image has curl; the status server answers loopback.
HEALTH_TEST = ["CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{contract.BALANCER_STATUS_PORT}{nginx_render.STATUS_ROUTE}"]
# Finish in-flight requests on stop (nginx's graceful quit on SIGQUIT).
STOP_SIGNAL = "SIGQUIT"
STOP_GRACE_S = 30


class Balancer(pulumi.ComponentResource):
    container: docker.Container

    def __init__(
        self, name: str, *, settings: Settings, network: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(type_token("Balancer"), name, None, opts)
        self.container = docker.Container(
            "balancer",
            docker.ContainerArgs(
                name=container_name(settings.stack, "balancer"),
                image=settings.images.nginx,
                uploads=[
                    docker.ContainerUploadArgs(file=CONF_PATH, content=nginx_render.render(settings)),
                    docker.ContainerUploadArgs(file=STATUS_PATH, content=nginx_render.render_status(settings)),
                ],
                ports=[
                    docker.ContainerPortArgs(
                        internal=contract.BALANCER_PORT, external=settings.balancer.port, ip=settings.balancer.bind_ip
                    )
                ],
                networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network, aliases=[contract.BALANCER_HOST])],
                healthcheck=healthcheck(HEALTH_TEST, start_period_s=10),
                wait=True,
                wait_timeout=60,
                restart=RESTART_SERVICE,
                stop_signal=STOP_SIGNAL,
                destroy_grace_seconds=STOP_GRACE_S,
                stop_timeout=STOP_GRACE_S,
                log_driver=LOG_DRIVER,
                log_opts=LOG_OPTS,
                labels=labels(settings.stack, "balancer"),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"container": self.container.name})
