"""procstack.translate: declared containers -> Services, classified by their role label only,
and the bind-address rewrites (the only things changed on the way to a local process)."""

from __future__ import annotations

import pytest

from app import contract
from mockrun import run_program
from procstack import translate as tr
from procstack.errors import StackError
from stackconfig.names import (
    LABEL_ROLE,
    ONE_SHOT_ROLES,
    ROLE_BALANCER,
    ROLE_MINIO,
    ROLE_MLFLOW,
    ROLE_MYSQL,
    ROLE_REPLICA,
    ROLES,
)

from . import fakes


def test_every_declared_container_is_classified_by_its_role(declared):
    containers = declared.containers()
    services = tr.services(declared)
    assert containers, "the program declared no containers"
    assert len(services) == len(containers)
    assert {s.name: s.role for s in services} == {c.inputs["name"]: c.role for c in containers}
    roles = [s.role for s in services]
    for role in ROLES:
        assert roles.count(role) == (3 if role == ROLE_REPLICA else 1), (role, roles)
    assert [s.weight for s in services if s.role == ROLE_REPLICA] == [1, 2, 2]
    assert [s.name for s in services if s.oneshot] == [s.name for s in services if s.role in ONE_SHOT_ROLES]


def test_the_role_label_decides_not_the_image_or_the_command():
    declared = fakes.stack(
        # A replica-like command and the nginx image: the label still says what it is.
        fakes.container("db", ROLE_MYSQL, image="nginx:1.28.0", command=["python", "-m", contract.REPLICA_MODULE]),
        fakes.container("lb", ROLE_BALANCER, image="mysql:8.4.3"),
    )
    assert {s.resource: s.role for s in tr.services(declared)} == {"db": ROLE_MYSQL, "lb": ROLE_BALANCER}


@pytest.mark.parametrize(("role", "found"), [(None, "no role label"), ("cache", "role 'cache'")])
def test_a_container_without_a_known_role_is_an_error_naming_it(role, found):
    declared = fakes.stack(fakes.container("db", ROLE_MYSQL), fakes.container("redis", role))
    with pytest.raises(StackError) as err:
        tr.services(declared)
    message = str(err.value)
    assert "'redis' (mlserve-dev-redis)" in message and found in message and LABEL_ROLE in message, message


def test_start_order_is_the_role_order_then_natural_name_order():
    declared = fakes.stack(
        fakes.container("lb", ROLE_BALANCER),
        fakes.container("replica-10", ROLE_REPLICA),
        fakes.container("replica-2", ROLE_REPLICA),
        fakes.container("s3", ROLE_MINIO),
        fakes.container("db", ROLE_MYSQL),
    )
    assert [s.resource for s in tr.services(declared)] == ["db", "s3", "replica-2", "replica-10", "lb"]


def test_hostnames_env_and_secrets_come_from_the_declared_inputs(declared):
    replica = next(s for s in tr.services(declared) if s.resource == "replica-1")
    res = declared.container("replica-1")
    assert replica.name == res.inputs["name"]
    assert replica.hostnames[0] == replica.name and "replica-1" in replica.hostnames and "replica-w2" in replica.hostnames
    assert replica.env == dict(e.split("=", 1) for e in res.inputs["envs"])
    mysql = next(s for s in tr.services(declared) if s.role == ROLE_MYSQL)
    assert {"MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD"} <= mysql.secret_env


def test_a_changed_replica_count_changes_no_other_container(declared):
    more = {s.name: s.digest for s in tr.services(run_program("dev", {"replicas": 5, "weights": [1, 2, 2, 1, 1]}))}
    before = {s.name: s.digest for s in tr.services(declared)}
    assert set(more) - set(before) == {"mlserve-dev-replica-3", "mlserve-dev-replica-4"}
    assert {n: more[n] for n in before} == before


def test_a_changed_weight_changes_that_replica_only(declared):
    changed = {s.name: s.digest for s in tr.services(run_program("dev", {"replicas": 3, "weights": [1, 1, 2]}))}
    before = {s.name: s.digest for s in tr.services(declared)}
    assert [n for n in before if changed[n] != before[n]] == ["mlserve-dev-replica-1"]


def test_app_argv_is_the_declared_command_with_local_executables_and_bind_all_made_loopback():
    service = tr.service(fakes.container("m", ROLE_MLFLOW, command=["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]))
    argv = tr.app_argv(service, "127.0.0.42")
    assert argv[0] == tr.venv_executable("mlflow") and argv[0].endswith("/mlflow")
    assert argv[1:] == ["server", "--host", "127.0.0.42", "--port", "5000"]
    with pytest.raises(ValueError, match="explicit command"):
        tr.app_argv(tr.service(fakes.container("m", ROLE_MLFLOW)), "127.0.0.42")


def test_readiness_url_points_the_declared_healthcheck_at_the_address(declared):
    by_role = {s.role: s for s in tr.services(declared)}
    # MLflow's healthcheck: python -c "urllib.request.urlopen('http://127.0.0.1:5000/health')".
    assert tr.readiness_url(by_role["mlflow"], "127.0.0.42", {}) == f"http://127.0.0.42:{contract.MLFLOW_PORT}/health"
    # The replica's runs the image's probe module, which reads the environment it is given.
    env = {contract.ENV_BIND_HOST: "127.0.0.43"}
    assert tr.readiness_url(by_role[ROLE_REPLICA], "127.0.0.43", env) == (
        f"http://127.0.0.43:{contract.REPLICA_PORT}{contract.ROUTE_READY}"
    )
    assert tr.readiness_url(by_role[ROLE_MYSQL], "127.0.0.44", {}) is None


def test_nginx_conf_is_the_uploaded_one_with_loopback_listen_lines(declared):
    balancer = next(s for s in tr.services(declared) if s.role == ROLE_BALANCER)
    path, conf = tr.main_conf(balancer)
    assert path.endswith("/nginx.conf")
    local = tr.local_nginx_conf(conf, "127.0.0.98")
    assert tr.listen_ports(conf) == [contract.BALANCER_PORT]
    assert f"listen 127.0.0.98:{contract.BALANCER_PORT};" in local
    # Nothing but the listen lines differs.
    diff = [(a, b) for a, b in zip(conf.splitlines(), local.splitlines(), strict=True) if a != b]
    assert len(diff) == 1 and "listen" in diff[0][0], diff


@pytest.mark.parametrize(
    ("line", "local"),
    [
        ("listen 80;", "listen 127.0.0.9:80;"),
        ("  listen 0.0.0.0:8080 reuseport;", "  listen 127.0.0.9:8080 reuseport;"),
        ("listen *:81;", "listen 127.0.0.9:81;"),
        ("listen [::]:82;", "listen 127.0.0.9:82;"),
        ("# listen 83;", "# listen 83;"),
    ],
)
def test_listen_lines_bind_the_address(line, local):
    assert tr.local_nginx_conf(line, "127.0.0.9") == local
