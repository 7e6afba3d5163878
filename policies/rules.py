"""The policy pack's rules as pure functions over plain resource descriptions.

`policies/__main__.py` wraps each rule in a CrossGuard policy (and starts the policy
server, which is why nothing but the pack itself imports it); the tests call the rules
directly on the resources the program declares under mocks. Both hand a rule the same
`Resource`: a type token, a logical name, properties as plain Python (camelCase keys, as
the engine sends them), the `protect` option, the parent's type and, where known, which
properties were secret.

A value that preview cannot know yet is `UNKNOWN`; a rule never fires on an unknown value
(it fires at the next preview, once the value is known).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from app import contract
from stackconfig.names import LABEL_ROLE, ROLE_BALANCER, ROLE_REPLICA

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
VOLUME = "docker:index/volume:Volume"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"


# The replica image's build argument that selects CUDA, the value that does, and the env
# var that tells a replica which device to use (all three agreed on in app/contract.py).
VARIANT_BUILD_ARG = contract.BUILD_ARG_VARIANT
CUDA_VARIANT = contract.DEVICE_CUDA
DEVICE_ENV = contract.ENV_DEVICE

# The stacks treated as production unless the pack's config says otherwise.
DEFAULT_PROD_STACKS = ("prod",)

Path = tuple[str | int, ...]


class _Unknown:
    """A value that is not known during preview."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


def is_unknown(value: Any) -> bool:
    return value is UNKNOWN


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    protect: bool = False
    # Paths into `props` whose value was a secret; None where that is not known (inside the
    # policy pack, the engine hands secrets over unwrapped and unmarked).
    secret_paths: frozenset[Path] | None = None
    # Logical names of the resources this one depends on (stack rules only).
    dependencies: tuple[str, ...] = ()

    def is_secret(self, *path: str | int) -> bool | None:
        if self.secret_paths is None:
            return None
        return any(path[: len(p)] == p for p in self.secret_paths)

    def describe(self) -> str:
        kind = self.type.rsplit(":", 1)[-1]
        return f"{kind} '{self.name}'"


@dataclass(frozen=True)
class Context:
    stack: str
    prod_stacks: tuple[str, ...] = DEFAULT_PROD_STACKS

    @property
    def prod(self) -> bool:
        # A Pulumi Cloud stack may be named <org>/<project>/<stack>; the last part counts.
        return self.stack.rsplit("/", 1)[-1] in self.prod_stacks


@dataclass(frozen=True)
class Violation:
    resource: str  # logical name
    message: str  # names the resource
    urn: str = ""


ResourceCheck = Callable[[Resource, Context], list[Violation]]
StackCheck = Callable[[Sequence[Resource], Context], list[Violation]]


@dataclass(frozen=True)
class Rule:
    name: str  # the CrossGuard policy name
    description: str
    scope: Literal["resource", "stack"]
    check: Callable[..., list[Violation]] = field(repr=False)

    def run(self, resources: Sequence[Resource], context: Context) -> list[Violation]:
        """Apply the rule to a whole stack, the way the pack applies it resource by resource."""
        if self.scope == "stack":
            return self.check(resources, context)
        return [v for r in resources for v in self.check(r, context)]


def _violation(resource: Resource, message: str) -> Violation:
    return Violation(resource=resource.name, message=f"{resource.describe()}: {message}", urn=resource.urn)


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _env(resource: Resource) -> list[tuple[int, str, Any]]:
    """(index, name, value) of each entry of a container's `envs` ("K=V"); value may be UNKNOWN."""
    entries = []
    for index, entry in enumerate(_list(resource.props.get("envs"))):
        if is_unknown(entry):
            continue
        name, _, value = str(entry).partition("=")
        entries.append((index, name, value))
    return entries


# --- only the balancer publishes host ports on a public address ------------------------------


def role(resource: Resource) -> str | None:
    """A container's role label (stackconfig.names.ROLES), the one way containers are told apart."""
    if resource.type != CONTAINER:
        return None
    for item in _list(resource.props.get("labels")):
        if isinstance(item, Mapping) and item.get("label") == LABEL_ROLE and not is_unknown(item.get("value")):
            return str(item.get("value"))
    return None


def is_balancer(resource: Resource) -> bool:
    return role(resource) == ROLE_BALANCER


def _public(ip: Any) -> bool:
    """Docker publishes on 0.0.0.0 (every interface) when no address is given."""
    if ip in (None, ""):
        return True
    try:
        return not ipaddress.ip_address(str(ip)).is_loopback
    except ValueError:
        return True  # a host name or garbage: assume the worst


