"""Image builds through the Docker API with BuildKit, as pulumi-docker's `Image` does them.

pulumi-docker 5 (provider/image.go) sends the build context as a tar with the Dockerfile path,
the build args and `version=2` (BuildKit) to the engine's /build endpoint, tags the result with
`imageName`, and for `skipPush` images returns the image ID as `repoDigest`. `build_image` does
the same with the Python `docker` SDK's low-level client (the SDK's own `images.build` knows only
the classic builder). The context honours `.dockerignore`.

BuildKit reports progress as `moby.buildkit.trace` messages: base64 protobuf `StatusResponse`s.
`_decode_trace` reads the few fields printed here (step names, cache hits, errors, step output)
from the wire format, so that a failed step shows its own output.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.utils import build as docker_build

Log = Callable[[str], None]


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Built:
    tag: str
    image_id: str
    seconds: float


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_tar(context: Path, dockerfile: str) -> bytes:
    """The context as the engine receives it: a tar of `context` minus .dockerignore's patterns.

    GNU tar format: the engine's BuildKit path sniffs the body for a tar header, and the PAX
    headers Python writes by default make it read the whole body as a Dockerfile."""
    files = sorted(docker_build.exclude_paths(str(context), _dockerignore(context), dockerfile=dockerfile))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in files:
            path = context / name
            info = tar.gettarinfo(str(path), arcname=name)
            # Reproducible: owner and time do not depend on who checked the files out when.
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


# --- BuildKit trace: protobuf wire format, only what is printed -------------------------------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            value = data[i : i + length]
            i += length
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:  # groups are not used by BuildKit's messages
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


@dataclass
class _Vertex:
    name: str = ""
    cached: bool = False
    started: bool = False
    completed: bool = False
    error: str = ""


def _decode_trace(raw: bytes, vertexes: dict[bytes, _Vertex], log: Log) -> None:
    """StatusResponse{1: Vertex{1 digest, 3 name, 4 cached, 5 started, 6 completed, 7 error},
    3: VertexLog{1 vertex, 4 msg}} (moby/buildkit api/services/control/control.proto)."""
    for number, _, value in _fields(raw):
        if number == 1:
            fields = {n: v for n, _, v in _fields(value)}
            digest = fields.get(1, b"")
            vertex = vertexes.setdefault(digest, _Vertex())
            vertex.name = fields.get(3, b"").decode(errors="replace") or vertex.name
            if fields.get(4) and not vertex.cached:
                vertex.cached = True
                log(f"  CACHED {vertex.name}")
            if 5 in fields and not vertex.started and not fields.get(4):
                vertex.started = True
                log(f"  {vertex.name}")
            if 6 in fields and not vertex.completed:
                vertex.completed = True
            if fields.get(7):
                vertex.error = fields[7].decode(errors="replace")
        elif number == 3:
            fields = {n: v for n, _, v in _fields(value)}
            for line in fields.get(4, b"").decode(errors="replace").splitlines():
                if line.strip():
                    log(f"    {line}")


def build_image(
    client: docker.DockerClient,
    *,
    context: Path,
    dockerfile: str,
    tag: str,
    args: Mapping[str, str] | None = None,
    target: str | None = None,
    log: Log = print,
) -> Built:
    """Build `dockerfile` (a path relative to `context`) with BuildKit; returns the image ID."""
    api = client.api
    params: dict[str, Any] = {
        "t": tag,
        "dockerfile": dockerfile,
        "buildargs": json.dumps(dict(args or {})),
        "version": "2",
        "rm": "1",
        "forcerm": "1",
    }
    if target:
        params["target"] = target
    started = time.monotonic()
    body = context_tar(context, dockerfile)
    response = api._post(  # noqa: SLF001 - the SDK has no BuildKit switch; same endpoint, one more parameter
        api._url("/build"), params=params, data=body, headers={"Content-Type": "application/x-tar"}, stream=True, timeout=None
    )
    api._raise_for_status(response)  # noqa: SLF001
    image_id = ""
    vertexes: dict[bytes, _Vertex] = {}
    errors: list[str] = []
    for chunk in api._stream_helper(response, decode=True):  # noqa: SLF001
        if "error" in chunk or "errorDetail" in chunk:
            errors.append(str(chunk.get("error") or chunk.get("errorDetail", {}).get("message")))
        aux_id = chunk.get("id")
        if aux_id == "moby.buildkit.trace":
            _decode_trace(base64.b64decode(chunk.get("aux", "")), vertexes, log)
        elif aux_id == "moby.image.id":
            image_id = chunk.get("aux", {}).get("ID", "")
        elif "stream" in chunk and chunk["stream"].strip():
            log(f"  {chunk['stream'].rstrip()}")
    if errors or not image_id:
        failed = [f"{v.name}: {v.error}" for v in vertexes.values() if v.error]
        raise BuildError(f"building {tag} from {context}/{dockerfile} failed: {'; '.join(errors or ['no image ID'])}"
                         + (f" (step {failed[-1]})" if failed else ""))
    # pulumi-docker inspects the tag it built for the ID it returns.
    image_id = client.images.get(tag).id
    return Built(tag=tag, image_id=image_id, seconds=time.monotonic() - started)
