"""A replica killed under load: no client request fails, and nginx stops sending to it."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from nginx.render import ACCESS_LOG_FLUSH_S
from procstack import procs
from procstack.loadgen import Load
from stackconfig.names import ROLE_REPLICA

from .helpers import balancer_log_entries, info, settings_of_stack

pytestmark = pytest.mark.e2e

LOAD_S = 12.0
KILL_AT_S = 3.0


def test_killed_replica_costs_no_request_and_gets_no_more_traffic(stack):
    status = info(stack)
    victim = max(status["replicas"], key=lambda n: status["replicas"][n]["weight"])  # the busiest
    record = stack.status()["processes"][victim]
    assert record["state"] == "running"
    victim_addr = status["replicas"][victim]["url"].split("//", 1)[1]
    log_lines_before = len(balancer_log_entries(stack))

    load = Load(status["entry_url"], concurrency=4, max_requests=20_000, max_seconds=LOAD_S).start()
    deadline = time.monotonic() + KILL_AT_S
    while time.monotonic() < deadline and not load.run.instances().get(victim):
        time.sleep(0.1)
    assert load.run.instances().get(victim), "the victim served nothing before the kill"
    while load.elapsed() < KILL_AT_S:
        time.sleep(0.05)
    os.kill(record["pid"], signal.SIGKILL)  # no graceful shutdown: a crash
    killed_at = load.elapsed()
    run = load.wait()

    assert not procs.alive(record["pid"])
    assert not run.failures, f"{len(run.failures)} failed requests, e.g. {run.failures[:3]}"
    after = [a for a in run.answers if a.t > killed_at + 0.5]
    assert len(after) > 100, f"too little load after the kill ({len(after)} answers)"
    assert victim not in {a.instance for a in after}
    # nginx's view. Before the kill the victim's attempts succeed (one upstream address);
    # after it, every attempt on it fails and is passed to another replica ("dead, other").
    # With max_fails=1 a failure takes the victim out for fail_timeout, and the DNS stand-in
    # drops a dead process's address (as Docker's DNS does) within the resolver's valid=:
    # so the failed attempts are bounded by the in-flight requests per window.
    # The access log is buffered (nginx/render.py): its lines arrive within the flush interval.
    deadline = time.monotonic() + ACCESS_LOG_FLUSH_S + 10
    entries = balancer_log_entries(stack)[log_lines_before:]
    while len(entries) < len(run.answers) * 0.9 and time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval
        entries = balancer_log_entries(stack)[log_lines_before:]
    assert len(entries) >= len(run.answers) * 0.9, "the access log misses requests"
    failed_on_victim = [e for e in entries if victim_addr in e.get("upstream_addr", "") and "," in e["upstream_addr"]]
    fail_timeout = settings_of_stack(stack).balancer.fail_timeout_s
    windows = 1 + math.ceil((LOAD_S - KILL_AT_S) / fail_timeout)
    assert len(failed_on_victim) <= load.concurrency * windows, (
        f"nginx tried the dead replica {len(failed_on_victim)} times after the kill"
    )
    assert all(victim_addr not in e.get("upstream_addr", "") for e in entries[-100:]), "still sending to the dead replica"
    print(
        f"\nkilled {victim} at {killed_at:.1f}s: {len(run.answers)} answers, 0 failed; nginx tried the dead "
        f"replica {len(failed_on_victim)} times (each passed on to another replica)"
    )

    # `up` again, as Docker's restart policy would: the dead replica (only) is started again.
    others = {n: r["pid"] for n, r in stack.status()["processes"].items() if n != victim and r.get("pid")}
    stack.up()
    after_up = stack.status()["processes"]
    assert after_up[victim]["state"] == "running"
    assert {n: after_up[n]["pid"] for n in others} == others


def test_dead_replica_is_marked_dead_by_status(stack):
    # The previous test brought the stack back; every replica runs.
    rows = stack.status()["processes"]
    assert all(r["state"] == "running" for r in rows.values() if r["role"] == ROLE_REPLICA)
