"""Local stand-ins for the images we cannot run: MySQL (MariaDB), MinIO (moto), mc (boto3)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from app import contract

from . import procs

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
