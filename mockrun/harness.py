"""The mock runner behind `mockrun.run_program` (see the package docstring)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import runpy
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from stackconfig.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROGRAM = PROJECT_ROOT / "__main__.py"

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_STRING = "random:index/randomString:RandomString"
DOCKER_PROVIDER = "pulumi:providers:docker"
KUBERNETES_PREFIX = "kubernetes:"  # pulumi-kubernetes types, e.g. kubernetes:apps/v1:Deployment
KUBERNETES_PROVIDER = "pulumi:providers:kubernetes"

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class DeclaredResource:
    """One registered resource, as the engine would have received it."""

    type: str
    name: str
    urn: str
    custom: bool
    inputs: dict[str, Any]  # plain Python; secret values unwrapped (see secret_paths)
    secret_paths: frozenset[Path_]  # paths into `inputs` whose value was a secret
    parent: str | None  # logical name of the parent (None: the stack)
    parent_type: str | None
    depends_on: tuple[str, ...]  # logical names of every dependency the SDK sent, sorted
    protect: bool
    delete_before_replace: bool
    ignore_changes: tuple[str, ...]
    replace_on_changes: tuple[str, ...]
    retain_on_delete: bool
    provider: str  # provider reference ("" = default provider)
    custom_timeouts: dict[str, str]
    dependency_urns: tuple[str, ...] = ()  # the same dependencies by URN (names repeat across types)
    component_outputs: dict[str, Any] = field(default_factory=dict)  # register_outputs of a component

    def is_secret(self, *path: str | int) -> bool:
        """True when the value at `path` (or something containing it) was a secret."""
        return any(path[: len(p)] == p for p in self.secret_paths)

    def secret_inputs(self) -> list[Path_]:
        return sorted(self.secret_paths, key=str)

    def label(self, name: str) -> str | None:
        """The value of a Docker label the resource declares (None: not declared)."""
        for item in self.inputs.get("labels") or ():
            if item.get("label") == name:
                return str(item.get("value"))
        return None

    @property
    def role(self) -> str | None:
        """The container's role label (stackconfig.names.ROLES), by which tooling tells containers apart."""
        from stackconfig.names import LABEL_ROLE

        return self.label(LABEL_ROLE) if self.type == CONTAINER else None


@dataclass(frozen=True)
class OutputValue:
    value: Any
    secret: bool


@dataclass(frozen=True)
class DeclaredStack:
    stack: str
    project: str
    config: dict[str, str]  # "<project>:<key>" -> value as handed to the program
    resources: tuple[DeclaredResource, ...]
    outputs: dict[str, OutputValue]
    secret_keys: frozenset[str] = frozenset()  # "<project>:<key>" set as secrets

    def __iter__(self) -> Iterator[DeclaredResource]:
        return iter(self.resources)

    def __len__(self) -> int:
        return len(self.resources)

    def of_type(self, type_: str) -> list[DeclaredResource]:
        return sorted((r for r in self.resources if r.type == type_), key=lambda r: _natural(r.name))

    def containers(self) -> list[DeclaredResource]:
        return self.of_type(CONTAINER)

    def kubernetes(self, kind: str | None = None) -> list[DeclaredResource]:
        """Kubernetes objects (`kind`: only those, e.g. "Deployment"), in natural name order."""
        found = [r for r in self.resources if r.custom and r.type.startswith(KUBERNETES_PREFIX)]
        if kind is not None:
            found = [r for r in found if r.type.rsplit(":", 1)[1] == kind]
        return sorted(found, key=lambda r: (r.type, _natural(r.name)))

    def images(self) -> list[DeclaredResource]:
        return self.of_type(IMAGE)

    def components(self) -> list[DeclaredResource]:
        return [r for r in self.resources if not r.custom and not r.type.startswith("pulumi:providers:")]

    def children(self, parent: str) -> list[DeclaredResource]:
        return sorted((r for r in self.resources if r.parent == parent), key=lambda r: _natural(r.name))

    def by_name(self, name: str, type_: str | None = None) -> DeclaredResource:
        """The one resource with this logical name (and type, when names repeat across types)."""
        found = [r for r in self.resources if r.name == name and (type_ is None or r.type == type_)]
        if len(found) != 1:
            raise KeyError(
                f"expected one resource named {name!r}{f' of type {type_}' if type_ else ''}, found {len(found)}; "
                f"names: {sorted(r.name for r in self.resources)}"
            )
        return found[0]

    def container(self, name: str) -> DeclaredResource:
        """The Docker container with this logical name (a component may share the name)."""
        return self.by_name(name, CONTAINER)

    def component(self, name: str) -> DeclaredResource:
        """The component resource with this logical name."""
        found = [r for r in self.components() if r.name == name]
        if len(found) != 1:
            raise KeyError(f"expected one component named {name!r}, found {len(found)}")
        return found[0]

    def find(self, name: str, type_: str | None = None) -> DeclaredResource | None:
        try:
            return self.by_name(name, type_)
        except KeyError:
            return None

    def by_role(self, role: str) -> list[DeclaredResource]:
        """Containers with this role label, in natural name order."""
        return [r for r in self.containers() if r.role == role]

    def replicas(self) -> list[DeclaredResource]:
        """Replica containers, in index order."""
        from stackconfig.names import ROLE_REPLICA

        return self.by_role(ROLE_REPLICA)

    def output(self, name: str) -> Any:
        return self.outputs[name].value

    def settings(self) -> Settings:
        """The validated settings this run's config means (what the program itself read)."""
        from stackconfig.settings import parse

        prefix = f"{self.project}:"
        return parse(
            self.stack,
            {k[len(prefix) :]: v for k, v in self.config.items() if k.startswith(prefix)},
            {k[len(prefix) :] for k in self.secret_keys if k.startswith(prefix)},
        )


