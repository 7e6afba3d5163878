"""The engine report's arithmetic (no engine needed): medians of the rounds, one curve per
balancing algorithm that starts from the one-replica point, and the balancer's cost."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from enginestack import report
from procstack.report import Point


def _p(target: str, n: int, rps: float, errors: int = 0) -> Point:
    return Point(target, n, rps, 1.0, 90.0 + rps / 1000, 1000, errors)


def test_a_point_is_its_median_run_and_counts_every_rounds_errors() -> None:
    runs = [_p("nginx", 2, 900, errors=1), _p("nginx", 2, 2000), _p("nginx", 2, 1100, errors=2)]
    median = report._median(runs)
    assert (median.rps, median.p99_ms, median.errors) == (1100, 91.1, 3)
    # Of an even count, the lower middle: never a figure no run measured.
    assert report._median(runs[:2]).rps == 900


def test_replicas_get_the_first_cpu_and_the_balancer_and_wrk_the_rest() -> None:
    assert report.split_cores({0, 1}) == ("0", "1")
    assert report.split_cores({3, 5, 4, 7}) == ("3", "4,5,7")
    assert report.split_cores({2}) is None


def test_the_table_has_every_algorithm_against_linear_and_the_balancers_cost(tmp_path: Path) -> None:
    other = report.OTHER_ALGORITHMS[0]
    assert report.target(report.DEFAULT_ALGORITHM) == "nginx"
    assert report.target(other) == f"nginx {other}"
    points = [_p("nginx", 1, 1000), _p("direct", 1, 1100),
              _p("nginx", 2, 1500), _p(report.target(other), 2, 1900),
              _p("nginx", 3, 1800), _p(report.target(other), 3, 2700)]
    few, many = report.BALANCER_CONNECTIONS
    back_to_back, at_once, busy = report.PAIRINGS
    report._write(points, tmp_path, 8, 3, {back_to_back: {few: [0.6, 0.7, 0.8, 0.9], many: [0.9, 0.95, 1.0]},
                                           at_once: {few: [0.8, 0.85, 0.9], many: [0.88, 0.92]},
                                           busy: {few: [0.93, 0.97], many: [1.0]}}, 2, ("0", "1"))
    table = (tmp_path / "engine-scaling.md").read_text()
    assert "replicas on CPU 0 (replicaCpuSet), nginx (balancerCpuSet) and wrk on CPU 1;" in table.splitlines()[0]
    assert f"| 3 | nginx {other} | 2700 | 2.70 | 0.90 |" in table
    assert "| 3 | nginx | 1800 | 1.80 | 0.60 |" in table
    # Of an even count of pairs, statistics' median: the mean of the middle two.
    assert (f"{back_to_back}, {few} connections 0.75 [0.60..0.90] of 4, {many} connections 0.95 [0.90..1.00] of 3;"
            f" {at_once}, {few} connections 0.85 [0.80..0.90] of 3, {many} connections 0.90 [0.88..0.92] of 2;"
            f" {busy}, {few} connections 0.95 [0.93..0.97] of 2, {many} connections 1.00 [1.00..1.00] of 1; errors 2;") in table
    assert f"\n{busy}: both runs while a process at the idle scheduling policy spins on the balancer's CPUs" in table
    assert f"At 3 replicas, of linear (n x 1 replica via nginx): {report.DEFAULT_ALGORITHM} 0.60, {other} 0.90" in table
    assert (tmp_path / "engine-scaling.png").stat().st_size > 0
    assert (tmp_path / "engine-scaling.csv").read_text().count("\n") == len(points) + 1


def test_a_run_with_errors_prints_what_wrk_said_of_them(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    raw = ("Running 8s test @ http://127.0.0.1:1/invocations\n  2 threads and 16 connections\n"
           "  4192 requests in 8.00s, 1.2MB read\n  Socket errors: connect 0, read 0, write 0, timeout 12\n"
           "  Non-2xx or 3xx responses: 4\nRequests/sec:    524.00\n")
    calls: list[float] = []

    def fake_wrk(url: str, seconds: float, connections: int) -> dict[str, Any]:
        calls.append(seconds)
        return {"rps": 524.0, "p50_ms": 15.2, "p99_ms": 151.2, "requests": 4192, "errors": 16, "raw": raw}

    monkeypatch.setattr(report, "wrk", fake_wrk)
    point = report._warmed("nginx", 2, "http://127.0.0.1:1/invocations", 16, 8.0)
    assert calls == [2.0, 8.0] and (point.rps, point.errors) == (524.0, 16)
    assert capsys.readouterr().out == ("2 replica(s) nginx, 16 connections: Socket errors: connect 0, read 0, write 0, timeout 12;"
                                       " Non-2xx or 3xx responses: 4\n")
    # A clean run prints nothing of its own.
    monkeypatch.setattr(report, "wrk", lambda url, seconds, connections: {**fake_wrk(url, seconds, connections), "errors": 0})
    report._warmed("direct", 1, "http://127.0.0.1:1/invocations", 8, 8.0)
    assert capsys.readouterr().out == ""


def test_an_unpinned_report_has_no_busy_pairs_nor_says_what_they_are(tmp_path: Path) -> None:
    back_to_back, at_once, busy = report.PAIRINGS
    points = [_p("nginx", 1, 1000), _p("direct", 1, 1100)]
    report._write(points, tmp_path, 8, 1, {back_to_back: {8: [0.9]}, at_once: {8: [0.8]}}, 0, None)
    assert busy not in (tmp_path / "engine-scaling.md").read_text()


def test_busy_cpus_spin_at_the_idle_policy_on_their_cpu_and_stop_on_leaving_and_by_themselves() -> None:
    cpu = min(os.sched_getaffinity(0))
    with report.busy_cpus({cpu}, longest_s=60) as procs:
        assert len(procs) == 1
        pid = procs[0].pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(pid) == {cpu}
        assert procs[0].poll() is None
    assert procs[0].returncode is not None
    with report.busy_cpus({cpu}, longest_s=1.0) as procs:
        deadline = time.monotonic() + 30
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs[0].returncode == 0  # ended by its own deadline, not killed
