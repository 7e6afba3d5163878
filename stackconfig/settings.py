"""Stack configuration, read once and validated into frozen dataclasses.

This is the only module that reads `pulumi.Config`. Everything downstream
(components, the nginx renderer, the local stack runner) takes a `Settings`.
Settings are target-independent: they describe the serving stack, not Docker.

The replicas of `replicas`/`weights` form the default group (role "primary"); the `groups`
key adds named canary and shadow groups, each a `ReplicaGroup` serving another alias of the
same registered model. Consumers iterate over `Settings.groups`, default group first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from app import contract
from stackconfig.names import DEFAULT_GROUP, namespace_name

# Limits of the config schema. Pulumi.yaml documents the same keys; a test
# checks that both agree.
MAX_REPLICAS = 200
MAX_WEIGHT = 10
# The weight of a replica that the `weights` list does not reach.
DEFAULT_WEIGHT = 1
MIN_MEMORY_MB = 512
MIN_SHM_MB = 64
GPU_MODES = ("none", "all", "count", "devices")
BALANCER_ALGORITHMS = ("round_robin", "least_conn")
# balancerWorkerProcesses: nginx's own word for one worker per CPU, or a count up to this.
WORKER_PROCESSES_AUTO = "auto"
MAX_WORKER_PROCESSES = 64
# nginx waits this much longer than a replica may score, so that the replica's own 504
# (JSON, with the request id) reaches the client rather than nginx's.
READ_TIMEOUT_MARGIN_S = 1

# Roles of replica groups. The default group is the primary: it answers every request no
# canary takes. A canary answers a fixed share of requests; a shadow answers none (nginx
# mirrors a share of requests to it and drops its answers).
GROUP_PRIMARY = "primary"
GROUP_CANARY = "canary"
GROUP_SHADOW = "shadow"
GROUP_ROLES = (GROUP_CANARY, GROUP_SHADOW)  # the roles a named group may take
# Shares are percentages with at most two decimals: nginx's split_clients works in 0.01 %.
SHARE_DECIMALS = 2
# Fields of one entry of `groups`. The resource and GPU fields default to the top-level keys.
GROUP_RESOURCE_FIELDS = ("replicaCpus", "replicaMemoryMb", "replicaShmMb", "replicaWorkers", "gpuMode", "gpuCount",
                         "gpuDeviceIds")
GROUP_FIELDS = ("name", "role", "alias", "replicas", "weights", "trafficPercent", "mirrorPercent", "stickyHeader",
                *GROUP_RESOURCE_FIELDS)
# Lowercase letters and digits, starting with a letter: the generated names
# (`replica-<group>-<i>`, `replica-<group>-w<W>`, `replicas_<group>`) can then never equal a
# name of another group or of the default group (`replica-<i>`, `replica-w<W>`), and they are
# valid Docker, DNS (Kubernetes) and nginx names.
_GROUP_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,19}$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_KEY_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_ORIGIN_RE = re.compile(r"^https?://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")
# Highest rate limit, requests per second.
MAX_RATE = 1_000_000

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid. The message names the key and what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class GpuSettings:
    mode: str  # one of GPU_MODES
    count: int  # GPUs per replica, for mode "count" and "devices"
    device_ids: tuple[str, ...]  # for mode "devices", assigned round-robin

    def devices_for(self, replica_index: int) -> tuple[str, ...]:
        """Device ids of one replica in mode "devices": round-robin over the configured ids."""
        n = len(self.device_ids)
        start = replica_index * self.count
        return tuple(self.device_ids[(start + k) % n] for k in range(self.count))


@dataclass(frozen=True)
class Resources:
    cpus: str  # Docker's --cpus, e.g. "1.5"
    memory_mb: int
    shm_mb: int
    gpu: GpuSettings
    # Serving processes per replica; None: one per GPU the replica sees (gpuMode all, whose
    # count only the replica knows).
    workers: int | None = 1


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


@dataclass(frozen=True)
class ReplicaGroup:
    name: str
    count: int
    weights: tuple[int, ...]  # one per replica, 1..MAX_WEIGHT
    resources: Resources
    model: ModelRef
    role: str = GROUP_PRIMARY  # GROUP_PRIMARY (the default group only), GROUP_CANARY or GROUP_SHADOW
    # Share of requests this group answers, in percent: a canary's trafficPercent; for the
    # primary, what the canaries leave; 0 for a shadow.
    traffic_percent: float = 100.0
    # Share of requests mirrored to a shadow, in percent (0 for the other roles).
    mirror_percent: float = 0.0
    # A canary's request header whose value picks the group: the same value, the same group.
    # None: every request is drawn on its own.
    sticky_header: str | None = None


@dataclass(frozen=True)
class ServingSettings:
    """Replica server knobs, the same for every group."""

    poll_interval_s: float
    max_batch_size: int
    max_batch_wait_ms: float
    max_queue: int
    max_body_mb: int
    shutdown_grace_s: int
    predict_kernels: bool
    # One set of limits, end to end (see `_limits`): the replica answers 504 past the scoring
    # timeout; nginx's read timeout (BalancerSettings) is never shorter; the model load timeout
    # is the healthcheck's start period and bounds a rollout's wait per replica.
    scoring_timeout_s: int
    model_load_timeout_s: int
    payload_log_percent: float  # share of invocations written to the payload log; 0: off


@dataclass(frozen=True)
class TlsSettings:
    certificate: SecretValue  # PEM, the chain the balancer presents
    key: SecretValue  # PEM private key; Pulumi.yaml marks it `secret`


@dataclass(frozen=True)
class AccessSettings:
    """Who may call /invocations, how often, and from which web origins."""

    api_keys: tuple[str, ...]  # key names; the keys themselves are generated (pulumi-random). Empty: open.
    rate_per_key: int | None  # requests per second per API key; None: no limit
    rate_per_client: int | None  # requests per second per client address; None: no limit
    burst: int | None  # requests above the rate accepted at once; None: one second's worth
    cors_origins: tuple[str, ...]  # origins allowed to call from a browser; empty: none


@dataclass(frozen=True)
class CpuSet:
    """Host CPUs a container may run on, as Docker's --cpuset-cpus takes them ("0-3,6")."""

    spec: str
    cpus: frozenset[int]


@dataclass(frozen=True)
class BalancerSettings:
    port: int  # published on the host
    bind_ip: str
    algorithm: str  # one of BALANCER_ALGORITHMS
    worker_processes: int | None  # nginx workers on the Docker host; None: auto (one per CPU)
    cpu_set: CpuSet | None  # the host CPUs the balancer container may run on; None: any
    max_fails: int
    fail_timeout_s: int
    connect_timeout_s: int
    read_timeout_s: int  # balancerReadTimeoutSeconds, or derived from the scoring timeout
    access: AccessSettings
    tls: TlsSettings | None  # None: plain HTTP