@dataclass(frozen=True)
class RunResult:
    """What `attempt` returns: the declared stack so far, and the error if the program failed."""

    declared: DeclaredStack
    error: BaseException | None


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_stack_config(stack: str, project_root: Path = PROJECT_ROOT) -> tuple[str, dict[str, Any]]:
    """(project name, {key: value}) as the CLI would hand them over: Pulumi.yaml's defaults, then
    Pulumi.<stack>.yaml. Keys without the project prefix; other namespaces are left out."""
    project_doc = yaml.safe_load((project_root / "Pulumi.yaml").read_text())
    project = str(project_doc["name"])
    stack_file = project_root / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        raise FileNotFoundError(f"no stack file {stack_file.name} in {project_root}")
    stack_doc = yaml.safe_load(stack_file.read_text()) or {}
    # The CLI applies the project's config defaults (Pulumi.yaml) under the stack's values.
    values: dict[str, Any] = {
        key: entry["default"]
        for key, entry in (project_doc.get("config") or {}).items()
        if isinstance(entry, dict) and "default" in entry
    }
    for full_key, value in (stack_doc.get("config") or {}).items():
        namespace, _, key = str(full_key).partition(":")
        if not key:  # a bare key belongs to the project, as the CLI reads it
            namespace, key = project, namespace
        if namespace == project:
            values[key] = value
    return project, values


