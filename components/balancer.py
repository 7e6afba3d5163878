"""The nginx entry point: the one container published on the host.

Its configuration is `nginx.render.render(settings)`, uploaded as /etc/nginx/nginx.conf,
plus the stub_status snippet in /etc/nginx/status/. Neither depends on the replica count
or weights, and the container takes no replica output, so scaling or re-weighting
replicas never changes (or replaces) the balancer.

API keys are RandomPasswords, one per name in `apiKeys`, owned here: the keys file beside
nginx.conf maps each key to its name (uploaded as a secret). Adding or removing a name adds
or removes one password and changes that upload only, so it replaces the balancer container
and nothing else. A TLS certificate and key from config are uploaded beside nginx.conf, as
secrets too.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker
import pulumi_random as random

import nginx.render as nginx_render
from app import contract
from components.common import healthcheck, service_container, type_token
from stackconfig.names import ROLE_BALANCER
from stackconfig.settings import Settings

CONF_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.CONF_FILE}"
API_KEYS_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.API_KEYS_FILE}"
TLS_CERT_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.TLS_CERT_FILE}"
TLS_KEY_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.TLS_KEY_FILE}"
# 40 letters and digits (~238 bits): fits an HTTP header and nginx's map without quoting trouble.
API_KEY_LENGTH = 40
STATUS_PATH = f"{nginx_render.CONF_DIR_IN_CONTAINER}/{nginx_render.STATUS_DIR}/{nginx_render.STATUS_FILE}"
# The official nginx image has curl; the status server answers loopback.
HEALTH_TEST = ["CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{contract.BALANCER_STATUS_PORT}{nginx_render.STATUS_ROUTE}"]
# Finish in-flight requests on stop (nginx's graceful quit on SIGQUIT).
STOP_SIGNAL = "SIGQUIT"
STOP_GRACE_S = 30


def api_key_resource(name: str) -> str:
    return f"api-key-{name}"


def entry_port(settings: Settings) -> int:
    """The port the published host port leads to inside the container."""
    return contract.BALANCER_PORT if settings.balancer.tls is None else contract.BALANCER_TLS_PORT


class Balancer(pulumi.ComponentResource):
    container: docker.Container
    api_keys: pulumi.Output[dict[str, str]]  # name -> key, secret

    def __init__(
        self, name: str, *, settings: Settings, network: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(type_token("Balancer"), name, None, opts)
        keys = {
            key_name: random.RandomPassword(
                api_key_resource(key_name),
                random.RandomPasswordArgs(length=API_KEY_LENGTH, special=False),
                opts=pulumi.ResourceOptions(parent=self),
            ).result
            for key_name in settings.balancer.access.api_keys
        }
        self.api_keys = pulumi.Output.secret(pulumi.Output.all(**keys) if keys else pulumi.Output.from_input({}))
        uploads = [
            docker.ContainerUploadArgs(file=CONF_PATH, content=nginx_render.render(settings)),
            docker.ContainerUploadArgs(file=STATUS_PATH, content=nginx_render.render_status(settings)),
        ]
        if keys:
            uploads.append(docker.ContainerUploadArgs(file=API_KEYS_PATH, content=self.api_keys.apply(nginx_render.render_api_keys)))
        tls = settings.balancer.tls
        if tls is not None:
            uploads += [
                docker.ContainerUploadArgs(file=TLS_CERT_PATH, content=pulumi.Output.secret(tls.certificate.value)),
                docker.ContainerUploadArgs(file=TLS_KEY_PATH, content=pulumi.Output.secret(tls.key.value)),
            ]
        self.container = service_container(
            "balancer",
            stack=settings.stack,
            role=ROLE_BALANCER,
            image=settings.images.nginx,
            uploads=uploads,
            ports=[
                docker.ContainerPortArgs(internal=entry_port(settings), external=settings.balancer.port, ip=settings.balancer.bind_ip)
            ],
            network=network,
            aliases=[contract.BALANCER_HOST],
            cpu_set=settings.balancer.cpu_set.spec if settings.balancer.cpu_set else None,
            health=healthcheck(HEALTH_TEST, interval_s=settings.health_interval_s, start_period_s=10),
            wait_timeout_s=60,
            stop_signal=STOP_SIGNAL,
            stop_grace_s=STOP_GRACE_S,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"container": self.container.name})