@dataclass(frozen=True)
class Images:
    mysql: str
    minio: str
    minio_client: str
    nginx: str
    python: str  # base of the images we build from app/ (their PYTHON_IMAGE build argument)
    app_tag: str  # tag of the images we build from app/


TARGET_DOCKER = "docker"
TARGET_KUBERNETES = "kubernetes"
TARGETS = (TARGET_DOCKER, TARGET_KUBERNETES)
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


@dataclass(frozen=True)
class SecretValue:
    """A config value set as a secret. Its repr hides it, so that no error message or log line
    that prints settings shows it; components hand it on wrapped in `pulumi.Output.secret`."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "[secret]"


@dataclass(frozen=True)
class ExternalStores:
    """MLflow's stores outside the cluster (the default on Kubernetes)."""

    database_url: SecretValue  # SQLAlchemy URL, mysql+pymysql://
    s3_endpoint: str
    s3_access_key_id: SecretValue
    s3_secret_access_key: SecretValue


@dataclass(frozen=True)
class InClusterStores:
    """MySQL and MinIO as StatefulSets in the namespace (evaluation)."""

    storage_class: str | None  # None: the cluster's default StorageClass
    mysql_storage_gi: int
    minio_storage_gi: int


@dataclass(frozen=True)
class Autoscaling:
    max_replicas: int  # per replica group Deployment
    cpu_percent: int  # average CPU use, in percent of the request


@dataclass(frozen=True)
class KubernetesSettings:
    namespace: str
    create_namespace: bool  # True when `namespace` is unset: the program owns mlserve-<stack>
    kubeconfig: SecretValue | None  # None: KUBECONFIG or ~/.kube/config
    cluster_domain: str
    dns_resolver: str  # what nginx's `resolver` names: an address or a name, optional :port
    image_registry: str
    image_pull_secret: str | None
    stores: ExternalStores | InClusterStores
    max_surge: int
    max_unavailable: int
    gpu_node_selector: tuple[tuple[str, str], ...]
    gpu_runtime_class: str | None
    autoscaling: Autoscaling | None
    balancer_service_type: str  # one of SERVICE_TYPES


@dataclass(frozen=True)
class Settings:
    stack: str
    groups: tuple[ReplicaGroup, ...]
    serving: ServingSettings
    balancer: BalancerSettings
    images: Images
    bucket: str
    mlflow_ui_port: int | None  # published on 127.0.0.1 only, when set
    docker_host: str | None
    train_demo_model: bool
    protect_data: bool
    health_interval_s: int  # Docker healthcheck interval of every service and replica
    replica_cpu_set: CpuSet | None = None  # the host CPUs every replica container may run on; None: any
    # What the config means but the user may not expect (see `load`, which logs each one).
    warnings: tuple[str, ...] = ()
    target: str = "docker"  # one of TARGETS
    kubernetes: KubernetesSettings | None = None  # set exactly when target is kubernetes

    @property
    def default_group(self) -> ReplicaGroup:
        return self.groups[0]

    def groups_of_role(self, role: str) -> tuple[ReplicaGroup, ...]:
        return tuple(g for g in self.groups if g.role == role)


PROJECT_FILE = Path(__file__).resolve().parent.parent / "Pulumi.yaml"


@dataclass(frozen=True)
class KeySpec:
    """One key of Pulumi.yaml's config schema: how its raw string is decoded, and its default."""

    type: str | None  # "string", "integer", "boolean", "array"; None: structured (see STRUCTURED_KEYS)
    default: Any  # None: optional
    description: str
    secret: bool = False  # must be set with `pulumi config set --secret`


