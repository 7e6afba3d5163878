"""Declared `docker.Container` inputs -> Docker Engine API calls, as pulumi-docker maps them.

pulumi-docker's Container is the terraform provider kreuzwerker/docker bridged; its create
(internal/provider/resource_docker_container_funcs.go) builds one ContainerCreate body, then
disconnects the default bridge and connects each `networks_advanced` entry with its aliases,
puts each upload as a one-file tar at `/`, starts the container, and with `wait` polls the health
status once a second up to `wait_timeout`. Everything here follows that code:

    envs -> Env; command -> Cmd; entrypoint -> Entrypoint; user -> User; hostname -> Hostname
    labels [{label, value}] -> Labels
    healthcheck {tests, interval, timeout, start_period, start_interval, retries} -> Healthcheck,
        durations parsed like Go's time.ParseDuration into nanoseconds
    stop_signal -> StopSignal; stop_timeout -> StopTimeout
    ports [{internal, external, ip, protocol=tcp}] -> ExposedPorts + HostConfig.PortBindings
    volumes [{volume_name|host_path, container_path, read_only}] -> HostConfig.Binds "src:dst:rw|ro"
    memory, memory_swap (>0), shm_size: MB -> bytes; memory_swap -1 stays -1
    cpus "1.5" -> HostConfig.NanoCpus (opts.ParseCPUs: exact decimal x 1e9)
    gpus "all" | "N" | "device=a,b" -> HostConfig.DeviceRequests (docker's GpuOpts)
    device_requests [{driver, count, device_ids, capabilities}] -> DeviceRequests, capabilities
        as one AND-list [[...]] (passed through: this engine has no GPU runtime to check them on)
    restart, max_retry_count -> HostConfig.RestartPolicy; log_driver, log_opts -> HostConfig.LogConfig
    init (unset: false) -> HostConfig.Init
    uploads [{file, content|content_base64, executable, permissions}] -> tar entries put before start
    destroy_grace_seconds -> the stop timeout of a delete (unset: 0, an immediate kill)
"""

from __future__ import annotations

import base64
import io
import re
import tarfile
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
MB = 1024 * 1024


class MappingError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration ("1m30s", "500ms", "2s"), in nanoseconds."""
    if text in ("0", ""):
        return 0
    pos, total = 0, Decimal(0)
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise MappingError(f"invalid duration {text!r}")
    return int(total)


def parse_cpus(text: str) -> int:
    """docker's opts.ParseCPUs: a decimal number of CPUs -> NanoCpus, exact or refused."""
    try:
        nano = Decimal(text) * 1_000_000_000
    except InvalidOperation as exc:
        raise MappingError(f"invalid cpus {text!r}") from exc
    if nano != nano.to_integral_value() or nano < 0:
        raise MappingError(f"cpus {text!r}: value is too precise")
    return int(nano)


