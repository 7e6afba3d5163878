"""Scale 3 -> 5 -> 3 under load: new replicas get traffic, removed ones are stopped, the others
and nginx are left alone (no reload), and no request fails."""

from __future__ import annotations

import time

import pytest

from nginx.render import RESOLVER_VALID_S
from procstack import procs
from stackconfig.names import ROLE_REPLICA

from .conftest import START_OVERRIDES
from .helpers import declared, info, nginx_pids

pytestmark = pytest.mark.e2e

SCALED = {"replicas": 5, "weights": [1, 1, 3, 1, 1]}


def test_scale_out_under_load_adds_replicas_without_reload_or_failure(stack):
    before = info(stack)
    assert len(before["replicas"]) == 3
    pids_before = {n: r["pid"] for n, r in stack.status()["processes"].items() if r.get("pid")}
    nginx_before = nginx_pids(stack)
    assert len(nginx_before) >= 2, "expected an nginx master and at least one worker"

    from procstack.loadgen import Load

    # Bounded: the scale-out (two replica starts) plus the resolver's valid= and a margin.
    load = Load(before["entry_url"], concurrency=4, max_requests=50_000, max_seconds=240).start()
    try:
        stack.up(SCALED)
        scaled_at = load.elapsed()
        new = set(info(stack)["replicas"]) - set(before["replicas"])
        assert len(new) == 2, new
        deadline = time.monotonic() + RESOLVER_VALID_S + 20
        while time.monotonic() < deadline and not new <= set(load.run.instances(since=scaled_at)):
            time.sleep(0.2)
    finally:
        run = load.stop()

    assert not run.failures, f"{len(run.failures)} failed requests, e.g. {run.failures[:3]}"
    served_after = run.instances(since=scaled_at)
    assert new <= set(served_after), f"new replicas {sorted(new)} got no traffic; served: {dict(served_after)}"
    # Nothing that ran was restarted: same pids for every old process, nginx master and workers.
    pids_after = {n: r["pid"] for n, r in stack.status()["processes"].items() if r.get("pid")}
    assert {n: pids_after.get(n) for n in pids_before} == pids_before
    assert nginx_pids(stack) == nginx_before, "nginx was reloaded or restarted"
    assert sorted(s.name for s in declared(stack) if s.role == ROLE_REPLICA) == sorted(info(stack)["replicas"])


def test_scale_in_under_load_stops_only_the_removed_replicas_without_failure(stack):
    before = info(stack)
    assert len(before["replicas"]) == 5
    pids_before = {n: r["pid"] for n, r in stack.status()["processes"].items() if r.get("pid")}
    nginx_before = nginx_pids(stack)

    from procstack.loadgen import Load

    load = Load(before["entry_url"], concurrency=4, max_requests=50_000, max_seconds=120).start()
    try:
        stack.up(START_OVERRIDES)
        scaled_at = load.elapsed()
        # Past the resolver's valid= the removed replicas cannot be chosen any more.
        while load.elapsed() < scaled_at + RESOLVER_VALID_S + 3:
            time.sleep(0.2)
    finally:
        run = load.stop()

    removed = set(before["replicas"]) - set(info(stack)["replicas"])
    assert len(removed) == 2, removed
    assert not run.failures, f"{len(run.failures)} failed requests, e.g. {run.failures[:3]}"
    for name in removed:
        assert not procs.alive(pids_before[name])
    kept = {n: p for n, p in pids_before.items() if n not in removed}
    assert {n: stack.status()["processes"][n]["pid"] for n in kept} == kept
    assert nginx_pids(stack) == nginx_before, "nginx was reloaded or restarted"
    late = run.instances(since=scaled_at + RESOLVER_VALID_S + 1)
    assert late and not removed & set(late), dict(late)