def _read_schema(path: Path = PROJECT_FILE) -> dict[str, KeySpec]:
    """Pulumi.yaml's `config` section: the one place where each key's type and default live."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    return {
        key: KeySpec(
            type=entry.get("type"),
            default=entry.get("default"),
            description=entry.get("description", ""),
            secret=bool(entry.get("secret", False)),
        )
        for key, entry in (doc.get("config") or {}).items()
    }


SCHEMA: dict[str, KeySpec] = _read_schema()
# Every key and its default (None: optional), as Pulumi.yaml declares them.
DEFAULTS: dict[str, Any] = {key: spec.default for key, spec in SCHEMA.items()}
# Keys that Pulumi.yaml declares without a `type`: Pulumi's project config schema has no object
# type (pulumi/pulumi#11321), and a typed key cannot hold a list of objects. The CLI hands such
# a value over as JSON; the parser decodes it and checks every field, naming its path
# (`groups[0].trafficPercent`). The Python type each must decode to:
STRUCTURED_KEYS: dict[str, type] = {"groups": list}

_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9_][A-Za-z0-9._-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CPUS_RE = re.compile(r"^\d+(\.\d+)?$")
_CPU_SET_RE = re.compile(r"^\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?)*$")
_IPV4_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


_BOOLEANS = {"true": True, "false": False}


def _decode(key: str, raw: Any) -> Any:
    """A raw config value as its declared type in Pulumi.yaml.

    The CLI hands every value over as a string: strings as they are, everything else as JSON.
    Decoding by the declared type keeps a string a string (`imageTag: "1.10"` stays "1.10",
    `modelName: "123"` stays "123"). A value that does not decode is returned as it is, so that
    the key's check names the key and the value in its error.
    """
    spec = SCHEMA[key]
    if raw is None:
        return spec.default
    if not isinstance(raw, str) or spec.type == "string":
        return raw
    if spec.type == "integer":
        return raw  # _int parses it and names the key when it is no whole number
    if spec.type == "boolean":
        return _BOOLEANS.get(raw.strip().lower(), raw)
    try:  # arrays and untyped (structured) keys are JSON
        return json.loads(raw)
    except ValueError:
        return raw


def _int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(key, f"must be a whole number from {lo} to {hi}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(key, f"must be a whole number from {lo} to {hi}, got {value!r}") from None
    if not lo <= number <= hi:
        raise ConfigError(key, f"must be a whole number from {lo} to {hi}, got {number}")
    return number


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def _cpu_set(key: str, value: Any) -> CpuSet | None:
    if value is None:
        return None
    spec = str(value).replace(" ", "")
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not _CPU_SET_RE.match(spec):
        raise ConfigError(key, f"must be host CPU numbers and ranges as Docker's --cpuset-cpus takes them, such as 0-3 or 1,3; got {value!r}")
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if lo > hi:
            raise ConfigError(key, f"range {part!r} runs backwards; write it {hi}-{lo}")
        cpus.update(range(lo, hi + 1))
    return CpuSet(spec=spec, cpus=frozenset(cpus))


def _group_key(index: int, field: str) -> str:
    """The config key of a field of Settings.groups[index]: groups[0] is the default group
    (top-level keys), the others are `groups` entries."""
    return field if index == 0 else f"groups[{index - 1}].{field}"


def _check_replica_cpu_set(cpu_set: CpuSet | None, groups: tuple[ReplicaGroup, ...]) -> None:
    """A quota larger than the CPUs a replica may run on could never be used."""
    if cpu_set is None:
        return
    for index, group in enumerate(groups):
        if Fraction(group.resources.cpus) > len(cpu_set.cpus):
            raise ConfigError("replicaCpuSet", f"{cpu_set.spec!r} holds {len(cpu_set.cpus)} CPU(s), fewer than "
                                               f"{_group_key(index, 'replicaCpus')} ({group.resources.cpus}): a replica could "
                                               "never use its quota")


def _worker_processes(value: Any) -> int | None:
    if value == WORKER_PROCESSES_AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() \
            or not 1 <= int(value) <= MAX_WORKER_PROCESSES:
        raise ConfigError("balancerWorkerProcesses", f"must be {WORKER_PROCESSES_AUTO} or a whole number from 1 to "
                                                     f"{MAX_WORKER_PROCESSES}, got {value!r}")
    return int(value)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _matching(key: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ConfigError(key, f"must be {what}, got {value!r}")
    return value


def _image(key: str, value: Any) -> str:
    image = _matching(key, value, _IMAGE_RE, "an image reference with an explicit tag (name:tag)")
    if image.rsplit(":", 1)[1] == "latest":
        raise ConfigError(key, f"must be pinned to a version, not 'latest'; got {image!r}")
    return image


def _ipv4(key: str, value: Any) -> str:
    match = _IPV4_RE.match(value) if isinstance(value, str) else None
    if not match or any(int(octet) > 255 for octet in match.groups()):
        raise ConfigError(key, f"must be an IPv4 address such as 0.0.0.0 or 127.0.0.1, got {value!r}")
    return str(value)


def _weights(value: Any, replicas: int, warnings: list[str]) -> tuple[int, ...]:
    """One weight per replica. Replicas past the list get weight 1; entries past the count are
    kept in config (unused until the count grows back) and a warning says so, so that
    `pulumi config set replicas N` alone scales any stack up or down."""
    if value is None:
        return (1,) * replicas
    if not isinstance(value, list):
        raise ConfigError("weights", f"must be a list of whole numbers 1 to {MAX_WEIGHT} (one per replica), got {value!r}")
    weights = tuple(_int("weights", w, 1, MAX_WEIGHT) for w in value)
    if len(weights) > replicas:
        warnings.append(
            f"config key 'weights': {len(weights)} entries for {replicas} replicas; entries past the count "
            f"({list(weights[replicas:])}) are unused until 'replicas' grows back"
        )
    elif len(weights) < replicas:
        warnings.append(
            f"config key 'weights': {len(weights)} entries for {replicas} replicas; "
            f"replicas {len(weights)}..{replicas - 1} get weight {DEFAULT_WEIGHT}"
        )
    return weights[:replicas] + (DEFAULT_WEIGHT,) * (replicas - len(weights))


def _gpu(get: Callable[[str], Any], key: Callable[[str], str] = str) -> GpuSettings:
    """GPU settings from the gpu* keys; `key` turns a key into the name errors use."""
    mode = _choice(key("gpuMode"), get("gpuMode"), GPU_MODES)
    count = _int(key("gpuCount"), get("gpuCount"), 1, 16)
    raw_ids = get("gpuDeviceIds")
    device_ids: tuple[str, ...] = ()
    if mode == "devices":
        if not isinstance(raw_ids, list) or not raw_ids:
            raise ConfigError(key("gpuDeviceIds"), f"must be a non-empty list of GPU ids when gpuMode is 'devices', got {raw_ids!r}")
        ids = [str(d) for d in raw_ids]
        for device in ids:
            if not re.match(r"^[A-Za-z0-9-]+$", device):
                raise ConfigError(key("gpuDeviceIds"), f"entries must be GPU indexes or UUIDs, got {device!r}")
        if len(set(ids)) != len(ids):
            raise ConfigError(key("gpuDeviceIds"), f"must not repeat an id, got {ids}")
        if count > len(ids):
            raise ConfigError(key("gpuCount"), f"must be at most the number of gpuDeviceIds ({len(ids)}), got {count}")
        device_ids = tuple(ids)
    elif raw_ids is not None:
        raise ConfigError(key("gpuDeviceIds"), f"is only used when gpuMode is 'devices' (gpuMode is {mode!r})")
    return GpuSettings(mode=mode, count=count, device_ids=device_ids)


def _resources(get: Callable[[str], Any], key: Callable[[str], str] = str) -> Resources:
    cpus = str(get("replicaCpus"))
    if not _CPUS_RE.match(cpus) or float(cpus) <= 0:
        raise ConfigError(key("replicaCpus"), f"must be a positive number of CPUs such as 2 or 1.5, got {cpus!r}")
    gpu = _gpu(get, key)
    return Resources(
        cpus=cpus,
        memory_mb=_int(key("replicaMemoryMb"), get("replicaMemoryMb"), MIN_MEMORY_MB, 1024 * 1024),
        shm_mb=_int(key("replicaShmMb"), get("replicaShmMb"), MIN_SHM_MB, 1024 * 1024),
        gpu=gpu,
        workers=_workers(get("replicaWorkers"), key("replicaWorkers"), cpus, gpu),
    )


def _workers(value: Any, key: str, cpus: str, gpu: GpuSettings) -> int | None:
    """Serving processes per replica: the key, or what the replica's hardware allows - a
    Python process serves on one core (one GIL), and a GPU is best fed by one process."""
    if value is not None:
        return _int(key, value, 1, contract.MAX_WORKERS)
    if gpu.mode == "none":
        return max(1, int(Fraction(cpus)))
    if gpu.mode == "all":
        return None
    return gpu.count


def _alias(key: str, value: Any) -> str:
    alias = _matching(key, value, _NAME_RE, "a model alias (letters, digits, . _ -)")
    if alias.lower().startswith("v") and alias[1:].isdigit():
        raise ConfigError(key, f"must not look like a version (MLflow reserves v<number>), got {alias!r}")
    return alias


def _percent(key: str, value: Any) -> float:
    """A share in percent, 0-100, with at most SHARE_DECIMALS decimals. Numbers or numeric strings
    (`pulumi config set --path` stores a decimal as a string)."""
    what = f"a percentage from 0 to 100 with at most {SHARE_DECIMALS} decimals"
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or number != number:  # not a number, or NaN
        raise ConfigError(key, f"must be {what}, got {value!r}")
    if not 0 <= number <= 100:
        raise ConfigError(key, f"must be {what}, got {value!r}")
    scaled = number * 10**SHARE_DECIMALS
    if abs(scaled - round(scaled)) > 1e-6:
        raise ConfigError(key, f"must be {what}, got {value!r}")
    return round(number, SHARE_DECIMALS)


def _read_timeout(value: Any, serving: ServingSettings) -> int:
    """nginx's proxy read timeout: as set, or the scoring timeout plus READ_TIMEOUT_MARGIN_S."""
    least = serving.scoring_timeout_s + READ_TIMEOUT_MARGIN_S
    if value is None:
        return least
    read = _int("balancerReadTimeoutSeconds", value, 1, 3600)
    if read < least:
        raise ConfigError(
            "balancerReadTimeoutSeconds",
            f"must be at least scoringTimeoutSeconds + {READ_TIMEOUT_MARGIN_S} = {least}, so that a replica's own 504 "
            f"answer arrives before nginx gives up; got {read} (leave it unset to derive it)",
        )
    return read