def balancer_only_public_ports(resource: Resource, context: Context) -> list[Violation]:
    if resource.type != CONTAINER or is_balancer(resource):
        return []
    found = []
    if resource.props.get("networkMode") == "host":
        found.append(_violation(resource, "uses the host's network, which exposes every port it listens on"))
    for port in _list(resource.props.get("ports")):
        if is_unknown(port) or not isinstance(port, Mapping):
            continue
        ip = port.get("ip")
        if is_unknown(ip) or not _public(ip):
            continue
        external = port.get("external", "a random port")
        found.append(
            _violation(
                resource,
                f"publishes container port {port.get('internal')} on host port {external} at {ip or '0.0.0.0'}; "
                "only the balancer may publish on a public address (bind to 127.0.0.1, or leave it unpublished)",
            )
        )
    return found


# --- every replica has memory and CPU limits and a healthcheck --------------------------------


def is_replica(resource: Resource) -> bool:
    return role(resource) == ROLE_REPLICA


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def replica_limits_and_healthcheck(resource: Resource, context: Context) -> list[Violation]:
    if not is_replica(resource):
        return []
    props = resource.props
    found = []
    memory = props.get("memory")
    if not is_unknown(memory) and not _positive(memory):
        found.append(_violation(resource, "has no memory limit (set `memory`, in MB)"))
    cpus = props.get("cpus")
    if not is_unknown(cpus) and not _positive(cpus):
        found.append(_violation(resource, 'has no CPU limit (set `cpus`, e.g. "1.5")'))
    health = props.get("healthcheck")
    if not is_unknown(health):
        tests = _list(health.get("tests")) if isinstance(health, Mapping) else []
        if not tests or str(tests[0]).upper() == "NONE":
            found.append(_violation(resource, "has no healthcheck (set `healthcheck.tests`)"))
    return found


# --- no image uses `latest` or no tag ---------------------------------------------------------

_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_pin_problem(reference: str) -> str | None:
    """Why an image reference is not pinned, or None when it is (a version tag or a digest)."""
    if _IMAGE_ID.match(reference) or "@sha256:" in reference:
        return None
    last = reference.rsplit("/", 1)[-1]  # a registry's :port comes before the last slash
    if ":" not in last:
        return "has no tag (Docker reads that as `latest`)"
    tag = last.rsplit(":", 1)[1]
    if tag.lower() == "latest":
        return "uses the `latest` tag"
    if not tag:
        return "has an empty tag"
    return None


_IMAGE_PROPS = {CONTAINER: "image", IMAGE: "imageName", REMOTE_IMAGE: "name"}


def pinned_images(resource: Resource, context: Context) -> list[Violation]:
    prop = _IMAGE_PROPS.get(resource.type)
    if prop is None:
        return []
    reference = resource.props.get(prop)
    if reference is None or is_unknown(reference):
        return []
    problem = image_pin_problem(str(reference))
    if problem is None:
        return []
    return [_violation(resource, f"image {reference!r} {problem}; pin a version tag or a digest")]


# --- data volumes are protected in prod -------------------------------------------------------


def protected_data_volumes(resource: Resource, context: Context) -> list[Violation]:
    if resource.type != VOLUME or not context.prod or resource.protect:
        return []
    return [
        _violation(
            resource,
            f"holds data but is not protected in the {context.stack!r} stack "
            "(set protectData: true, i.e. the `protect` resource option)",
        )
    ]


# --- no password as a literal in container env ------------------------------------------------

# Names of variables that hold a credential. *_FILE variables hold a path to one.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|_KEY$|^MC_HOST_", re.IGNORECASE)


def _credential_parts(name: str, value: str) -> list[str]:
    """The parts of an env entry that are credentials: a URL's password, or the whole value."""
    parts = []
    if "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            parts.append(unquote(password))  # a generated password is percent-encoded in a URL
    if not parts and _SECRET_NAME.search(name) and not name.upper().endswith("_FILE"):
        parts.append(value)
    return parts


def generated_secrets(resources: Iterable[Resource]) -> set[str]:
    """The known results of the stack's RandomPasswords.

    One whose result is not known yet (a new password, at preview) adds nothing: whatever is
    computed from it is not known either, so a credential that *is* known can only come from
    a known result, or be a literal.
    """
    values: set[str] = set()
    for resource in resources:
        if resource.type != RANDOM_PASSWORD:
            continue
        result = resource.props.get("result")
        if result is not None and not is_unknown(result):
            values.add(str(result))
    return values