def _encode(value: Any) -> str:
    """How the Pulumi CLI hands a config value to a Python program: strings raw, the rest JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _plain(value: Any, path: Path_, secrets: set[Path_]) -> Any:
    """Unwrap secrets (recording their paths) and turn integral floats back into ints."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        secrets.add(path)
        return _plain(rpc.unwrap_rpc_secret(value), path, secrets)
    if isinstance(value, dict):
        return {k: _plain(v, (*path, k), secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, (*path, i), secrets) for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire format has only floats
    return value


def mock_image_id(inputs: Mapping[str, Any]) -> str:
    """What pulumi-docker returns as `repoDigest` for an image built without a push: the image ID
    (`sha256:<64 hex>`, provider/image.go). Under mocks nothing is built, so the ID is a digest
    of the declared build inputs: the same inputs give the same ID, changed ones another."""
    return "sha256:" + hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _mock_state(
    type_: str,
    name: str,
    inputs: dict[str, Any],
    image_ids: Mapping[str, str] | None = None,
    exit_codes: Mapping[str, int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Outputs a provider would add. Secrets are returned wrapped so that they stay secret.

    `image_ids` ({imageName: ID}) stands for images really built (the engine stand-in builds
    them first): their IDs are returned as the provider would return them. `exit_codes`
    ({logical name: code}) makes containers end as a failed job would (default 0)."""
    from pulumi.runtime import rpc

    state = dict(inputs)
    if type_ == RANDOM_PASSWORD:
        state["result"] = rpc.wrap_rpc_secret(f"mock-password-{name}")
    elif type_ == RANDOM_STRING:
        state["result"] = f"mock-string-{name}"
    elif type_ == CONTAINER:
        state.setdefault("name", name)
        state["exitCode"] = (exit_codes or {}).get(name, 0)
    elif type_ == IMAGE:
        image_name = str(state.get("imageName", name))
        built = (image_ids or {}).get(image_name) or mock_image_id(inputs)
        # A pushed image (the Kubernetes target's) is named by its registry digest, `repo@sha256:...`.
        state["repoDigest"] = built if state.get("skipPush") else f"{image_name.rsplit(':', 1)[0]}@{built}"
    elif type_ in (VOLUME, NETWORK):
        state.setdefault("name", name)
    elif type_.startswith(KUBERNETES_PREFIX):
        # The API server's answer: the object as sent (the program names every object).
        metadata = state.setdefault("metadata", {})
        if isinstance(metadata, dict):
            metadata.setdefault("name", name)
    return f"{name}-id", state


class _Recorder:
    """A MockMonitor that also keeps what the SDK sent: parent, options, secretness."""

    def __init__(self, image_ids: Mapping[str, str] | None = None, exit_codes: Mapping[str, int] | None = None) -> None:
        from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks

        recorder = self

        class _Mocks(Mocks):
            def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
                return _mock_state(args.typ, args.name, args.inputs, image_ids, exit_codes)

            def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
                return {}, None

        class _Monitor(MockMonitor):
            def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
                response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
                if request.type != "pulumi:pulumi:Stack":
                    recorder.record(request, response.urn)
                return response

            def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802
                from pulumi.runtime import rpc

                with recorder.lock:
                    recorder.component_outputs[request.urn] = rpc.deserialize_properties(request.outputs)
                return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]

        self.lock = threading.Lock()
        self.requests: list[tuple[str, Any]] = []
        self.component_outputs: dict[str, Any] = {}
        self.mocks = _Mocks()
        self.monitor = _Monitor(self.mocks)

    def record(self, request: Any, urn: str) -> None:
        with self.lock:
            self.requests.append((urn, request))

    def declared(
        self, project: str, stack: str, config: dict[str, str], outputs: dict[str, OutputValue], secret_keys: frozenset[str]
    ) -> DeclaredStack:
        from pulumi.runtime import rpc

        with self.lock:
            requests = list(self.requests)
            component_outputs = dict(self.component_outputs)
        names = {urn: (req.name, req.type) for urn, req in requests}
        resources = []
        for urn, req in requests:
            secrets: set[Path_] = set()
            inputs = _plain(rpc.deserialize_properties(req.object), (), secrets)
            parent = names.get(req.parent)
            timeouts = req.customTimeouts
            resources.append(
                DeclaredResource(
                    type=req.type,
                    name=req.name,
                    urn=urn,
                    custom=bool(req.custom),
                    inputs=inputs,
                    secret_paths=frozenset(secrets),
                    parent=parent[0] if parent else None,
                    parent_type=parent[1] if parent else None,
                    # The SDK sends a set: sort, so that two runs compare equal.
                    depends_on=tuple(sorted({names[d][0] for d in req.dependencies if d in names}, key=_natural)),
                    protect=bool(req.protect),
                    delete_before_replace=bool(req.deleteBeforeReplace),
                    ignore_changes=tuple(req.ignoreChanges),
                    replace_on_changes=tuple(req.replaceOnChanges),
                    retain_on_delete=bool(req.retainOnDelete),
                    provider=req.provider,
                    custom_timeouts={k: getattr(timeouts, k) for k in ("create", "update", "delete") if getattr(timeouts, k)},
                    dependency_urns=tuple(sorted({d for d in req.dependencies if d in names})),
                    component_outputs=_plain(component_outputs.get(urn, {}), (), set()),
                )
            )
        return DeclaredStack(
            stack=stack, project=project, config=config, resources=tuple(resources), outputs=outputs, secret_keys=secret_keys
        )


_RUN_LOCK = threading.Lock()  # the Pulumi runtime is process-global: one program run at a time


def _ensure_event_loop() -> None:
    """Give this thread an open event loop: the Pulumi SDK creates futures on the current one.

    `asyncio.run()` elsewhere in the same process (a server test, say) leaves the main thread
    with none, and Python 3.11 then refuses to make one implicitly.
    """
    try:
        if not asyncio.get_event_loop().is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


def attempt(
    stack: str,
    overrides: Mapping[str, object] | None = None,
    *,
    secrets: Mapping[str, object] | None = None,
    project_root: Path = PROJECT_ROOT,
    preview: bool = False,
    image_ids: Mapping[str, str] | None = None,
    exit_codes: Mapping[str, int] | None = None,
) -> RunResult:
    """Run the program under mocks; never raises for a program error, returns it instead.

    Useful to assert that a failing program registered nothing. `secrets`: more overrides, handed
    over as keys set with `pulumi config set --secret` (stack files hold secrets encrypted, which
    the mocks cannot read). `exit_codes`: containers (by logical name) that end with that code,
    as a failed one-shot job does.
    """
    import pulumi
    from pulumi.runtime import settings as runtime_settings
    from pulumi.runtime.mocks import set_mocks
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    project, values = read_stack_config(stack, project_root)
    for key, value in (overrides or {}).items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    for key, value in (secrets or {}).items():
        values[key] = value
    config = {f"{project}:{key}": _encode(value) for key, value in values.items()}
    secret_keys = frozenset(f"{project}:{key}" for key in (secrets or {}))

    with _RUN_LOCK:
        _ensure_event_loop()
        recorder = _Recorder(image_ids, exit_codes)
        # A fresh root stack and settings bag per run; leftovers of an earlier (maybe failed)
        # run must not leak into this one.
        runtime_settings.ROOT.set(None)
        set_mocks(recorder.mocks, project=project, stack=stack, preview=preview, monitor=recorder.monitor)
        runtime_settings.SETTINGS.outputs.clear()
        pulumi.runtime.set_all_config(config, sorted(secret_keys))
        if str(project_root) not in sys.path:
            sys.path.insert(0, str(project_root))

        error: BaseException | None = None
        outputs: dict[str, OutputValue] = {}

        def program() -> None:
            runpy.run_path(str(project_root / "__main__.py"), run_name="__main__")

        try:
            _sync_await(run_pulumi_func(program))
            root = runtime_settings.get_root_resource()
            exported = dict(getattr(root, "outputs", {}))

            async def resolve() -> None:
                for key, value in exported.items():
                    out = pulumi.Output.from_input(value)
                    resolved = await out.future()
                    secret = await out.is_secret()
                    outputs[key] = OutputValue(value=_plain(resolved, (), set()), secret=bool(secret))

            _sync_await(run_pulumi_func(resolve))
        except Exception as exc:
            error = exc
        declared = recorder.declared(project, stack, config, outputs, secret_keys)
        runtime_settings.ROOT.set(None)
    return RunResult(declared=declared, error=error)


def run_program(
    stack: str,
    overrides: Mapping[str, object] | None = None,
    *,
    secrets: Mapping[str, object] | None = None,
    project_root: Path = PROJECT_ROOT,
    preview: bool = False,
    image_ids: Mapping[str, str] | None = None,
) -> DeclaredStack:
    """Run __main__.py under mocks for `stack` and return every registered resource and the outputs.

    A program error (a `ConfigError` for bad config) is raised as it is.
    """
    result = attempt(stack, overrides, secrets=secrets, project_root=project_root, preview=preview, image_ids=image_ids)
    if result.error is not None:
        raise result.error
    return result.declared
