"""The applier: the resources the program declares (run under mocks), made real on a Docker engine.

A stand-in for `pulumi up` where neither the Pulumi CLI nor its provider plugins can be had.
It is test and local-run tooling; the program never imports it.

What it does, and what pulumi-docker would do in its place:

- Images (`docker.Image`, skip_push) are built first, with BuildKit, from the declared context,
  Dockerfile and build args (`enginestack.build`); the program is then run under mocks again with
  the built IDs, which is what the provider returns as `repoDigest` for an unpushed image, so the
  containers receive the real image ID as their declared `image` input.
- Networks and volumes are created when missing (they are never replaced here: a changed
  network or volume is reported as an error).
- Containers are diffed against what runs: each container carries the digest of its declared
  inputs in the label `mlserve.engine.inputs`. New ones are created; a changed one is deleted
  (stopped with its `destroy_grace_seconds`) and then created again, as the provider's
  delete-before-replace does; `restart`, `memory` and `memory_swap` changes are applied in place
  (`docker update`), as the provider updates them. A service found stopped is started again
  (Pulumi would notice it only with `--refresh`).
- Steps run as Pulumi's engine runs them: each once every resource it depends on is done (the
  SDK's dependencies, components expanded to their children), independent ones in parallel (at
  most PARALLEL_STEPS at once, the engine's default); after
  a failure nothing new starts, what runs finishes, and the first error is raised. A create with
  `wait` waits for "healthy" up to `wait_timeout`, so the replicas' `depends_on` chain rolls them
  one at a time exactly as the program intends, while unrelated services start side by side.
- Containers no longer declared are deleted last, in reverse order of their roles (replicas
  from the highest index down).
- RandomPassword/RandomString values are the mocks' fixed strings: stacks brought up this way are
  for tests and local runs on loopback, never for anything reachable from elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound

from enginestack.build import Built, build_image
from enginestack.mapping import ContainerSpec, container_spec, upload_tar
from mockrun import DeclaredResource, DeclaredStack, run_program
from mockrun.harness import CONTAINER, IMAGE, NETWORK, VOLUME
from stackconfig.names import LABEL_ROLE, LABEL_STACK, ONE_SHOT_ROLES, ROLE_REPLICA, ROLES

ROOT = Path(__file__).resolve().parent.parent
LABEL_INPUTS = "mlserve.engine.inputs"  # digest of the declared inputs a container was created from
LABEL_GRACE = "mlserve.engine.destroy-grace-seconds"  # its destroy_grace_seconds (used on delete)
LABEL_URN = "mlserve.engine.urn"
# Inputs the provider updates in place (`docker update`) instead of replacing the container.
IN_PLACE = ("restart", "maxRetryCount", "memory", "memorySwap", "memoryReservation", "cpuShares", "cpuSet")
# Inputs that steer the provider, not the container: changing them replaces nothing.
BEHAVIOUR = ("wait", "waitTimeout", "destroyGraceSeconds", "mustRun", "attach", "logs", "start", "removeVolumes")
HEALTH_POLL_S = 1.0  # the provider polls the health status once a second
# Steps at once: the Pulumi engine's default parallelism (4 x the machine's cores).
PARALLEL_STEPS = 4 * (os.cpu_count() or 1)

Log = Callable[[str], None]


class ApplyError(RuntimeError):
    pass


@dataclass
class Step:
    op: str  # create | replace | update | start | same | delete
    name: str  # the container/network/volume name on the engine
    role: str | None = None
    reason: str = ""


@dataclass
class Applied:
    declared: DeclaredStack
    steps: list[Step] = field(default_factory=list)
    built: dict[str, Built] = field(default_factory=dict)

    def changed(self) -> list[Step]:
        return [s for s in self.steps if s.op != "same"]


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in inputs.items() if k not in IN_PLACE and k not in BEHAVIOUR}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _graph(declared: DeclaredStack) -> tuple[list[DeclaredResource], dict[str, set[str]]]:
    """The custom Docker resources, and for each (by URN) the URNs of those it depends on."""
    by_urn = {r.urn: r for r in declared}
    children: dict[str, list[str]] = {}
    for r in declared:
        parent = next((p.urn for p in declared if p.name == r.parent and p.type == r.parent_type), None)
        if parent:
            children.setdefault(parent, []).append(r.urn)

    def customs(urn: str) -> set[str]:
        r = by_urn[urn]
        if r.custom:
            return {urn}
        out: set[str] = set()
        for child in children.get(urn, ()):
            out |= customs(child)
        return out

    kinds = (CONTAINER, IMAGE, NETWORK, VOLUME)
    nodes = [r for r in declared if r.type in kinds]
    deps = {r.urn: {d for dep in r.dependency_urns if dep in by_urn for d in customs(dep)} & {n.urn for n in nodes} for r in nodes}
    return nodes, deps


def _order(declared: DeclaredStack) -> list[DeclaredResource]:
    """Custom Docker resources in dependency order (Kahn; ties in declaration order)."""
    return _dependency_order(*_graph(declared))


def _dependency_order(nodes: list[DeclaredResource], deps: dict[str, set[str]]) -> list[DeclaredResource]:
    order: list[DeclaredResource] = []
    done: set[str] = set()
    while len(order) < len(nodes):
        ready = [r for r in nodes if r.urn not in done and deps[r.urn] <= done]
        if not ready:
            raise ApplyError(f"dependency cycle among {sorted(r.name for r in nodes if r.urn not in done)}")
        order.append(ready[0])
        done.add(ready[0].urn)
    return order


class EngineStack:
    """One stack of the program on one Docker engine."""

    def __init__(self, stack: str, client: docker.DockerClient | None = None, log: Log = print) -> None:
        self.stack = stack
        self.client = client or docker.from_env(timeout=600)
        self.api = self.client.api
        self.log = log

    # --- what runs -------------------------------------------------------------------------

    def running(self) -> list[Any]:
        """This stack's containers on the engine (by the stack label every container carries)."""
        return list(self.client.containers.list(all=True, filters={"label": f"{LABEL_STACK}={self.stack}"}))

    def _existing(self, name: str) -> Any | None:
        try:
            return self.client.containers.get(name)
        except NotFound:
            return None

    # --- images ----------------------------------------------------------------------------

    def build_images(self, declared: DeclaredStack) -> dict[str, Built]:
        built: dict[str, Built] = {}
        for image in declared.images():
            inputs = image.inputs
            build = inputs.get("build") or {}
            name = str(inputs["imageName"])
            if not inputs.get("skipPush"):
                raise ApplyError(f"image {name}: only skip_push images are built here (no registry)")
            unsupported = set(build) - {"context", "dockerfile", "args", "target", "builderVersion", "platform"}
            if unsupported:
                raise ApplyError(f"image {name}: build inputs {sorted(unsupported)} are not mapped by the stand-in")
            if build.get("builderVersion") not in (None, "BuilderBuildKit"):
                raise ApplyError(f"image {name}: only BuildKit builds (the provider's default) are mapped")
            # The provider resolves both paths against the working directory: the project.
            context = (ROOT / str(build.get("context", "."))).resolve()
            dockerfile = (ROOT / str(build.get("dockerfile") or Path(str(build.get("context", "."))) / "Dockerfile")).resolve()
            if not dockerfile.is_relative_to(context):
                raise ApplyError(f"image {name}: a Dockerfile outside its context is not mapped by the stand-in")
            self.log(f"build {name} ({dockerfile.relative_to(ROOT)}, args {build.get('args') or {}})")
            built[name] = build_image(
                self.client, context=context, dockerfile=str(dockerfile.relative_to(context)), tag=name,
                args={str(k): str(v) for k, v in (build.get("args") or {}).items()}, target=build.get("target"), log=self.log,
            )
            self.log(f"built {name}: {built[name].image_id[:19]} in {built[name].seconds:.0f} s")
        return built

    # --- networks and volumes --------------------------------------------------------------

    def _ensure_network(self, r: DeclaredResource) -> Step:
        name = str(r.inputs["name"])
        labels = {str(x["label"]): str(x["value"]) for x in r.inputs.get("labels") or ()}
        driver = str(r.inputs.get("driver") or "bridge")
        try:
            existing = self.client.networks.get(name)
        except NotFound:
            self.client.networks.create(name, driver=driver, labels=labels, check_duplicate=True,
                                        internal=bool(r.inputs.get("internal")), attachable=bool(r.inputs.get("attachable")))
            return Step("create", name, reason="network")
        attrs = existing.attrs
        if attrs.get("Driver") != driver or any((attrs.get("Labels") or {}).get(k) != v for k, v in labels.items()):
            raise ApplyError(f"network {name} exists with other inputs; the stand-in does not replace networks (run down first)")
        return Step("same", name, reason="network")

    def _ensure_volume(self, r: DeclaredResource) -> Step:
        name = str(r.inputs["name"])
        try:
            self.client.volumes.get(name)
            return Step("same", name, reason="volume")
        except NotFound:
            labels = {str(x["label"]): str(x["value"]) for x in r.inputs.get("labels") or ()}
            self.client.volumes.create(name, driver=str(r.inputs.get("driver") or "local"), labels=labels)
            return Step("create", name, reason="volume")

    # --- containers ------------------------------------------------------------------------

    def create_container(self, r: DeclaredResource) -> str:
        spec = container_spec(r.inputs)
        body = json.loads(json.dumps(spec.body))
        body.setdefault("Labels", {}).update(
            {LABEL_INPUTS: inputs_digest(r.inputs), LABEL_GRACE: str(spec.destroy_grace_s), LABEL_URN: r.urn}
        )
        created = self.api._post_json(self.api._url("/containers/create"), data=body, params={"name": spec.name})  # noqa: SLF001
        self.api._raise_for_status(created)  # noqa: SLF001
        cid = str(created.json()["Id"])
        if spec.networks:
            # The provider creates on the default bridge, then swaps it for networks_advanced.
            try:
                self.api.disconnect_container_from_network(cid, "bridge")
            except APIError as exc:
                if "is not connected" not in str(exc):
                    raise
            for net in spec.networks:
                self.api.connect_container_to_network(cid, net.name, aliases=list(net.aliases) or None, ipv4_address=net.ipv4_address)
        for upload in spec.uploads:
            self.api.put_archive(cid, "/", upload_tar(upload))
        if spec.start:
            self.api.start(cid)
            if spec.wait:
                self._wait_healthy(spec, cid)
        if spec.attach:
            result = self.api.wait(cid)
            code = int(result.get("StatusCode", -1))
            # The provider records the exit code and carries on, but the program reads it back
            # (components/common.py) and fails what depends on a job that did not exit 0: with
            # Pulumi the run stops there, and so it does here.
            if code != 0:
                tail = self.api.logs(cid, tail=20).decode(errors="replace")
                raise ApplyError(f"{spec.name} exited with {code}; what depends on it is not applied. Last lines:\n{tail}")
        return cid

    def _wait_healthy(self, spec: ContainerSpec, cid: str) -> None:
        deadline = time.monotonic() + spec.wait_timeout_s
        last = ""
        while True:
            state = self.api.inspect_container(cid)["State"]
            health = state.get("Health")
            if health is None:
                raise ApplyError(f"{spec.name}: `wait` needs a healthcheck and the container has none")
            if health.get("Status") == "healthy":
                return
            if health.get("Log"):
                last = str(health["Log"][-1].get("Output", "")).strip()[-300:]
            if time.monotonic() > deadline:
                raise ApplyError(f"{spec.name} was not healthy within wait_timeout {spec.wait_timeout_s} s"
                                 f" (status {health.get('Status')}, last probe: {last!r})")
            time.sleep(HEALTH_POLL_S)

    def delete_container(self, container: Any) -> None:
        """The provider's delete: stop with destroy_grace_seconds (0: kill at once), remove."""
        labels = container.labels or {}
        grace = int(labels.get(LABEL_GRACE, "0"))
        if container.status in ("running", "restarting", "paused"):
            self.api.stop(container.id, timeout=grace)
        try:
            self.api.remove_container(container.id, v=True, force=True)
        except NotFound:
            pass

    def _in_place(self, r: DeclaredResource, container: Any) -> list[str]:
        spec = container_spec(r.inputs)
        host = container.attrs["HostConfig"]
        want = spec.body["HostConfig"]
        changed = []
        update: dict[str, Any] = {}
        if want.get("RestartPolicy") != {"Name": host["RestartPolicy"]["Name"] or "no", "MaximumRetryCount": host["RestartPolicy"]["MaximumRetryCount"]}:
            update["restart_policy"] = want["RestartPolicy"]
            changed.append("restart")
        for key, arg, name in (("Memory", "mem_limit", "memory"), ("MemorySwap", "memswap_limit", "memory_swap"),
                               ("MemoryReservation", "mem_reservation", "memory_reservation"), ("CpuShares", "cpu_shares", "cpu_shares"),
                               ("CpusetCpus", "cpuset_cpus", "cpu_set")):
            if key in want and want[key] != host.get(key):
                update[arg] = want[key]
                changed.append(name)
        if update:
            self.api.update_container(container.id, **update)
        return changed

    # --- the whole stack -------------------------------------------------------------------

    def declare(self, overrides: Mapping[str, object] | None = None, *, build: bool = True) -> tuple[DeclaredStack, dict[str, Built]]:
        first = run_program(self.stack, overrides)
        built = self.build_images(first) if build else {}
        ids = {name: b.image_id for name, b in built.items()}
        return run_program(self.stack, overrides, image_ids=ids), built

    def up(self, overrides: Mapping[str, object] | None = None, *, build: bool = True) -> Applied:
        declared, built = self.declare(overrides, build=build)
        return self.apply(declared, built)

    def apply(self, declared: DeclaredStack, built: dict[str, Built] | None = None) -> Applied:
        applied = Applied(declared=declared, built=dict(built or {}))
        nodes, deps = _graph(declared)
        order = _dependency_order(nodes, deps)  # raises on a dependency cycle before anything is applied
        steps = self._apply_graph(nodes, deps)
        # Steps listed in dependency order, whatever order the parallel ones finished in.
        applied.steps.extend(steps[r.urn] for r in order if r.urn in steps)
        wanted = {steps[r.urn].name for r in order if r.type == CONTAINER}
        for container in self._deletion_order([c for c in self.running() if c.name not in wanted]):
            role = (container.labels or {}).get(LABEL_ROLE)
            self.log(f"delete {container.name}")
            self.delete_container(container)
            applied.steps.append(Step("delete", container.name, role, "no longer declared"))
        return applied

    def _apply_graph(self, nodes: list[DeclaredResource], deps: dict[str, set[str]]) -> dict[str, Step]:
        """Every declared network, volume and container, each started once all it depends on is
        done; returns their steps by URN. Images are built before (`declare`)."""
        steps: dict[str, Step] = {}
        done: set[str] = set()
        pending = list(nodes)
        running: dict[Future[Step | None], str] = {}
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=PARALLEL_STEPS, thread_name_prefix="apply") as pool:
            while True:
                if error is None:
                    for r in [r for r in pending if deps[r.urn] <= done]:
                        pending.remove(r)
                        running[pool.submit(self._apply_one, r)] = r.urn
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    urn = running.pop(future)
                    try:
                        step = future.result()
                    except BaseException as exc:  # noqa: BLE001 - the first error is raised once the rest finished
                        error = error or exc
                    else:
                        done.add(urn)
                        if step is not None:  # images have none here: `declare` built them
                            steps[urn] = step
        if error is not None:
            raise error
        return steps

    def _apply_one(self, r: DeclaredResource) -> Step | None:
        if r.type == NETWORK:
            return self._ensure_network(r)
        if r.type == VOLUME:
            return self._ensure_volume(r)
        if r.type == CONTAINER:
            return self._apply_container(r)
        return None

    def _apply_container(self, r: DeclaredResource) -> Step:
        name = str(r.inputs["name"])
        existing = self._existing(name)
        if existing is not None and (existing.labels or {}).get(LABEL_STACK) != self.stack:
            raise ApplyError(f"a container named {name} exists and is not this stack's ({LABEL_STACK}={self.stack})")
        digest = inputs_digest(r.inputs)
        if existing is None:
            self.log(f"create {name}")
            self.create_container(r)
            return Step("create", name, r.role)
        if (existing.labels or {}).get(LABEL_INPUTS) != digest:
            self.log(f"replace {name} (delete, then create)")
            self.delete_container(existing)
            self.create_container(r)
            return Step("replace", name, r.role, "inputs changed")
        changed = self._in_place(r, existing)
        if changed:
            self.log(f"update {name} in place: {', '.join(changed)}")
            return Step("update", name, r.role, ", ".join(changed))
        if r.role not in ONE_SHOT_ROLES and existing.status in ("exited", "created"):
            self.log(f"start {name} (found stopped)")
            existing.start()
            return Step("start", name, r.role)
        return Step("same", name, r.role)

    def _deletion_order(self, containers: list[Any]) -> list[Any]:
        def key(c: Any) -> tuple[int, int]:
            labels = c.labels or {}
            role = labels.get(LABEL_ROLE, "")
            rank = ROLES.index(role) if role in ROLES else len(ROLES)
            index = 0
            if role == ROLE_REPLICA:
                digits = "".join(ch for ch in c.name.rsplit("-", 1)[-1] if ch.isdigit())
                index = int(digits or 0)
            return (-rank, -index)

        return sorted(containers, key=key)

    def down(self, *, purge: bool = False, remove_images: bool = False) -> list[Step]:
        """Delete every container of the stack, then its network; volumes and the app images only
        when asked (`pulumi destroy` would delete unprotected volumes; down keeps data by default)."""
        steps = []
        for container in self._deletion_order(self.running()):
            self.log(f"delete {container.name}")
            self.delete_container(container)
            steps.append(Step("delete", container.name, (container.labels or {}).get(LABEL_ROLE)))
        declared = run_program(self.stack)
        for r in declared.of_type(NETWORK):
            try:
                self.client.networks.get(str(r.inputs["name"])).remove()
                steps.append(Step("delete", str(r.inputs["name"]), reason="network"))
            except NotFound:
                pass
        if purge:
            for r in declared.of_type(VOLUME):
                try:
                    self.client.volumes.get(str(r.inputs["name"])).remove(force=True)
                    steps.append(Step("delete", str(r.inputs["name"]), reason="volume"))
                except NotFound:
                    pass
        if remove_images:
            for r in declared.images():
                try:
                    self.client.images.remove(str(r.inputs["imageName"]))
                    steps.append(Step("delete", str(r.inputs["imageName"]), reason="image"))
                except NotFound:
                    pass
        return steps
