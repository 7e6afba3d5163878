"""Production traffic on the process stack (issue 13): a canary answering its share, a shadow
receiving its share and counting agreement, a hanging or dead shadow costing clients nothing,
API keys and rate limits at the entry, the replicas' own routes out of reach, payload logs in
the bucket and the replay command reporting where two versions differ.

Stated tolerances: a share within 4 standard deviations of a binomial (n, p), plus one request;
a hanging or dead shadow may add at most P99_BOUND_MS to the clients' p99 (the balancer's
hand-off timeout to its mirror relay plus scheduling noise on two shared cores; a plain nginx
`mirror` would add the whole hang)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import boto3
import httpx
import pytest

from app import contract
from nginx.render import MIRROR_HANDOFF_TIMEOUT_MS, RESOLVER_VALID_S
from procstack.stack import LocalStack
from stackconfig.names import MLFLOW_PRIVATE_URL, ROLE_BUCKET, ROLE_MINIO, ROLE_TRAINER

from .helpers import binomial_bound, info, service

pytestmark = pytest.mark.e2e

MODEL = "iris-classifier"
CANARY_PERCENT, MIRROR_PERCENT = 10, 50
KEYS = ["ci", "ops"]
TRAFFIC = {
    "groups": [
        {"name": "challenger", "role": "canary", "alias": "challenger", "replicas": 1, "trafficPercent": CANARY_PERCENT},
        {"name": "candidate", "role": "shadow", "alias": "candidate", "replicas": 1, "mirrorPercent": MIRROR_PERCENT},
    ],
    "apiKeys": KEYS,
    "payloadLogPercent": "100",
}
UNDO = {key: None for key in (*TRAFFIC, "rateLimitPerKey", "rateLimitBurst")}
P99_BOUND_MS = MIRROR_HANDOFF_TIMEOUT_MS + 150
SHARE_REQUESTS = 1000
FAULT_REQUESTS = 300


def bound(n: int, p: float) -> float:
    return binomial_bound(n, p)


@lru_cache(maxsize=1)
def iris_bodies() -> list[bytes]:
    """Every iris row as its own request: varied inputs, so that versions can disagree somewhere."""
    from sklearn.datasets import load_iris

    data = load_iris()
    columns = list(data.feature_names)
    return [json.dumps({"dataframe_split": {"columns": columns, "data": [[float(v) for v in row]]}}).encode() for row in data.data]


def register(stack: LocalStack, alias: str, c: float) -> str:
    """The declared trainer, run by hand: a new version behind `alias`."""
    out = stack.run_oneshot(ROLE_TRAINER, ["--promote", "--c", str(c), "--alias", alias], {contract.ENV_TRAINER_ONLY_IF_EMPTY: "0"})
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return str(result["alias_version"])


def api_keys(stack: LocalStack) -> dict[str, str]:
    from mockrun import run_program

    keys: dict[str, str] = run_program(stack.stack, stack.state["overrides"]).output("apiKeys")
    return keys


def replica_url(stack: LocalStack, group: str) -> str:
    (url,) = [r["url"] for n, r in info(stack)["replicas"].items() if n.endswith(f"replica-{group}-0")]
    return str(url)


def replica_pid(stack: LocalStack, group: str) -> int:
    (pid,) = [r["pid"] for n, r in stack.status()["processes"].items() if n.endswith(f"replica-{group}-0")]
    return int(pid)


def metric_sum(url: str, name: str, **labels: str) -> float:
    return metric_total(httpx.get(url + contract.ROUTE_METRICS, timeout=10).text, name, **labels)


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, in Prometheus' text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(client: httpx.Client, url: str, n: int, key: str | None) -> list[dict[str, Any]]:
    """n requests in a row on one keep-alive connection, cycling through the iris rows."""
    bodies = iris_bodies()
    headers = {"Content-Type": "application/json", **({contract.HEADER_API_KEY: key} if key else {})}
    out = []
    for i in range(n):
        started = time.perf_counter()
        r = client.post(url + contract.ROUTE_INVOCATIONS, content=bodies[i % len(bodies)], headers=headers)
        out.append({"status": r.status_code, "ms": (time.perf_counter() - started) * 1000, "headers": dict(r.headers)})
    return out


def p99(answers: list[dict[str, Any]]) -> float:
    ms = sorted(a["ms"] for a in answers)
    return ms[min(len(ms) - 1, int(0.99 * len(ms)))]


@pytest.fixture(scope="module")
def traffic(stack: LocalStack) -> Iterator[dict[str, Any]]:
    versions = {"champion": None, "challenger": register(stack, "challenger", 0.01), "candidate": register(stack, "candidate", 0.3)}
    stack.up(TRAFFIC)
    status = info(stack)
    versions["champion"] = httpx.get(next(iter(status["replicas"].values()))["url"] + contract.ROUTE_HEALTH, timeout=10).json()["model"]["version"]
    keys = api_keys(stack)
    assert set(keys) == set(KEYS)
    state = {"entry": status["entry_url"], "keys": keys, "versions": versions, "results": {}}
    # Every group's replica is in the balancer's DNS answers within one resolver period.
    deadline = time.monotonic() + RESOLVER_VALID_S + 30
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            aliases = {a["headers"].get(contract.HEADER_MODEL_ALIAS.lower()) for a in run(client, state["entry"], 40, keys["ci"])}
            if "challenger" in aliases:
                break
    try:
        yield state
    finally:
        stack.up(UNDO)


def check_canary_answers(answers: list[dict[str, Any]], versions: dict[str, str]) -> None:
    """SHARE_REQUESTS answers: all 200, the canary's share within the bound, never the shadow,
    each naming the model and the version its alias serves. (The engine tests too.)"""
    assert Counter(a["status"] for a in answers) == {200: SHARE_REQUESTS}
    by_alias = Counter(a["headers"][contract.HEADER_MODEL_ALIAS.lower()] for a in answers)
    assert set(by_alias) == {"champion", "challenger"}, by_alias  # never the shadow
    expected = SHARE_REQUESTS * CANARY_PERCENT / 100
    assert abs(by_alias["challenger"] - expected) <= bound(SHARE_REQUESTS, CANARY_PERCENT / 100), by_alias
    for a in answers:
        alias = a["headers"][contract.HEADER_MODEL_ALIAS.lower()]
        assert a["headers"][contract.HEADER_MODEL_NAME.lower()] == MODEL
        assert a["headers"][contract.HEADER_MODEL_VERSION.lower()] == versions[alias]
    print(f"\ncanary share: {by_alias['challenger']} of {SHARE_REQUESTS} (expected {expected:.0f} "
          f"+/- {bound(SHARE_REQUESTS, CANARY_PERCENT / 100):.0f})")


def test_the_canary_answers_its_share_and_every_answer_names_its_model(stack: LocalStack, traffic: dict[str, Any]) -> None:
    shadow = replica_url(stack, "candidate")
    copies_before = metric_sum(shadow, "mlserve_replica_shadow_requests_total")
    with httpx.Client(timeout=10) as client:
        answers = run(client, traffic["entry"], SHARE_REQUESTS, traffic["keys"]["ci"])
    check_canary_answers(answers, traffic["versions"])
    # The shadow compared its share of them (copies are handed on in the background).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        copies = metric_sum(shadow, "mlserve_replica_shadow_requests_total") - copies_before
        if copies >= SHARE_REQUESTS * MIRROR_PERCENT / 100 - bound(SHARE_REQUESTS, MIRROR_PERCENT / 100):
            break
        time.sleep(0.5)
    traffic["results"]["copies"] = copies
    print(f"shadow copies compared: {copies:.0f} of {SHARE_REQUESTS} (expected {SHARE_REQUESTS * MIRROR_PERCENT / 100:.0f})")
    assert abs(copies - SHARE_REQUESTS * MIRROR_PERCENT / 100) <= bound(SHARE_REQUESTS, MIRROR_PERCENT / 100)


def test_the_shadow_counts_agreement_per_version(stack: LocalStack, traffic: dict[str, Any]) -> None:
    shadow = replica_url(stack, "candidate")
    versions = traffic["versions"]
    labels = {"version": versions["candidate"], "primary_version": versions["champion"]}
    agree = metric_sum(shadow, "mlserve_replica_shadow_requests_total", **labels, outcome="agree")
    disagree = metric_sum(shadow, "mlserve_replica_shadow_requests_total", **labels, outcome="disagree")
    rows = metric_sum(shadow, "mlserve_replica_shadow_rows_total", **labels)
    print(f"shadow v{versions['candidate']} vs primary v{versions['champion']}: agree {agree:.0f}, disagree {disagree:.0f}")
    assert agree + disagree >= traffic["results"].get("copies", 1) and rows >= agree + disagree
    assert agree > 0


@pytest.mark.parametrize("fault", ["hanging", "dead"])
def test_a_hanging_or_dead_shadow_changes_no_answer_and_not_the_p99(stack: LocalStack, traffic: dict[str, Any], fault: str) -> None:
    key = traffic["keys"]["ci"]
    with httpx.Client(timeout=30) as client:
        healthy = run(client, traffic["entry"], FAULT_REQUESTS, key)
        pid = replica_pid(stack, "candidate")
        os.kill(pid, signal.SIGSTOP if fault == "hanging" else signal.SIGKILL)
        try:
            faulty = run(client, traffic["entry"], FAULT_REQUESTS, key)
        finally:
            if fault == "hanging":
                os.kill(pid, signal.SIGCONT)
    if fault == "dead":
        stack.up()  # the reconciler starts the dead shadow again, as Docker's restart policy would
    for answers in (healthy, faulty):
        assert Counter(a["status"] for a in answers) == {200: FAULT_REQUESTS}
        assert {a["headers"][contract.HEADER_MODEL_ALIAS.lower()] for a in answers} <= {"champion", "challenger"}
    print(f"\nshadow {fault}: p99 {p99(faulty):.1f} ms against {p99(healthy):.1f} ms healthy (bound +{P99_BOUND_MS} ms)")
    assert p99(faulty) <= p99(healthy) + P99_BOUND_MS


def test_keys_are_required_and_the_replicas_own_routes_are_out_of_reach(traffic: dict[str, Any]) -> None:
    check_keys_limits_and_routes(traffic["entry"], traffic["keys"])


def check_keys_limits_and_routes(entry: str, keys: dict[str, str]) -> None:
    """No key or a wrong one: 401 in JSON; a right one in either header: 200; /ping open; the
    replicas' own routes 404; a body over the limit 413 in JSON. (The engine tests too.)"""
    body = iris_bodies()[0]
    json_ct = {"Content-Type": "application/json"}
    for headers in ({}, {contract.HEADER_API_KEY: "wrong-key-0000000000000000000000"}, {contract.HEADER_AUTHORIZATION: "Bearer nope"}):
        r = httpx.post(entry + contract.ROUTE_INVOCATIONS, content=body, headers={**json_ct, **headers}, timeout=10)
        assert r.status_code == 401 and r.headers["content-type"] == "application/json"
        assert r.json()["error_code"] == "UNAUTHENTICATED"
    ok = httpx.post(entry + contract.ROUTE_INVOCATIONS, content=body,
                    headers={**json_ct, contract.HEADER_AUTHORIZATION: f"Bearer {keys['ops']}"}, timeout=10)
    assert ok.status_code == 200
    assert httpx.get(entry + contract.ROUTE_PING, timeout=10).status_code == 200  # open
    for route in (contract.ROUTE_METRICS, contract.ROUTE_HEALTH, contract.ROUTE_READY):
        r = httpx.get(entry + route, timeout=10)
        assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND", route
    too_large = httpx.post(entry + contract.ROUTE_INVOCATIONS, content=b"x" * (16 * 2**20 + 1),
                           headers={**json_ct, contract.HEADER_API_KEY: keys["ci"]}, timeout=30)
    assert too_large.status_code == 413 and too_large.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"


