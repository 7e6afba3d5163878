"""The runner's reading of the declared stack, without starting anything (fast; no e2e marker).

These guard the "no drift by design" claim: every container the program declares has a local
stand-in, and what runs is the declared command/env/conf with only bind addresses changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app import contract
from mockrun import run_program
from procstack import stack as stack_mod
from procstack import translate as tr


@pytest.fixture(scope="module")
def declared():
    return run_program("dev", {"replicas": 3, "weights": [1, 2, 2]})


def test_every_declared_container_has_a_stand_in(declared):
    containers = declared.containers()
    services = tr.services(declared)
    assert containers, "the program declared no containers"
    assert len(services) == len(containers)
    kinds = [s.kind for s in services]
    # APP would mean "an image we do not know how to run": none today.
    assert tr.APP not in kinds, [(s.name, s.image) for s in services if s.kind == tr.APP]
    for kind in (tr.MYSQL, tr.S3, tr.BUCKET, tr.TRACKING, tr.TRAINER, tr.BALANCER):
        assert kinds.count(kind) == 1, (kind, kinds)
    assert kinds.count(tr.REPLICA) == 3
    assert [s.weight for s in services if s.kind == tr.REPLICA] == [1, 2, 2]


def test_replica_runs_the_declared_command_and_env_with_only_the_bind_address_changed(declared):
    replica = next(s for s in tr.services(declared) if s.kind == tr.REPLICA)
    res = declared.by_name(replica.resource, "docker:index/container:Container")
    argv = tr.app_argv(replica, "127.0.0.99")
    assert argv[1:] == list(res.inputs["command"])[1:]
    env = tr.app_env(replica, "127.0.0.99")
    declared_env = dict(e.split("=", 1) for e in res.inputs["envs"])
    assert env.pop(contract.ENV_BIND_HOST) == "127.0.0.99"
    declared_env.pop(contract.ENV_BIND_HOST, None)
    assert env == declared_env
    assert tr.readiness_url(replica, "127.0.0.99") == f"http://127.0.0.99:{contract.REPLICA_PORT}{contract.ROUTE_READY}"


def test_nginx_conf_is_the_uploaded_one_with_loopback_listen_lines(declared):
    balancer = next(s for s in tr.services(declared) if s.kind == tr.BALANCER)
    path, conf = tr.main_conf(balancer)
    assert path.endswith("/nginx.conf")
    local = tr.local_nginx_conf(conf, "127.0.0.98")
    assert tr.listen_ports(conf) == [contract.BALANCER_PORT]
    assert f"listen 127.0.0.98:{contract.BALANCER_PORT};" in local
    # Nothing but the listen lines differs.
    diff = [(a, b) for a, b in zip(conf.splitlines(), local.splitlines(), strict=True) if a != b]
    assert len(diff) == 1 and "listen" in diff[0][0], diff


def test_a_changed_replica_count_changes_no_other_container(declared):
    more = {s.name: s.digest for s in tr.services(run_program("dev", {"replicas": 5, "weights": [1, 2, 2, 1, 1]}))}
    before = {s.name: s.digest for s in tr.services(declared)}
    assert set(more) - set(before) == {"mlserve-dev-replica-3", "mlserve-dev-replica-4"}
    assert {n: more[n] for n in before} == before


def test_hosts_block_is_replaced_and_removed_without_touching_other_lines(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.1.2.3 other\n")
    monkeypatch.setattr(stack_mod, "HOSTS_FILE", hosts)
    stack_mod.write_hosts_block({"mysql": ["127.0.0.20"], "replica-w1": ["127.0.0.25", "127.0.0.26"]}, Path("/x"))
    stack_mod.write_hosts_block({"mysql": ["127.0.0.20"]}, Path("/x"))
    text = hosts.read_text()
    assert text.count(stack_mod.HOSTS_BEGIN) == 1 and "127.0.0.20 mysql" in text and "replica-w1" not in text
    stack_mod.remove_hosts_block(Path("/x"))
    assert hosts.read_text() == "127.0.0.1 localhost\n10.1.2.3 other\n"
