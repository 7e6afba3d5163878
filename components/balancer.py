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
from components.common import healthcheck, service_container, type_token
from stackconfig.names import ROLE_BALANCER
from stackconfig.settings import Settings

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
        self.container = service_container(
            "balancer",
            stack=settings.stack,
            role=ROLE_BALANCER,
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
            network=network,
            aliases=[contract.BALANCER_HOST],
            health=healthcheck(HEALTH_TEST, start_period_s=10),
            wait_timeout_s=60,
            stop_signal=STOP_SIGNAL,
            stop_grace_s=STOP_GRACE_S,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"container": self.container.name})
