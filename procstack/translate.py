"""Declared containers -> `Service`s: what the program declares, classified by role.

The program is run under mocks (`mockrun.run_program`) and every container it declares becomes
one `Service`: its command, environment, uploaded files, network aliases and healthcheck are
taken from the declared inputs, never restated here. Its role is the role label the program
sets on every container (`stackconfig.names.LABEL_ROLE`): the one thing procstack classifies
by, and what picks the container's stand-in (standins.py says how each role's image is stood
in for). A container without a known role stops `up` with its name: there is no stand-in to
guess for it.

Networking. Each container gets its own loopback address 127.0.0.<20+k> (kept across runs in
the state file) and keeps the ports it has inside the container. Bind addresses are the only
things rewritten: an argv item `0.0.0.0` (mlflow's `--host`), the replica's ENV_BIND_HOST, and
nginx `listen <port>` lines (which would bind every interface). Hostnames are *not* rewritten:
the runner owns a marked block in /etc/hosts naming every container hostname and alias
(publish.py), so `http://mlflow:5000` in a replica's env and `@mysql:3306` in MLflow's backend
URI work unchanged, and the Host header MLflow checks (`--allowed-hosts`) is the deployed one.
nginx does not use /etc/hosts for `resolve` upstreams: it asks the DNS stand-in on
127.0.0.11:53 (procstack.dns).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import contract
from app.server import probe
from mockrun import DeclaredResource, DeclaredStack
from stackconfig import settings as settings_mod
from stackconfig.names import LABEL_ROLE, ONE_SHOT_ROLES, ROLES, weight_alias

from .errors import StackError

_URL = re.compile(r"https?://[^\s'\"]+")


@dataclass(frozen=True)
class Service:
    resource: str  # Pulumi logical name, e.g. replica-0
    name: str  # container name, e.g. mlserve-dev-replica-0
    role: str  # one of stackconfig.names.ROLES
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
        return self.role in ONE_SHOT_ROLES


def role_of(res: DeclaredResource) -> str:
    """The container's role label; an error naming the container when it has no known one."""
    role = res.role
    if role in ROLES:
        return role
    found = "no role label" if role is None else f"role {role!r}"
    raise StackError(
        f"container {res.name!r} ({res.inputs.get('name', res.name)}) has {found}: every container needs "
        f"the label {LABEL_ROLE} with one of {', '.join(ROLES)} (components/common.py sets it)"
    )


def _digest(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def service(res: DeclaredResource) -> Service:
    """One declared container as a Service."""
    inputs = res.inputs
    env: dict[str, str] = {}
    secret_env = set()
    for i, item in enumerate(inputs.get("envs") or ()):
        key, _, value = str(item).partition("=")
        env[key] = value
        if res.is_secret("envs", i) or res.is_secret("envs"):
            secret_env.add(key)
    hostnames = [str(inputs.get("name", res.name))]
    if inputs.get("hostname"):
        hostnames.append(str(inputs["hostname"]))
    for net in inputs.get("networksAdvanced") or ():
        hostnames.extend(str(a) for a in net.get("aliases") or ())
    return Service(
        resource=res.name,
        name=hostnames[0],
        role=role_of(res),
        image=str(inputs.get("image", "")),
        command=tuple(str(c) for c in inputs.get("command") or ()),
        env=env,
        uploads={str(u["file"]): str(u.get("content", "")) for u in inputs.get("uploads") or ()},
        hostnames=tuple(dict.fromkeys(hostnames)),
        healthcheck=tuple(str(t) for t in (inputs.get("healthcheck") or {}).get("tests") or ()),
        digest=_digest(inputs),
        secret_env=frozenset(secret_env),
    )


def services(declared: DeclaredStack) -> list[Service]:
    """Every declared container as a Service, in start order (stackconfig.names.ROLES; within a
    role, natural name order: replica-2 before replica-10)."""
    out = [service(res) for res in declared.containers()]
    return sorted(out, key=lambda s: (ROLES.index(s.role), _natural(s.resource)))


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


def readiness_url(service: Service, address: str, env: Mapping[str, str]) -> str | None:
    """The declared healthcheck's URL, pointed at the container's loopback address.

    The replica's healthcheck runs the image's probe module, which finds the URL in the
    replica's environment: asked with `env`, the environment the process runs with, it gives it."""
    if contract.PROBE_MODULE in service.healthcheck:
        return probe.ready_url(env)
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