def _access(get: Callable[[str], Any]) -> AccessSettings:
    raw_keys = get("apiKeys")
    names: tuple[str, ...] = ()
    if raw_keys is not None:
        if not isinstance(raw_keys, list):
            raise ConfigError("apiKeys", f"must be a list of key names, got {raw_keys!r}")
        for name in raw_keys:
            if not isinstance(name, str) or not _KEY_NAME_RE.match(name):
                raise ConfigError("apiKeys", f"entries must be key names of 1-32 lowercase letters, digits and -, starting with a letter; got {name!r}")
        if len(set(raw_keys)) != len(raw_keys):
            raise ConfigError("apiKeys", f"must not repeat a name, got {raw_keys}")
        names = tuple(raw_keys)
    per_key = None if get("rateLimitPerKey") is None else _int("rateLimitPerKey", get("rateLimitPerKey"), 1, MAX_RATE)
    per_client = None if get("rateLimitPerClient") is None else _int("rateLimitPerClient", get("rateLimitPerClient"), 1, MAX_RATE)
    burst = None if get("rateLimitBurst") is None else _int("rateLimitBurst", get("rateLimitBurst"), 0, MAX_RATE)
    if per_key is not None and not names:
        raise ConfigError("rateLimitPerKey", "limits requests per API key, and apiKeys names none (set apiKeys, or use rateLimitPerClient)")
    if burst is not None and per_key is None and per_client is None:
        raise ConfigError("rateLimitBurst", "is the burst of a rate limit, and neither rateLimitPerKey nor rateLimitPerClient is set")
    raw_origins = get("corsOrigins")
    origins: tuple[str, ...] = ()
    if raw_origins is not None:
        if not isinstance(raw_origins, list):
            raise ConfigError("corsOrigins", f"must be a list of origins such as https://app.example.com, got {raw_origins!r}")
        for origin in raw_origins:
            if not isinstance(origin, str) or not _ORIGIN_RE.match(origin):
                raise ConfigError("corsOrigins", f"entries must be origins (scheme://host[:port], lowercase, no path), got {origin!r}")
        if len(set(raw_origins)) != len(raw_origins):
            raise ConfigError("corsOrigins", f"must not repeat an origin, got {raw_origins}")
        origins = tuple(raw_origins)
    return AccessSettings(api_keys=names, rate_per_key=per_key, rate_per_client=per_client, burst=burst, cors_origins=origins)


def _tls(certificate: Any, key: Any) -> TlsSettings | None:
    if certificate is None and key is None:
        return None
    if certificate is None or key is None:
        missing = "tlsCertificate" if certificate is None else "tlsKey"
        raise ConfigError(missing, "must be set too: TLS needs a certificate and its key (or neither, for plain HTTP)")
    # Messages name the key and the expected form, never the value (the key is a secret).
    if not isinstance(certificate, str) or "-----BEGIN CERTIFICATE-----" not in certificate:
        raise ConfigError("tlsCertificate", "must be a PEM certificate (-----BEGIN CERTIFICATE-----...), for example set from a file: pulumi config set tlsCertificate < cert.pem")
    if not isinstance(key, str) or not re.search(r"-----BEGIN (RSA |EC )?PRIVATE KEY-----", key):
        raise ConfigError("tlsKey", "must be a PEM private key (-----BEGIN PRIVATE KEY-----...), set as a secret: pulumi config set --secret tlsKey < key.pem")
    return TlsSettings(certificate=SecretValue(certificate), key=SecretValue(key))


def _limits(serving: ServingSettings) -> None:
    """Limits that contradict each other fail, naming the key to change."""
    if serving.shutdown_grace_s < serving.scoring_timeout_s:
        raise ConfigError(
            "shutdownGraceSeconds",
            f"must be at least scoringTimeoutSeconds ({serving.scoring_timeout_s}), so that a draining replica can finish "
            f"a request it admitted; got {serving.shutdown_grace_s}",
        )
    if serving.max_batch_wait_ms >= serving.scoring_timeout_s * 1000:
        raise ConfigError(
            "maxBatchWaitMs",
            f"must be shorter than scoringTimeoutSeconds ({serving.scoring_timeout_s} s); got {serving.max_batch_wait_ms:g} ms",
        )


def _group(index: int, entry: Any, top: Callable[[str], Any], model_name: str) -> ReplicaGroup:
    """One entry of `groups`. Errors name the field's path, e.g. groups[1].trafficPercent."""
    path = f"groups[{index}]"

    def key(field: str) -> str:
        return f"{path}.{field}"

    if not isinstance(entry, dict):
        raise ConfigError(path, f"must be an object with the fields {', '.join(GROUP_FIELDS)}; got {entry!r}")
    unknown = sorted(str(k) for k in entry if k not in GROUP_FIELDS)
    if unknown:
        raise ConfigError(key(unknown[0]), f"is not a field of a group; the fields are {', '.join(GROUP_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _GROUP_NAME_RE.match(name) or name == DEFAULT_GROUP or re.fullmatch(r"w\d+", name):
        raise ConfigError(
            key("name"),
            "must be 1-20 lowercase letters and digits starting with a letter, neither "
            f"'{DEFAULT_GROUP}' nor w<number> (names of the default group's replicas), got {name!r}",
        )
    role = entry.get("role")
    if role not in GROUP_ROLES:
        raise ConfigError(key("role"), f"must be one of {', '.join(GROUP_ROLES)}; got {role!r}")
    if entry.get("alias") is None:
        raise ConfigError(key("alias"), f"is required: the alias of model {model_name!r} that the {role} group serves")
    alias = _alias(key("alias"), entry["alias"])
    count = _int(key("replicas"), entry.get("replicas", 1), 1, MAX_REPLICAS)
    raw_weights = entry.get("weights")
    if raw_weights is None:
        weights = (DEFAULT_WEIGHT,) * count
    elif not isinstance(raw_weights, list) or len(raw_weights) != count:
        raise ConfigError(key("weights"), f"must be a list of {count} whole numbers 1 to {MAX_WEIGHT} (one per replica of the group), got {raw_weights!r}")
    else:
        weights = tuple(_int(key("weights"), w, 1, MAX_WEIGHT) for w in raw_weights)

    def get(field: str) -> Any:
        if field in entry:
            return entry[field]
        if field == "gpuDeviceIds" and "gpuMode" in entry and entry["gpuMode"] != "devices":
            return None  # the group's own mode takes no ids; the top-level ids are not its
        return top(field)

    traffic = mirror = 0.0
    sticky = None
    if role == GROUP_CANARY:
        if "mirrorPercent" in entry:
            raise ConfigError(key("mirrorPercent"), "is for shadow groups; a canary takes trafficPercent")
        if "trafficPercent" not in entry:
            raise ConfigError(key("trafficPercent"), "is required for a canary: its share of requests in percent (0 stops it)")
        traffic = _percent(key("trafficPercent"), entry["trafficPercent"])
        if entry.get("stickyHeader") is not None:
            sticky = _matching(key("stickyHeader"), entry["stickyHeader"], _HEADER_RE, "an HTTP header name (letters, digits, -)")
    else:
        for field in ("trafficPercent", "stickyHeader"):
            if field in entry:
                raise ConfigError(key(field), "is for canary groups; a shadow answers no client and takes mirrorPercent")
        if "mirrorPercent" not in entry:
            raise ConfigError(key("mirrorPercent"), "is required for a shadow: the share of requests mirrored to it in percent (0 stops it)")
        mirror = _percent(key("mirrorPercent"), entry["mirrorPercent"])
    return ReplicaGroup(
        name=name,
        count=count,
        weights=weights,
        resources=_resources(get, key),
        model=ModelRef(name=model_name, alias=alias),
        role=role,
        traffic_percent=traffic,
        mirror_percent=mirror,
        sticky_header=sticky,
    )


def _groups(value: Any, top: Callable[[str], Any], primary: ReplicaGroup, warnings: list[str]) -> tuple[ReplicaGroup, ...]:
    """The default group, then the named groups of `groups` in config order."""
    if value is None:
        return (primary,)
    if not isinstance(value, list):
        raise ConfigError("groups", f"must be a list of groups (objects with the fields {', '.join(GROUP_FIELDS)}), got {value!r}")
    named: list[ReplicaGroup] = []
    seen: dict[str, int] = {}
    canary_total = 0.0
    sticky: tuple[int, str] | None = None
    for index, entry in enumerate(value):
        group = _group(index, entry, top, primary.model.name)
        if group.name in seen:
            raise ConfigError(f"groups[{index}].name", f"{group.name!r} is already the name of groups[{seen[group.name]}]")
        seen[group.name] = index
        if group.role == GROUP_CANARY:
            canary_total = round(canary_total + group.traffic_percent, SHARE_DECIMALS)
            if canary_total > 100:
                raise ConfigError(f"groups[{index}].trafficPercent", f"the canaries' shares add up to {canary_total:g} %, more than 100")
            if group.sticky_header is not None:
                # One draw decides between the primary and every canary, so one header keys it.
                if sticky is not None and sticky[1].lower() != group.sticky_header.lower():
                    raise ConfigError(
                        f"groups[{index}].stickyHeader",
                        f"must be the same as groups[{sticky[0]}].stickyHeader ({sticky[1]!r}): one draw picks among all canaries",
                    )
                sticky = (index, group.sticky_header)
        if group.model.alias == primary.model.alias:
            warnings.append(f"config key 'groups[{index}].alias': {group.name} serves {group.model.alias!r}, the default group's alias too")
        named.append(group)
    if sticky is not None:
        # Every canary draws with the one header, also those that left it out.
        named = [replace(g, sticky_header=sticky[1]) if g.role == GROUP_CANARY else g for g in named]
    return (replace(primary, traffic_percent=round(100 - canary_total, SHARE_DECIMALS)), *named)


# --- targets ---------------------------------------------------------------------------------

# Keys only the Kubernetes target reads (their descriptions in Pulumi.yaml start with
# "Kubernetes only"; a test keeps both in step). None of them has a default in Pulumi.yaml, so
# "set" means set by the user, and setting one on the Docker target is an error.
KUBERNETES_ONLY_KEYS = (
    "kubeconfig", "namespace", "clusterDomain", "clusterDns", "imageRegistry", "imagePullSecret",
    "inClusterStores", "databaseUrl", "s3Endpoint", "s3AccessKeyId", "s3SecretAccessKey", "storageClass",
    "mysqlStorageGi", "minioStorageGi", "replicaMaxSurge", "replicaMaxUnavailable", "gpuNodeSelector",
    "gpuRuntimeClass", "autoscaleMaxReplicas", "autoscaleCpuPercent", "balancerServiceType",
)
# Keys that mean nothing on a cluster, and why. A key with a default counts as set when its
# value differs from the default (the CLI hands defaults over like any other value).
# A pod spec cannot name host CPUs: the kubelet pins a pod only under its static CPU manager
# policy (a Guaranteed pod asking for whole CPUs).
_NO_HOST_CPUS_ON_A_CLUSTER = "a pod cannot name host CPUs; the kubelet's static CPU manager policy pins pods that ask for whole CPUs"
DOCKER_ONLY_KEYS = {
    "dockerHost": "the cluster comes from the kubeconfig key or the environment's kubeconfig",
    "mlflowUiPort": "it publishes MLflow on the Docker host's loopback; on a cluster use "
    "`kubectl port-forward svc/mlflow 5000` (MLflow accepts localhost:5000)",
    "balancerBindIp": "a Kubernetes Service has no bind address; choose balancerServiceType instead",
    "healthIntervalSeconds": "it sets the Docker healthchecks' interval; the cluster's pods keep their probes' own periods",
    "balancerWorkerProcesses": "the cluster's balancer pods run a fixed number of nginx workers, one per CPU of the pod",
    "replicaCpuSet": _NO_HOST_CPUS_ON_A_CLUSTER,
    "balancerCpuSet": _NO_HOST_CPUS_ON_A_CLUSTER,
    # The Docker target uploads these files beside nginx.conf; the cluster's balancer mounts only
    # its ConfigMap so far (no Secret for keys or certificates yet).
    "apiKeys": "the cluster's nginx pods do not mount the API keys file yet (Docker target only for now)",
    "tlsCertificate": "the cluster's nginx pods do not mount TLS material yet; terminate TLS at the Service's load balancer or an ingress",
    "tlsKey": "the cluster's nginx pods do not mount TLS material yet; terminate TLS at the Service's load balancer or an ingress",
}
# gpuMode values that only a Docker host can honour, and why.
DOCKER_ONLY_GPU_MODES = {
    "all": "a pod cannot take every GPU of a node; use gpuMode count with gpuCount",
    "devices": "the NVIDIA device plugin picks the GPUs, pods cannot name them; use gpuMode count with gpuCount",
}
CLUSTER_DOMAIN = "cluster.local"
# CoreDNS keeps the Service name kube-dns for compatibility on kubeadm, k3s, kind, EKS, GKE, AKS.
CLUSTER_DNS_SERVICE = "kube-dns.kube-system.svc"
DEFAULT_MAX_SURGE = 1
DEFAULT_MAX_UNAVAILABLE = 0
DEFAULT_AUTOSCALE_CPU_PERCENT = 70
DEFAULT_MYSQL_STORAGE_GI = 10
DEFAULT_MINIO_STORAGE_GI = 50
# The MLflow image installs pymysql as its only database driver.
DATABASE_URL_PREFIX = "mysql+pymysql://"

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RESOLVER_RE = re.compile(r"^(?P<host>[a-z0-9.-]+)(:(?P<port>\d{1,5}))?$")
_REGISTRY_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")


def _check_target_keys(target: str, get: Callable[[str], Any]) -> None:
    """Keys that make no sense on the chosen target stop the program, naming the key and why."""
    if target == TARGET_DOCKER:
        for key in KUBERNETES_ONLY_KEYS:
            if get(key) is not None:
                raise ConfigError(key, "is only used when target is 'kubernetes' (target is 'docker')")
        return
    for key, reason in DOCKER_ONLY_KEYS.items():
        value = get(key)
        if SCHEMA[key].type == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # integers arrive as the CLI's strings (`_decode` leaves them to `_int`)
        if value is not None and value != SCHEMA[key].default:
            raise ConfigError(key, f"is not used when target is 'kubernetes': {reason}")
    mode = get("gpuMode")
    if mode in DOCKER_ONLY_GPU_MODES:
        raise ConfigError("gpuMode", f"{mode!r} is Docker-only and target is 'kubernetes': {DOCKER_ONLY_GPU_MODES[mode]}")
    if get("gpuDeviceIds") is not None:
        raise ConfigError("gpuDeviceIds", f"is not used when target is 'kubernetes': {DOCKER_ONLY_GPU_MODES['devices']}")


def _check_secret_keys(raw: Mapping[str, Any], secret_keys: Collection[str]) -> None:
    for key in sorted(raw):
        if SCHEMA[key].secret and raw[key] is not None and key not in secret_keys:
            raise ConfigError(key, f"must be set as a secret: pulumi config set --secret {key} <value>")


def _secret(key: str, value: Any, check: Callable[[str], bool], what: str) -> SecretValue:
    """A secret value; an invalid one is reported without echoing it."""
    if not isinstance(value, str) or not check(value):
        raise ConfigError(key, f"must be {what} (value not shown: it is a secret)")
    return SecretValue(value)


def _optional(key: str, get: Callable[[str], Any], check: Callable[[str, Any], T]) -> T | None:
    value = get(key)
    return None if value is None else check(key, value)


def _kubernetes(stack: str, get: Callable[[str], Any], groups: tuple[ReplicaGroup, ...]) -> KubernetesSettings:
    """The Kubernetes-only keys, once target is kubernetes (see README: "On a Kubernetes cluster")."""
    def dns_name(key: str, value: Any) -> str:
        return _matching(key, value, _DNS_NAME_RE, "a DNS name (lowercase letters, digits, '-' and '.')")

    namespace = _optional("namespace", get, lambda k, v: _matching(k, v, _DNS_LABEL_RE, "a namespace name (DNS label, 1-63 lowercase letters, digits, '-')"))
    domain = _optional("clusterDomain", get, dns_name) or CLUSTER_DOMAIN
    resolver = get("clusterDns")
    if resolver is None:
        resolver = f"{CLUSTER_DNS_SERVICE}.{domain}"
    else:
        match = _RESOLVER_RE.match(resolver) if isinstance(resolver, str) else None
        host = match.group("host") if match else ""
        port = int(match.group("port")) if match and match.group("port") else 53
        if not match or not (_IPV4_RE.match(host) or _DNS_NAME_RE.match(host)) or not 1 <= port <= 65535:
            raise ConfigError("clusterDns", f"must be an IPv4 address or a DNS name, with an optional :port, got {resolver!r}")
    registry = get("imageRegistry")
    if registry is None:
        raise ConfigError("imageRegistry", "is required when target is 'kubernetes': the cluster pulls the app images from it "
                          "(for example registry.example.com/ml)")
    registry = _matching("imageRegistry", registry, _REGISTRY_RE, "a registry host with an optional :port and path, such as registry.example.com/ml")
    pull_secret = _optional("imagePullSecret", get, dns_name)
    if pull_secret is not None and namespace is None:
        raise ConfigError("imagePullSecret", "needs 'namespace': the Secret must exist in the namespace before the pods do, "
                          "and without 'namespace' the program creates a new one")

    in_cluster = _bool("inClusterStores", get("inClusterStores")) if get("inClusterStores") is not None else False
    external_keys = ("databaseUrl", "s3Endpoint", "s3AccessKeyId", "s3SecretAccessKey")
    in_cluster_keys = ("storageClass", "mysqlStorageGi", "minioStorageGi")
    stores: ExternalStores | InClusterStores
    if in_cluster:
        for key in external_keys:
            if get(key) is not None:
                raise ConfigError(key, "is not used with inClusterStores: true (the stores run in the cluster)")
        stores = InClusterStores(
            storage_class=_optional("storageClass", get, dns_name),
            mysql_storage_gi=_optional("mysqlStorageGi", get, lambda k, v: _int(k, v, 1, 65536)) or DEFAULT_MYSQL_STORAGE_GI,
            minio_storage_gi=_optional("minioStorageGi", get, lambda k, v: _int(k, v, 1, 65536)) or DEFAULT_MINIO_STORAGE_GI,
        )
    else:
        for key in in_cluster_keys:
            if get(key) is not None:
                raise ConfigError(key, "is only used with inClusterStores: true")
        for key in external_keys:
            if get(key) is None:
                raise ConfigError(key, "is required when target is 'kubernetes' without inClusterStores: true "
                                  f"(external stores; set it with pulumi config set{' --secret' if SCHEMA[key].secret else ''} {key} ...)")
        stores = ExternalStores(
            database_url=_secret("databaseUrl", get("databaseUrl"), lambda v: v.startswith(DATABASE_URL_PREFIX) and len(v) > len(DATABASE_URL_PREFIX),
                                 f"a SQLAlchemy URL starting with {DATABASE_URL_PREFIX}"),
            s3_endpoint=_matching("s3Endpoint", get("s3Endpoint"), _URL_RE, "an http:// or https:// URL"),
            s3_access_key_id=_secret("s3AccessKeyId", get("s3AccessKeyId"), lambda v: bool(v.strip()), "a non-empty access key id"),
            s3_secret_access_key=_secret("s3SecretAccessKey", get("s3SecretAccessKey"), lambda v: bool(v.strip()), "a non-empty secret key"),
        )

    surge = _optional("replicaMaxSurge", get, lambda k, v: _int(k, v, 0, 100))
    unavailable = _optional("replicaMaxUnavailable", get, lambda k, v: _int(k, v, 0, 100))
    surge = DEFAULT_MAX_SURGE if surge is None else surge
    unavailable = DEFAULT_MAX_UNAVAILABLE if unavailable is None else unavailable
    if surge == 0 and unavailable == 0:
        raise ConfigError("replicaMaxUnavailable", "must be at least 1 when replicaMaxSurge is 0 (a rolling update could never start)")

    gpu_keys = ("gpuNodeSelector", "gpuRuntimeClass")
    if all(group.resources.gpu.mode == "none" for group in groups):
        for key in gpu_keys:
            if get(key) is not None:
                raise ConfigError(key, "is only used with gpuMode count (GPU replicas)")
    selector: list[tuple[str, str]] = []
    raw_selector = get("gpuNodeSelector")
    if raw_selector is not None:
        if not isinstance(raw_selector, list) or not raw_selector:
            raise ConfigError("gpuNodeSelector", f"must be a non-empty list of node labels key=value, got {raw_selector!r}")
        for entry in raw_selector:
            label, sep, value = str(entry).partition("=")
            if not sep or not _LABEL_KEY_RE.match(label) or not _LABEL_VALUE_RE.match(value):
                raise ConfigError("gpuNodeSelector", f"entries must be node labels key=value, got {entry!r}")
            if label in dict(selector):
                raise ConfigError("gpuNodeSelector", f"names the label {label!r} twice")
            selector.append((label, value))
    runtime_class = _optional("gpuRuntimeClass", get, dns_name)

    for index, group in enumerate(groups):
        if (Fraction(group.resources.cpus) * 1000).denominator != 1:
            raise ConfigError(_group_key(index, "replicaCpus"), f"must be a multiple of 0.001 on Kubernetes (CPU is counted in millicores), got {group.resources.cpus!r}")
        if group.resources.gpu.mode in DOCKER_ONLY_GPU_MODES:
            mode = group.resources.gpu.mode
            raise ConfigError(_group_key(index, "gpuMode"), f"{mode!r} is Docker-only and target is 'kubernetes': {DOCKER_ONLY_GPU_MODES[mode]}")

    autoscaling = None
    max_replicas = _optional("autoscaleMaxReplicas", get, lambda k, v: _int(k, v, 1, MAX_REPLICAS))
    cpu_percent = _optional("autoscaleCpuPercent", get, lambda k, v: _int(k, v, 10, 100))
    if max_replicas is None:
        if cpu_percent is not None:
            raise ConfigError("autoscaleCpuPercent", "is only used with autoscaleMaxReplicas (the autoscaler is off)")
    else:
        largest = max(group.weights.count(w) for group in groups for w in set(group.weights))
        if max_replicas < largest:
            raise ConfigError("autoscaleMaxReplicas", f"must be at least the largest replica group's count ({largest}, from "
                              f"replicas and weights: the autoscaler's minimum), got {max_replicas}")
        autoscaling = Autoscaling(max_replicas=max_replicas, cpu_percent=cpu_percent or DEFAULT_AUTOSCALE_CPU_PERCENT)

    kubeconfig = get("kubeconfig")
    return KubernetesSettings(
        namespace=namespace or namespace_name(stack),
        create_namespace=namespace is None,
        kubeconfig=None if kubeconfig is None else _secret("kubeconfig", kubeconfig, lambda v: bool(v.strip()), "kubeconfig contents or a path"),
        cluster_domain=domain,
        dns_resolver=resolver,
        image_registry=registry,
        image_pull_secret=pull_secret,
        stores=stores,
        max_surge=surge,
        max_unavailable=unavailable,
        gpu_node_selector=tuple(selector),
        gpu_runtime_class=runtime_class,
        autoscaling=autoscaling,
        balancer_service_type=_optional("balancerServiceType", get, lambda k, v: _choice(k, v, SERVICE_TYPES)) or "ClusterIP",
    )


def parse(stack: str, raw: Mapping[str, Any], secret_keys: Collection[str] = ()) -> Settings:
    """Validate raw config strings (as Pulumi hands them over) into Settings.

    Raises ConfigError naming the first offending key. Unknown keys are errors too,
    so a misspelled key cannot be silently ignored. `secret_keys`: the keys (without the
    project prefix) that were set as secrets; a key Pulumi.yaml marks `secret` must be one.
    """
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(unknown[0], f"is not a known key; known keys are {', '.join(sorted(DEFAULTS))}")

    def get(key: str) -> Any:
        return _decode(key, raw.get(key))

    target = _choice("target", get("target"), TARGETS)
    _check_target_keys(target, get)
    _check_secret_keys(raw, secret_keys)

    warnings: list[str] = []
    replicas = _int("replicas", get("replicas"), 1, MAX_REPLICAS)
    weights = _weights(get("weights"), replicas, warnings)
    resources = _resources(get)
    model = ModelRef(
        name=_matching("modelName", get("modelName"), _NAME_RE, "a registered model name (letters, digits, . _ -)"),
        alias=_alias("modelAlias", get("modelAlias")),
    )
    primary = ReplicaGroup(name=DEFAULT_GROUP, count=replicas, weights=weights, resources=resources, model=model)
    groups = _groups(get("groups"), get, primary, warnings)
    replica_cpu_set = _cpu_set("replicaCpuSet", get("replicaCpuSet"))
    _check_replica_cpu_set(replica_cpu_set, groups)

    serving = ServingSettings(
        # Whole numbers: Pulumi's project config schema has no float type (string, integer,
        # boolean, array), and neither knob needs sub-unit precision.
        poll_interval_s=float(_int("pollIntervalSeconds", get("pollIntervalSeconds"), 1, 3600)),
        max_batch_size=_int("maxBatchSize", get("maxBatchSize"), 1, 4096),
        max_batch_wait_ms=float(_int("maxBatchWaitMs", get("maxBatchWaitMs"), 0, 1000)),
        max_queue=_int("maxQueue", get("maxQueue"), 1, 1_000_000),
        max_body_mb=_int("maxBodyMb", get("maxBodyMb"), 1, 1024),
        shutdown_grace_s=_int("shutdownGraceSeconds", get("shutdownGraceSeconds"), 1, 3600),
        predict_kernels=_bool("predictKernels", get("predictKernels")),
        scoring_timeout_s=_int("scoringTimeoutSeconds", get("scoringTimeoutSeconds"), 1, 3600),
        model_load_timeout_s=_int("modelLoadTimeoutSeconds", get("modelLoadTimeoutSeconds"), 10, 7200),
        payload_log_percent=_percent("payloadLogPercent", get("payloadLogPercent")),
    )
    balancer = BalancerSettings(
        port=_int("balancerPort", get("balancerPort"), 1, 65535),
        bind_ip=_ipv4("balancerBindIp", get("balancerBindIp")),
        algorithm=_choice("balancerAlgorithm", get("balancerAlgorithm"), BALANCER_ALGORITHMS),
        worker_processes=_worker_processes(get("balancerWorkerProcesses")),
        cpu_set=_cpu_set("balancerCpuSet", get("balancerCpuSet")),
        max_fails=_int("balancerMaxFails", get("balancerMaxFails"), 1, 100),
        fail_timeout_s=_int("balancerFailTimeoutSeconds", get("balancerFailTimeoutSeconds"), 1, 3600),
        connect_timeout_s=_int("balancerConnectTimeoutSeconds", get("balancerConnectTimeoutSeconds"), 1, 600),
        read_timeout_s=_read_timeout(get("balancerReadTimeoutSeconds"), serving),
        access=_access(get),
        tls=_tls(get("tlsCertificate"), get("tlsKey")),
    )
    _limits(serving)
    images = Images(
        mysql=_image("mysqlImage", get("mysqlImage")),
        minio=_image("minioImage", get("minioImage")),
        minio_client=_image("minioClientImage", get("minioClientImage")),
        nginx=_image("nginxImage", get("nginxImage")),
        python=_image("pythonImage", get("pythonImage")),
        app_tag=_matching("imageTag", get("imageTag"), re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"), "a Docker tag"),
    )
    if images.app_tag == "latest":
        raise ConfigError("imageTag", "must be a version, not 'latest'")
    ui_port = get("mlflowUiPort")
    docker_host = get("dockerHost")
    if docker_host is not None and not (isinstance(docker_host, str) and re.match(r"^(ssh|tcp|unix)://\S+$", docker_host)):
        raise ConfigError("dockerHost", f"must be a Docker host URL such as ssh://user@gpu-box, got {docker_host!r}")
    kubernetes = _kubernetes(stack, get, groups) if target == TARGET_KUBERNETES else None
    return Settings(
        stack=stack,
        groups=groups,
        serving=serving,
        balancer=balancer,
        images=images,
        bucket=_matching("bucket", get("bucket"), _BUCKET_RE, "an S3 bucket name (3-63 lowercase letters, digits, . -)"),
        mlflow_ui_port=None if ui_port is None else _int("mlflowUiPort", ui_port, 1, 65535),
        docker_host=docker_host,
        train_demo_model=_bool("trainDemoModel", get("trainDemoModel")),
        protect_data=_bool("protectData", get("protectData")),
        health_interval_s=_int("healthIntervalSeconds", get("healthIntervalSeconds"), 1, 300),
        replica_cpu_set=replica_cpu_set,
        warnings=tuple(warnings),
        target=target,
        kubernetes=kubernetes,
    )


def _all_project_config(project: str) -> dict[str, str]:
    """Every key set for this project, whichever way Pulumi handed it over.

    `pulumi.Config` only answers per-key reads, which would let a misspelled key pass
    unnoticed. The Pulumi CLI hands a program its whole config as the JSON bag in
    PULUMI_CONFIG (read by `get_config_env`); mocks and the automation API set it
    in-process (`set_all_config`, the `CONFIG` context variable). Both are read, the
    in-process values winning as they do in `pulumi.runtime.config.get_config`.
    """
    from pulumi.runtime import config as runtime_config

    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    prefix = f"{project}:"
    return {full_key[len(prefix):]: value for full_key, value in merged.items() if full_key.startswith(prefix)}


def _secret_keys(project: str) -> set[str]:
    """Keys of this project that were set as secrets (`pulumi config set --secret`)."""
    from pulumi.runtime import config as runtime_config

    prefix = f"{project}:"
    full = {key for key in DEFAULTS if runtime_config.is_config_secret(f"{prefix}{key}")}
    full |= {key[len(prefix):] for key in runtime_config.get_config_secret_keys_env() if key.startswith(prefix)}
    return full


def load() -> Settings:
    """Read this stack's config through Pulumi. Called once, by __main__.py, before any resource."""
    import pulumi

    project = pulumi.get_project()
    config = pulumi.Config(project)
    raw: dict[str, str | None] = {key: str(value) for key, value in _all_project_config(project).items()}
    # Keys set one by one through PULUMI_CONFIG_<KEY> environment variables are not
    # enumerable; pick up the known ones.
    for key in DEFAULTS:
        if key not in raw:
            value = config.get(key)
            if value is not None:
                raw[key] = value
    settings = parse(pulumi.get_stack(), raw, _secret_keys(project))
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    return settings