def test_over_the_rate_is_429_in_json_with_retry_after(stack: LocalStack, traffic: dict[str, Any]) -> None:
    check_rate_limit(stack.up, lambda: str(info(stack)["entry_url"]), traffic["keys"])


def check_rate_limit(up: Callable[[dict[str, object]], object], entry: Callable[[], str], keys: dict[str, str]) -> None:
    """A rate per key applied with `up` (the balancer only): over it 429 in JSON with
    Retry-After, another key in its own bucket. (The engine tests too.)"""
    up({"rateLimitPerKey": 5, "rateLimitBurst": 5})
    try:
        with httpx.Client(timeout=10) as client:
            answers = run(client, entry(), 40, keys["ops"])
            other = run(client, entry(), 1, keys["ci"])  # its own bucket
    finally:
        up({"rateLimitPerKey": None, "rateLimitBurst": None})
    statuses = Counter(a["status"] for a in answers)
    assert statuses[429] >= 40 - 5 - 3 and statuses[200] >= 1, statuses
    refused = next(a for a in answers if a["status"] == 429)
    assert refused["headers"]["content-type"] == "application/json" and int(refused["headers"]["retry-after"]) >= 1
    assert other[0]["status"] == 200


def _payload_records(stack: LocalStack, group: str) -> int:
    minio = service(stack, ROLE_MINIO)
    bucket = service(stack, ROLE_BUCKET).command[-1].split("/", 1)[1]
    s3 = boto3.client("s3", endpoint_url=info(stack)["s3_endpoint"], aws_access_key_id=minio.env["MINIO_ROOT_USER"],
                      aws_secret_access_key=minio.env["MINIO_ROOT_PASSWORD"], region_name="us-east-1")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"payload-logs/{MODEL}/{group}/"):
        for obj in page.get("Contents", []):
            count += s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().count(b"\n")
    return count


