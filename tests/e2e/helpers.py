"""Shared checks of the e2e tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from procstack import translate as tr
from procstack.stack import LocalStack
from stackconfig.names import ROLE_BALANCER


def info(stack: LocalStack) -> dict[str, Any]:
    status = stack.status()
    assert status["entry_url"], f"no entry URL: {status}"
    return status


def declared(stack: LocalStack) -> list[tr.Service]:
    """What the program declares for the stack's current config (via the mock run)."""
    return stack.declared(stack.state["overrides"])


def settings_of_stack(stack: LocalStack) -> Any:
    """The program's own validated settings for the stack's current config."""
    from mockrun import run_program

    return run_program(stack.stack, stack.state["overrides"]).settings()


def service(stack: LocalStack, role: str) -> tr.Service:
    found = [s for s in declared(stack) if s.role == role]
    assert len(found) == 1, f"expected one {role} container, got {[s.name for s in found]}"
    return found[0]


def binomial_bound(n: int, p: float, sigmas: float = 4.0) -> float:
    """Allowed |observed - n p| for one replica's share: `sigmas` standard deviations of a
    binomial(n, p), plus one request of slack. nginx's weighted round robin is far tighter than
    random; the bound stays loose enough for retries and the two workers' interleaving."""
    return sigmas * math.sqrt(n * p * (1 - p)) + 1


def balancer_log_entries(stack: LocalStack) -> list[dict[str, Any]]:
    """The balancer's JSON access log lines (the conf logs to stdout, the runner to this file)."""
    name = next(n for n, r in stack.status()["processes"].items() if r["role"] == ROLE_BALANCER)
    entries = []
    for line in Path(stack.paths.log(name)).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def nginx_pids(stack: LocalStack) -> set[int]:
    """The balancer's master and worker pids (a reload replaces the workers)."""
    master = next(r["pid"] for r in stack.status()["processes"].values() if r["role"] == ROLE_BALANCER)
    pids = {master}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids
