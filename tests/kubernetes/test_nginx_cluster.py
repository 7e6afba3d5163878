"""The balancer conf of the Kubernetes target: rendered by the same nginx/render.py with the
cluster's resolver and fully qualified group names, accepted by `nginx -t`, and routing in the
live scenario of tests/nginx (a DNS stand-in answering the fully qualified Service names)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app import contract
from nginx.render import RESOLVER_ADDRESS, STATUS_DIR, render
from stackconfig.names import weight_alias
from stackconfig.settings import MAX_WEIGHT, Settings, parse
from tests.nginx import scenario
from tests.support import nginx_binary

CLUSTER = {"target": "kubernetes", "imageRegistry": "registry.example.com/ml", "inClusterStores": "true"}


def settings(**raw: object) -> Settings:
    merged = {**CLUSTER, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}}
    return parse("cluster", merged)


def private_namespace_prefix(hosts: Path) -> list[str] | None:
    """A command prefix that runs in fresh network and mount namespaces, with `hosts` as /etc/hosts
    (so that the conf's resolver name points at the DNS stand-in); None where that is impossible."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return None
    probe = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return None
    return ["unshare", "-n", "-m", "--", "sh", "-c", f'mount --bind {hosts} /etc/hosts && ip link set lo up && exec "$@"', "sh"]


# --- content -------------------------------------------------------------------------


def test_upstream_names_every_weight_by_its_fully_qualified_service_name() -> None:
    conf = render(settings(namespace="ml-serving", clusterDomain="corp.example"))
    found = re.findall(r"^\s*server (\S+):(\d+) weight=(\d+) resolve", conf, flags=re.M)
    assert [(host, int(port), int(w)) for host, port, w in found] == [
        (f"{weight_alias(w)}.ml-serving.svc.corp.example", contract.REPLICA_PORT, w) for w in range(1, MAX_WEIGHT + 1)
    ]
    assert "resolver kube-dns.kube-system.svc.corp.example valid=5s ipv6=off;" in conf
    # Workers as the pod's CPU limit, not the node's CPU count.
    assert re.search(r"^worker_processes 2;$", conf, flags=re.M)


def test_cluster_dns_can_be_an_address() -> None:
    assert "resolver 10.96.0.10 valid=5s ipv6=off;" in render(settings(clusterDns="10.96.0.10"))
    assert "resolver 10.43.0.10:53 valid=5s ipv6=off;" in render(settings(clusterDns="10.43.0.10:53"))


def test_cluster_conf_differs_from_the_docker_conf_only_in_resolver_names_and_workers() -> None:
    docker, cluster = render(parse("dev", {})), render(settings(namespace="ns"))
    normalised = cluster.replace(".ns.svc.cluster.local:", ":").replace("kube-dns.kube-system.svc.cluster.local", RESOLVER_ADDRESS)
    assert normalised.replace("worker_processes 2;", "worker_processes auto;") == docker


def test_cluster_conf_depends_on_neither_replica_count_nor_weights() -> None:
    base = render(settings(replicas=3, weights=[3, 2, 1]))
    assert render(settings(replicas=7, weights=[3, 2, 1, 1, 1, 2, 9])) == base
    assert render(settings(replicas=1)) == base


# --- real binary ---------------------------------------------------------------------------


def _nginx_t(tmp_path: Path, conf: str, hosts_line: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / STATUS_DIR).mkdir(exist_ok=True)
    (tmp_path / "nginx.conf").write_text(conf)
    command = [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    if hosts_line is not None:
        hosts = tmp_path / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{hosts_line}")
        prefix = private_namespace_prefix(hosts)
        if prefix is None:
            pytest.skip("needs root and unshare -n -m (a private /etc/hosts for the resolver's name)")
        command = [*prefix, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("raw", [{}, {"balancerAlgorithm": "least_conn", "namespace": "ml-serving", "clusterDomain": "corp.example"}])
def test_nginx_accepts_the_cluster_conf(tmp_path: Path, raw: dict[str, object]) -> None:
    config = settings(**raw)
    assert config.kubernetes is not None
    done = _nginx_t(tmp_path, render(config), f"{RESOLVER_ADDRESS} {config.kubernetes.dns_resolver}\n")
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_nginx_accepts_the_cluster_conf_with_an_address_resolver(tmp_path: Path) -> None:
    """No name to resolve: runs anywhere, root or not."""
    done = _nginx_t(tmp_path, render(settings(clusterDns="10.96.0.10")), None)
    assert done.returncode == 0, done.stderr


def test_nginx_resolves_the_resolver_name_at_start(tmp_path: Path) -> None:
    """Why the live test maps the name: a pod resolves it through the cluster DNS; unresolvable, nginx refuses to start."""
    done = _nginx_t(tmp_path, render(settings()), "")
    assert done.returncode != 0 and "host not found in resolver" in done.stderr


def test_nginx_rejects_a_broken_cluster_conf(tmp_path: Path) -> None:
    config = settings()
    assert config.kubernetes is not None
    done = _nginx_t(tmp_path, render(config).replace(" resolve ", " resolv "), f"{RESOLVER_ADDRESS} {config.kubernetes.dns_resolver}\n")
    assert done.returncode != 0


@pytest.mark.live
def test_cluster_conf_routes_by_weight_fails_over_and_finds_new_pods(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{scenario.cluster_hosts_line()}")
    prefix = private_namespace_prefix(hosts)
    if prefix is None:
        pytest.skip("needs root and unshare -n -m: the scenario binds 127.0.0.11:53 and maps the resolver's name")
    work = tmp_path / "work"
    done = subprocess.run([*prefix, sys.executable, scenario.__file__, str(work), "kubernetes"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["target"] == "kubernetes" and result["nginx_alive"]
    assert result["names"] == {"w1": "replica-w1.mlserve-scenario.svc.cluster.local", "w3": "replica-w3.mlserve-scenario.svc.cluster.local"}
    split = result["split"]
    assert set(split) == {"200 127.0.0.21", "200 127.0.0.22", "200 127.0.0.23"}, split
    assert split["200 127.0.0.23"] == pytest.approx(30, abs=3)
    assert split["200 127.0.0.21"] == pytest.approx(10, abs=3) and split["200 127.0.0.22"] == pytest.approx(10, abs=3)
    assert result["after_kill_statuses"] == {"200": 50}
    assert result["new_replica_seen_after_s"] <= result["resolver_valid_s"] + 3
    assert result["client_id"]["headers"]["x-request-id"] == "client-abc-123"
    assert result["none_left"]["status"] == 502