def replay(*args: str) -> dict[str, Any]:
    env = {**os.environ, contract.ENV_TRACKING_URI: MLFLOW_PRIVATE_URL}
    done = subprocess.run([sys.executable, "-m", "app.replay", "--model", MODEL, *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_payload_logs_land_in_the_bucket_and_replay_finds_where_versions_differ(stack: LocalStack, traffic: dict[str, Any]) -> None:
    # Every request so far was sampled (100 %); uploads come every flush interval.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_payload_records(stack, "default") < 500 or _payload_records(stack, "challenger") < 20):
        time.sleep(1)
    default_records, canary_records = _payload_records(stack, "default"), _payload_records(stack, "challenger")
    print(f"\npayload records in the bucket: default {default_records}, challenger {canary_records}")
    assert default_records >= 500 and canary_records >= 20

    versions = traffic["versions"]
    two = replay("--group", "default", "--version", versions["champion"], "--versions", versions["champion"], versions["challenger"])
    print(f"replay v{versions['champion']} vs v{versions['challenger']}: {two['agree']} agree, {two['disagree']} differ")
    assert two["records"] >= 500 and two["errors"] == 0
    assert two["disagree"] > 0 and two["agree"] > 0 and two["differences"]

    # Abort the canary: only the balancer changes; then the logs replayed against the running
    # stack get the very answers they logged.
    pids = {n: r["pid"] for n, r in stack.status()["processes"].items() if "replica" in n}
    groups = [dict(g) for g in TRAFFIC["groups"]]  # type: ignore[union-attr]
    groups[0]["trafficPercent"] = 0
    stack.up({"groups": groups})
    assert {n: r["pid"] for n, r in stack.status()["processes"].items() if "replica" in n} == pids
    same = replay("--group", "default", "--version", versions["champion"], "--limit", "300",
                  "--against", info(stack)["entry_url"], "--api-key", traffic["keys"]["ci"])
    print(f"replay against the running stack: {same['agree']} of {same['records']} agree")
    assert same["records"] == 300 and same["agree"] == 300 and same["disagree"] == 0
