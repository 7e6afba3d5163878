"""Production traffic (issue 13) on a real Docker engine: the process stack's scenarios
(tests/e2e/test_06_traffic.py, whose constants, bounds and request helpers these reuse) through
the balancer's published 127.0.0.1 port, with the engine's own faults for the shadow: its
container paused (the cgroup freezer: a hang) and its process SIGKILLed (the restart policy
brings it back). Payload logs and replay are left to the process stack: they read the bucket and
MLflow, which an engine stack publishes nowhere."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app import contract
from nginx.render import RESOLVER_VALID_S
from stackconfig.names import replica_resource
from tests.e2e.test_06_traffic import (
    FAULT_REQUESTS,
    KEYS,
    MIRROR_PERCENT,
    P99_BOUND_MS,
    SHARE_REQUESTS,
    TRAFFIC,
    bound,
    check_canary_answers,
    check_keys_limits_and_routes,
    check_rate_limit,
    metric_total,
    p99,
    run,
)
from tests.engine.conftest import STACK, Running

pytestmark = pytest.mark.engine


def _register(running: Running, alias: str, c: float) -> str:
    """The trainer, run by hand in a container of the replica image on the stack's network."""
    replica = running.container(replica_resource(0))
    env = dict(e.split("=", 1) for e in replica.attrs["Config"]["Env"])
    out = running.engine.containers.run(
        replica.image.id, ["python", "-m", contract.TRAINER_MODULE, "--promote", "--c", str(c), "--alias", alias],
        environment={**{k: env[k] for k in (contract.ENV_TRACKING_URI, contract.ENV_MODEL_NAME)},
                     contract.ENV_TRAINER_ONLY_IF_EMPTY: "0"},
        network=f"mlserve-{STACK}", remove=True, stderr=True,
    )
    return str(json.loads(out.decode().strip().splitlines()[-1])["alias_version"])


def _inside(running: Running, resource: str, route: str) -> str:
    """A replica's own route, read from inside its container (the entry does not serve it)."""
    probe = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{contract.REPLICA_PORT}{route}').read().decode())"
    return str(running.container(resource).exec_run(["python", "-c", probe]).output.decode())


def _copies(running: Running, **labels: str) -> float:
    metrics = _inside(running, replica_resource(0, "candidate"), contract.ROUTE_METRICS)
    return metric_total(metrics, "mlserve_replica_shadow_requests_total", **labels)


def _wait(predicate: Any, what: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)  # poll interval


@pytest.fixture(scope="module")
def traffic(running: Running) -> Iterator[dict[str, Any]]:
    from mockrun import run_program

    versions = {"challenger": _register(running, "challenger", 0.01), "candidate": _register(running, "candidate", 0.3)}
    before = {c.name: c.id for c in running.containers()}
    # Payload logs are the process stack's to test (above); their share is every replica's env.
    running.up(**{key: value for key, value in TRAFFIC.items() if key != "payloadLogPercent"})
    after = {c.name: c.id for c in running.containers()}
    # Adding groups and keys touches no replica of the default group (the balancer's conf changes).
    for index in range(2):
        name = f"mlserve-{STACK}-{replica_resource(index)}"
        assert after[name] == before[name], name
    versions["champion"] = str(json.loads(_inside(running, replica_resource(0), contract.ROUTE_HEALTH))["model"]["version"])
    keys: dict[str, str] = run_program(STACK, running.config).output("apiKeys")
    assert set(keys) == set(KEYS)
    state = {"entry": running.entry, "keys": keys, "versions": versions}
    # Every group's replica is in the balancer's DNS answers within one resolver period.
    deadline = time.monotonic() + RESOLVER_VALID_S + 60
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            answers = run(client, running.entry, 40, keys["ci"])
            if "challenger" in {a["headers"].get(contract.HEADER_MODEL_ALIAS.lower()) for a in answers}:
                break
    yield state


def test_the_canary_answers_its_share_and_the_shadow_gets_its_copies(running: Running, traffic: dict[str, Any]) -> None:
    copies_before = _copies(running)
    with httpx.Client(timeout=10) as client:
        answers = run(client, traffic["entry"], SHARE_REQUESTS, traffic["keys"]["ci"])
    check_canary_answers(answers, traffic["versions"])
    want = SHARE_REQUESTS * MIRROR_PERCENT / 100
    tolerance = bound(SHARE_REQUESTS, MIRROR_PERCENT / 100)
    # Copies are handed on in the background: wait until the share has arrived.
    _wait(lambda: _copies(running) - copies_before >= want - tolerance, "the shadow's copies", 60)
    copies = _copies(running) - copies_before
    print(f"shadow copies {copies:.0f} (expected {want:.0f})")
    assert abs(copies - want) <= tolerance
    versions = traffic["versions"]
    assert _copies(running, version=versions["candidate"], primary_version=versions["champion"], outcome="agree") > 0


@pytest.mark.parametrize("fault", ["paused", "killed"])
def test_a_hanging_or_dead_shadow_changes_no_answer_and_not_the_p99(running: Running, traffic: dict[str, Any], fault: str) -> None:
    shadow = running.container(replica_resource(0, "candidate"))
    restarts = shadow.attrs["RestartCount"]
    with httpx.Client(timeout=30) as client:
        healthy = run(client, traffic["entry"], FAULT_REQUESTS, traffic["keys"]["ci"])
        if fault == "paused":
            shadow.pause()
        else:
            os.kill(shadow.attrs["State"]["Pid"], signal.SIGKILL)  # from the host: the restart policy applies
        try:
            faulty = run(client, traffic["entry"], FAULT_REQUESTS, traffic["keys"]["ci"])
        finally:
            if fault == "paused":
                shadow.unpause()
    for answers in (healthy, faulty):
        assert Counter(a["status"] for a in answers) == {200: FAULT_REQUESTS}
        assert {a["headers"][contract.HEADER_MODEL_ALIAS.lower()] for a in answers} <= {"champion", "challenger"}
    print(f"\nshadow {fault}: p99 {p99(faulty):.1f} ms against {p99(healthy):.1f} ms healthy (bound +{P99_BOUND_MS} ms)")
    assert p99(faulty) <= p99(healthy) + P99_BOUND_MS
    if fault == "killed":
        _wait(lambda: running.container(replica_resource(0, "candidate")).attrs["RestartCount"] == restarts + 1
              and (running.container(replica_resource(0, "candidate")).attrs["State"].get("Health") or {}).get("Status") == "healthy",
              "the restart policy to bring the shadow back", 180)


def test_keys_limits_and_the_replicas_own_routes_at_the_published_entry(traffic: dict[str, Any]) -> None:
    check_keys_limits_and_routes(traffic["entry"], traffic["keys"])


def test_over_the_rate_is_429_in_json_with_retry_after(running: Running, traffic: dict[str, Any]) -> None:
    check_rate_limit(lambda changes: running.up(**changes), lambda: running.entry, traffic["keys"])
