"""Requests through nginx reach every replica, split by the configured weights."""

from __future__ import annotations

import pytest

from localstack import translate as tr
from localstack.loadgen import run_for

from .helpers import binomial_bound, declared, info

pytestmark = pytest.mark.e2e


def test_every_replica_serves_and_the_split_follows_the_weights(stack):
    replicas = [s for s in declared(stack) if s.kind == tr.REPLICA]
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