def no_literal_passwords(resources: Sequence[Resource], context: Context) -> list[Violation]:
    """Every credential in a container's env is a generated secret (RandomPassword), kept secret.

    A credential is the value of a variable named like one (PASSWORD, SECRET, TOKEN, *_KEY,
    MC_HOST_*) or the password of a URL (scheme://user:password@host). Its value must be the
    result of one of the stack's RandomPasswords; where secretness is known (under mocks),
    the env entry must also be a secret input.
    """
    generated = generated_secrets(resources)
    found = []
    for resource in resources:
        if resource.type != CONTAINER:
            continue
        for index, name, value in _env(resource):
            if is_unknown(value):
                continue
            parts = _credential_parts(name, value)
            if not parts:
                continue
            if not set(parts) <= generated:
                found.append(
                    _violation(
                        resource,
                        f"env {name} holds a literal credential; it must come from a generated secret (RandomPassword)",
                    )
                )
            elif resource.is_secret("envs", index) is False:
                found.append(_violation(resource, f"env {name} holds a credential but is not a secret input"))
    return found


# --- GPU replicas in prod request a GPU -------------------------------------------------------


def _builds_cuda(image: Resource) -> bool:
    build = image.props.get("build")
    args = build.get("args") if isinstance(build, Mapping) else None
    return isinstance(args, Mapping) and str(args.get(VARIANT_BUILD_ARG, "")).lower() == CUDA_VARIANT


def requests_gpu(resource: Resource) -> bool | None:
    """Whether a container asks Docker for a GPU; None when preview cannot tell."""
    gpus = resource.props.get("gpus")
    requests = resource.props.get("deviceRequests")
    if is_unknown(gpus) or is_unknown(requests):
        return None
    if gpus:
        return True
    for request in _list(requests):
        if not isinstance(request, Mapping):
            continue
        capabilities = [str(c) for c in _list(request.get("capabilities"))]
        if "gpu" in capabilities or request.get("driver") == "nvidia":
            return True
    return False


def gpu_replicas_request_gpu(resources: Sequence[Resource], context: Context) -> list[Violation]:
    """In prod, a replica built for CUDA (or told to use it) must be given a GPU.

    Without one it starts, falls back to the CPU or fails to load, and serves slowly:
    the kind of mistake a config change makes silently.
    """
    if not context.prod:
        return []
    cuda_images = {r.name for r in resources if r.type == IMAGE and _builds_cuda(r)}
    found = []
    for resource in resources:
        if not is_replica(resource):
            continue
        wants_cuda = bool(cuda_images.intersection(resource.dependencies)) or any(
            name == DEVICE_ENV and value == CUDA_VARIANT for _, name, value in _env(resource)
        )
        if wants_cuda and requests_gpu(resource) is False:
            found.append(
                _violation(
                    resource,
                    f"runs the CUDA image in the {context.stack!r} stack but requests no GPU "
                    "(set gpuMode to all, count or devices)",
                )
            )
    return found


RULES: tuple[Rule, ...] = (
    Rule(
        "balancer-only-public-ports",
        "Only the nginx balancer publishes host ports on a public address; everything else stays on "
        "the private network or on 127.0.0.1.",
        "resource",
        balancer_only_public_ports,
    ),
    Rule(
        "replica-limits-and-healthcheck",
        "Every model replica has a memory limit, a CPU limit and a healthcheck.",
        "resource",
        replica_limits_and_healthcheck,
    ),
    Rule(
        "pinned-images",
        "No image uses the `latest` tag or no tag at all.",
        "resource",
        pinned_images,
    ),
    Rule(
        "protected-data-volumes",
        "In production stacks every data volume has the `protect` option.",
        "resource",
        protected_data_volumes,
    ),
    Rule(
        "no-literal-passwords",
        "No credential appears as a literal in a container's env: it comes from a generated secret.",
        "stack",
        no_literal_passwords,
    ),
    Rule(
        "gpu-replicas-request-gpu",
        "In production stacks a replica built for CUDA requests a GPU.",
        "stack",
        gpu_replicas_request_gpu,
    ),
)


def check_all(resources: Sequence[Resource], context: Context) -> dict[str, list[Violation]]:
    """Every rule over one stack: {rule name: violations}."""
    return {rule.name: rule.run(resources, context) for rule in RULES}
