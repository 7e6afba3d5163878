"""Requests through nginx reach every replica, split by the configured weights."""

from __future__ import annotations

import csv
import time

import pytest

from app import contract
from procstack.loadgen import run_for
from stackconfig.names import ROLE_REPLICA

from .helpers import binomial_bound, declared, info

pytestmark = pytest.mark.e2e


def test_every_replica_serves_and_the_split_follows_the_weights(stack):
    replicas = [s for s in declared(stack) if s.role == ROLE_REPLICA]
    assert len(replicas) == 3, [s.name for s in replicas]
    weights = {s.name: s.weight for s in replicas}
    assert sorted(weights.values()) == [1, 1, 3]

    run = run_for(info(stack)["entry_url"], seconds=20, concurrency=4, max_requests=600)

    assert not run.failures, run.failures[:5]
    n = len(run.answers)
    assert n >= 200, f"only {n} answers in 20 s"
    seen = run.instances()
    assert set(seen) == set(weights), f"answers came from {dict(seen)}, replicas are {sorted(weights)}"
    total = sum(weights.values())
    for name, weight in weights.items():
        expected = n * weight / total
        assert abs(seen[name] - expected) <= binomial_bound(n, weight / total), (
            f"{name} (weight {weight}) got {seen[name]} of {n}, expected {expected:.0f}"
        )


def test_headless_locust_load_is_bounded_and_fails_nothing(stack, tmp_path):
    from procstack.load import run_locust

    started = time.monotonic()
    rc = run_locust(info(stack)["entry_url"], users=4, spawn_rate=4, run_time="5s", csv_prefix=str(tmp_path / "locust"))
    elapsed = time.monotonic() - started
    assert rc == 0
    assert elapsed < 5 + 30, f"the bounded run took {elapsed:.0f}s"
    rows = {r["Name"]: r for r in csv.DictReader(open(tmp_path / "locust_stats.csv"))}
    row = rows[contract.ROUTE_INVOCATIONS]
    assert int(row["Request Count"]) > 50, row
    assert int(row["Failure Count"]) == 0, row