def gpu_device_requests(value: str) -> list[dict[str, Any]]:
    """docker's GpuOpts.Set for the forms `all`, `N` and `device=a,b` (plus driver=/capabilities=)."""
    request: dict[str, Any] = {"Driver": "", "Count": 0, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
    for item in _csv(value.strip().strip("'\"")):
        key, sep, val = item.partition("=")
        if not sep:
            request["Count"] = -1 if key == "all" else int(key)
        elif key == "count":
            request["Count"] = -1 if val == "all" else int(val)
        elif key == "device":
            request["DeviceIDs"] = val.split(",")
        elif key == "driver":
            request["Driver"] = val
        elif key == "capabilities":
            request["Capabilities"] = [val.split(",")]
        else:
            request["Options"][key] = val
    return [request]


def _csv(value: str) -> list[str]:
    """Docker's GPU option is CSV: `"device=0,1",driver=nvidia` keeps the quoted comma."""
    import csv

    return next(csv.reader([value])) if value else []


@dataclass(frozen=True)
class NetworkAttachment:
    name: str
    aliases: tuple[str, ...]
    ipv4_address: str | None = None


@dataclass(frozen=True)
class Upload:
    file: str
    content: bytes
    mode: int


@dataclass(frozen=True)
class ContainerSpec:
    """One declared container as the engine receives it."""

    name: str
    body: dict[str, Any]  # the ContainerCreate body
    networks: tuple[NetworkAttachment, ...]
    uploads: tuple[Upload, ...]
    start: bool
    wait: bool
    wait_timeout_s: int
    attach: bool
    must_run: bool
    destroy_grace_s: int
    remove_volumes: bool
    extra_labels: dict[str, str] = field(default_factory=dict)


def _labels(items: Any) -> dict[str, str]:
    return {str(item["label"]): str(item["value"]) for item in items or ()}


def _healthcheck(hc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"Test": list(hc.get("tests") or [])}
    for key, api_key in (("interval", "Interval"), ("timeout", "Timeout"), ("startPeriod", "StartPeriod"), ("startInterval", "StartInterval")):
        if hc.get(key):
            out[api_key] = parse_duration(str(hc[key]))
    if hc.get("retries") is not None:
        out["Retries"] = int(hc["retries"])
    return out


def _binds(volumes: Any) -> tuple[list[str], dict[str, dict[str, Any]]]:
    binds: list[str] = []
    anonymous: dict[str, dict[str, Any]] = {}
    for volume in volumes or ():
        source = volume.get("hostPath") or volume.get("volumeName")
        path = volume.get("containerPath")
        if volume.get("fromContainer"):
            raise MappingError("volumes from_container is not used by the program and not mapped")
        if not path:
            raise MappingError("volume entry without container path")
        if source:
            binds.append(f"{source}:{path}:{'ro' if volume.get('readOnly') else 'rw'}")
        else:
            anonymous[path] = {}
    return binds, anonymous


def _upload(item: dict[str, Any]) -> Upload:
    sources = [k for k in ("content", "contentBase64", "source") if item.get(k)]
    if len(sources) != 1:
        raise MappingError(f"upload {item.get('file')}: exactly one of content, content_base64, source")
    if item.get("content"):
        data = str(item["content"]).encode()
    elif item.get("contentBase64"):
        data = base64.b64decode(str(item["contentBase64"]))
    else:
        with open(str(item["source"]), "rb") as f:
            data = f.read()
    if item.get("permissions"):
        mode = int(str(item["permissions"]), 8)
    else:
        mode = 0o744 if item.get("executable") else 0o644
    return Upload(file=str(item["file"]), content=data, mode=mode)


def upload_tar(upload: Upload) -> bytes:
    """The provider's one-file tar: the absolute path as the entry name, put at `/`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name=upload.file)
        info.size = len(upload.content)
        info.mode = upload.mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(upload.content))
    return buffer.getvalue()


def container_spec(inputs: dict[str, Any]) -> ContainerSpec:
    """Map one container's declared inputs (camelCase, as the mocks record them)."""
    name = str(inputs["name"])
    image = inputs.get("image")
    if not isinstance(image, str) or not image:
        raise MappingError(f"container {name}: no image")
    config: dict[str, Any] = {"Image": image, "Hostname": inputs.get("hostname") or "", "Domainname": inputs.get("domainname") or "",
                              "Tty": bool(inputs.get("tty")), "OpenStdin": bool(inputs.get("stdinOpen"))}
    if inputs.get("stopSignal"):
        config["StopSignal"] = inputs["stopSignal"]
    if inputs.get("stopTimeout") is not None:
        config["StopTimeout"] = int(inputs["stopTimeout"])
    if inputs.get("envs"):
        config["Env"] = list(inputs["envs"])
    if inputs.get("command"):
        if any(part == "" for part in inputs["command"]):
            raise MappingError(f"container {name}: values for command may not be empty")
        config["Cmd"] = list(inputs["command"])
    if inputs.get("entrypoints"):
        config["Entrypoint"] = list(inputs["entrypoints"])
    if inputs.get("user"):
        config["User"] = inputs["user"]
    if inputs.get("workingDir"):
        config["WorkingDir"] = inputs["workingDir"]
    if inputs.get("labels"):
        config["Labels"] = _labels(inputs["labels"])
    if inputs.get("healthcheck"):
        config["Healthcheck"] = _healthcheck(inputs["healthcheck"])

    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in inputs.get("ports") or ():
        key = f"{int(port['internal'])}/{port.get('protocol') or 'tcp'}"
        exposed[key] = {}
        binding: dict[str, str] = {}
        if port.get("external") is not None:
            binding["HostPort"] = str(int(port["external"]))
        if port.get("ip") is not None:
            binding["HostIp"] = str(port["ip"])
        if binding:
            bindings.setdefault(key, []).append(binding)
    if exposed:
        config["ExposedPorts"] = exposed

    binds, anonymous = _binds(inputs.get("volumes"))
    if anonymous:
        config["Volumes"] = anonymous

    host: dict[str, Any] = {
        "Privileged": bool(inputs.get("privileged")),
        "PublishAllPorts": bool(inputs.get("publishAllPorts")),
        "RestartPolicy": {"Name": inputs.get("restart") or "no", "MaximumRetryCount": int(inputs.get("maxRetryCount") or 0)},
        "AutoRemove": bool(inputs.get("rm")),
        "ReadonlyRootfs": bool(inputs.get("readOnly")),
        "LogConfig": {"Type": inputs.get("logDriver") or ""},
        "Init": bool(inputs.get("init")),
    }
    if bindings:
        host["PortBindings"] = bindings
    if binds:
        host["Binds"] = binds
    if inputs.get("memory"):
        host["Memory"] = int(inputs["memory"]) * MB
    if inputs.get("memoryReservation"):
        host["MemoryReservation"] = int(inputs["memoryReservation"]) * MB
    if inputs.get("memorySwap"):
        swap = int(inputs["memorySwap"])
        host["MemorySwap"] = swap * MB if swap > 0 else swap
    if inputs.get("shmSize"):
        host["ShmSize"] = int(inputs["shmSize"]) * MB
    if inputs.get("cpus"):
        host["NanoCpus"] = parse_cpus(str(inputs["cpus"]))
    else:
        if inputs.get("cpuPeriod"):
            host["CpuPeriod"] = int(inputs["cpuPeriod"])
        if inputs.get("cpuQuota"):
            host["CpuQuota"] = int(inputs["cpuQuota"])
    if inputs.get("cpuShares"):
        host["CpuShares"] = int(inputs["cpuShares"])
    if inputs.get("cpuSet"):
        host["CpusetCpus"] = str(inputs["cpuSet"])
    if inputs.get("logOpts"):
        host["LogConfig"]["Config"] = {str(k): str(v) for k, v in inputs["logOpts"].items()}
    if inputs.get("deviceRequests"):
        host["DeviceRequests"] = [
            {
                "Driver": r.get("driver") or "",
                "Count": int(r.get("count") or 0),
                "DeviceIDs": list(r["deviceIds"]) if r.get("deviceIds") else None,
                "Capabilities": [list(r["capabilities"])] if r.get("capabilities") else None,
                "Options": dict(r.get("options") or {}),
            }
            for r in inputs["deviceRequests"]
        ]
    if inputs.get("gpus"):
        if inputs.get("deviceRequests"):
            raise MappingError(f"container {name}: gpus conflicts with device_requests")
        host["DeviceRequests"] = gpu_device_requests(str(inputs["gpus"]))
    if inputs.get("networkMode"):
        host["NetworkMode"] = inputs["networkMode"]
    for key, api_key in (("tmpfs", "Tmpfs"), ("sysctls", "Sysctls")):
        if inputs.get(key):
            host[api_key] = {str(k): str(v) for k, v in inputs[key].items()}
    if inputs.get("groupAdds"):
        host["GroupAdd"] = list(inputs["groupAdds"])

    config["HostConfig"] = host
    networks = tuple(
        NetworkAttachment(name=str(n["name"]), aliases=tuple(n.get("aliases") or ()), ipv4_address=n.get("ipv4Address"))
        for n in inputs.get("networksAdvanced") or ()
    )
    return ContainerSpec(
        name=name,
        body=config,
        networks=networks,
        uploads=tuple(_upload(u) for u in inputs.get("uploads") or ()),
        start=inputs.get("start", True) is not False,
        wait=bool(inputs.get("wait")),
        wait_timeout_s=int(inputs.get("waitTimeout") or 60),
        attach=bool(inputs.get("attach")),
        must_run=inputs.get("mustRun", True) is not False,
        destroy_grace_s=int(inputs.get("destroyGraceSeconds") or 0),
        remove_volumes=inputs.get("removeVolumes", True) is not False,
    )
