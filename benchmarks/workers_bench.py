"""Throughput per CPU of a replica of several serving processes (MLSERVE_WORKERS), side by side.

Default (`per-cpu`), the issue's comparison on two cores:
  replica A: one process, in a cgroup limited to 0.5 CPU; replica B: two processes, in a
  cgroup limited to 1 CPU; both pinned to core 0, with wrk on core 1. They take turns,
  round after round (A, B, A, B, ...; the machine's other load drifts slowly), and each
  round's B/A ratio is printed: with the CPU doubled and a process per CPU, B should serve
  at least 1.8 times what A serves.

Two controls run in the same rounds (`--no-controls` skips them), both limited to 1 CPU on
  core 0: one process with the core to itself and half the connections (as many as each of
  B's processes gets, so its model calls hold as many rows), and two independent one-process
  replicas sharing the core, each loaded by its own wrk with half the connections (time-
  sharing one core, without the replica's supervisor). B against them tells what two
  processes on one core cost apart from batching.

`--spread`: the same A and B with the replicas and wrk free to run on every core, so that
  B's two processes can each have a core of their own (what a replica with two CPUs gets on a
  host with idle cores) instead of taking turns on core 0; wrk then shares the cores with
  both alike.

`--scaling 1 2 4 8`: replicas of N processes limited to N CPUs and pinned to cores 0..N-1,
  wrk on the cores after them, taking turns; prints each N's req/s over N times the
  one-process figure (the target: at least 0.8). Counts that do not fit the machine (N
  cores for the replica plus load cores) are skipped, and said so.

The limit is the one Docker's `--cpus` sets: a cgroup CFS quota (procstack/cgroup.py), so
this needs root. The model is the iris LogisticRegression trained by `python -m app.trainer`
(single-row `dataframe_split` requests, as in replica_bench.py). Traffic goes to 127.0.0.1
only; every process and cgroup it makes is removed in `finally`.

    sudo .venv/bin/python benchmarks/workers_bench.py [--rounds 5] [--duration 10] [--connections 32]
    sudo .venv/bin/python benchmarks/workers_bench.py --spread
    sudo .venv/bin/python benchmarks/workers_bench.py --scaling 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import contract  # noqa: E402
from benchmarks.replica_bench import ALIAS, BODY, MODEL, check_answer, parse_wrk  # noqa: E402
from procstack import solo as rp  # noqa: E402
from procstack.cgroup import CgroupUnavailable, CpuLimit, available  # noqa: E402

# wrk's cgroup (no limit, the weight of the replicas'): the load must not be what runs short.
LOAD: CpuLimit | None = None


def wrk(url: str, cores: str, threads: int, connections: int, duration: float, script: Path) -> dict[str, float]:
    cmd = [*(LOAD.prefix() if LOAD else []), "taskset", "-c", cores, "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    return parse_wrk(out)


def _batches(p: rp.Proc) -> tuple[float, float]:
    """(rows, model calls) so far, from the replica's /metrics."""
    text = rp.http_get(p.url + contract.ROUTE_METRICS, timeout=30)[1].decode()
    vals = dict(line.rsplit(" ", 1) for line in text.splitlines()
                if line.startswith(("mlserve_replica_batch_rows_sum ", "mlserve_replica_batch_rows_count ")))
    return float(vals.get("mlserve_replica_batch_rows_sum", 0)), float(vals.get("mlserve_replica_batch_rows_count", 0))


def cpu_seconds(p: rp.Proc) -> float:
    """CPU time used so far by the process and its descendants (utime + stime)."""
    total = 0
    for pid in rp._descendants(p.popen.pid) if p.popen else []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


class Contender:
    """One replica of `workers` processes, or with `replicas` > 1 that many independent
    one-process replicas sharing the limit and the cores, each loaded by its own wrk with an
    equal share of the connections, at the same time (a control: time-sharing without the
    replica's supervisor)."""

    def __init__(self, label: str, workers: int, cpus: float, cores: str, load_cores: str, load_threads: int,
                 connections: int, replicas: int = 1) -> None:
        self.label, self.workers, self.cpus, self.cores = label, workers, cpus, cores
        self.load_cores, self.load_threads, self.connections = load_cores, load_threads, connections
        self.replicas = replicas
        self.limit: CpuLimit | None = None
        self.weight: int | None = None
        self.procs: list[rp.Proc] = []
        self.runs: list[dict[str, float]] = []

    def start(self, tracking: str, tmp: Path) -> None:
        self.limit = CpuLimit(f"mlserve-bench-{os.getpid()}-{self.label}", self.cpus, weight=self.weight)
        for _ in range(self.replicas):
            proc = rp.start_replica(tracking, MODEL, ALIAS, tmp, cpus=self.cores, prefix=self.limit.prefix(),
                                    **{contract.ENV_WORKERS: str(self.workers), contract.ENV_POLL_INTERVAL_S: "30",
                                       contract.ENV_LOG_LEVEL: "warning"})
            self.procs.append(proc)
            check_answer(self.label, proc.url)

    def _load(self, duration: float, script: Path) -> list[dict[str, float]]:
        """wrk against every replica at once, the connections split evenly."""
        connections = self.connections // len(self.procs)
        with ThreadPoolExecutor(len(self.procs)) as pool:
            return list(pool.map(lambda p: wrk(p.url + contract.ROUTE_INVOCATIONS, self.load_cores,
                                               self.load_threads, connections, duration, script), self.procs))

    def measure(self, duration: float, warmup: float, script: Path) -> dict[str, float]:
        assert self.procs and self.limit is not None
        self._load(warmup, script)
        before, cpu0 = self.limit.stats(), sum(cpu_seconds(p) for p in self.procs)
        b0 = [_batches(p) for p in self.procs]
        each = self._load(duration, script)
        after, cpu1 = self.limit.stats(), sum(cpu_seconds(p) for p in self.procs)
        b1 = [_batches(p) for p in self.procs]
        rows, calls = (sum(b[i] - a[i] for a, b in zip(b0, b1, strict=True)) for i in (0, 1))
        r = {"rps": sum(e["rps"] for e in each), "p50": max(e["p50"] for e in each),
             "p99": max(e["p99"] for e in each), "non2xx": sum(e["non2xx"] for e in each)}
        r["rows_per_call"] = rows / calls if calls else 0.0
        periods = after.get("nr_periods", 0) - before.get("nr_periods", 0)
        r["throttled_share"] = (after.get("nr_throttled", 0) - before.get("nr_throttled", 0)) / periods if periods else 0.0
        r["cpus_used"] = (cpu1 - cpu0) / duration
        r["cpu_us_per_request"] = 1e6 * (cpu1 - cpu0) / (r["rps"] * duration) if r["rps"] else 0.0
        r["pss_mb"] = sum(p.pss_bytes() for p in self.procs) / 2**20
        self.runs.append(r)
        return r

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self.limit is not None:
            self.limit.remove()


def _line(c: Contender, r: dict[str, float], rnd: int) -> str:
    return (f"{c.label:>10s} round {rnd + 1}: {r['rps']:9.0f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms"
            f"  CPUs used {r['cpus_used']:4.2f}/{c.cpus:g}  throttled {100 * r['throttled_share']:3.0f}% of periods"
            f"  rows/call {r['rows_per_call']:4.1f}  CPU/request {r['cpu_us_per_request']:5.1f} us"
            f"  PSS {r['pss_mb']:6.0f} MiB  non-2xx {int(r['non2xx'])}")


def _per_round(num: Contender, den: Contender) -> list[float]:
    """Each round's throughput of `num` over `den` (their runs of a round are back to back)."""
    return [r["rps"] / b["rps"] for r, b in zip(num.runs, den.runs, strict=True)]


def _mid_range(xs: list[float], after_median: str = "") -> str:
    return f"{statistics.median(xs):.2f}{after_median} [{min(xs):.2f}..{max(xs):.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (per process with --scaling)")
    ap.add_argument("--scaling", type=int, nargs="+", help="process counts to compare at one CPU each")
    ap.add_argument("--weight", type=int, default=1000,
                    help="CPU weight of the replicas' cgroups (100: like everything else; the default lets each "
                         "take its whole limit on a machine shared with other work, which then waits)")
    ap.add_argument("--spread", action="store_true",
                    help="per-cpu only: the replicas and wrk on every core instead of core 0 and core 1 (no controls)")
    ap.add_argument("--no-controls", action="store_true",
                    help="per-cpu only: skip the two control contenders (see the module's docstring)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("needs wrk and taskset on PATH", file=sys.stderr)
        return 2
    if not available():
        print("needs root and a cgroup cpu controller (the CPU limit is a cgroup CFS quota, as docker --cpus)",
              file=sys.stderr)
        return 2
    cores = len(os.sched_getaffinity(0))
    contenders: list[Contender] = []
    controls: list[Contender] = []
    if args.scaling:
        for n in sorted(set(args.scaling)):
            load = max(1, (n + 1) // 2)  # wrk needs about one core per two replica processes here
            if n + load > cores:
                print(f"skipped: {n} processes need {n} cores plus {load} for wrk; this machine has {cores}")
                continue
            contenders.append(Contender(f"{n}proc", n, float(n), f"0-{n - 1}", f"{n}-{n + load - 1}", load,
                                        args.connections * n))
        if not contenders:
            return 2
    else:
        if cores < 2:
            print("needs two cores (replicas on core 0, wrk on core 1)", file=sys.stderr)
            return 2
        # --spread: the replicas and wrk on every core, so that B's processes need not take
        # turns on one core (the scheduler gives each its own while wrk leaves room).
        cores_all = f"0-{cores - 1}"
        rep_cores, load_cores, load_threads = (cores_all, cores_all, cores) if args.spread else ("0", "1", 1)
        contenders = [Contender("1proc@0.5", 1, 0.5, rep_cores, load_cores, load_threads, args.connections),
                      Contender("2proc@1.0", 2, 1.0, rep_cores, load_cores, load_threads, args.connections)]
        if not args.no_controls and not args.spread:
            half = args.connections // 2
            controls = [Contender(f"1proc@1.0-c{half}", 1, 1.0, "0", "1", 1, half),
                        Contender("2x1proc@1.0", 1, 1.0, "0", "1", 1, args.connections, replicas=2)]
            contenders += controls

    global LOAD
    for c in contenders:
        c.weight = args.weight
    tmp = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\n' f"wrk.body = {json.dumps(BODY)}\n"
                      'wrk.headers["Content-Type"] = "application/json"\n')
    tracking: rp.Proc | None = None
    try:
        LOAD = CpuLimit(f"mlserve-bench-{os.getpid()}-load", None, weight=args.weight)
        tracking = rp.start_tracking_server(tmp / "mlflow")
        trained = rp.train(tracking.url, MODEL, ALIAS)
        print(f"model: {MODEL} version {trained['version']}; {cores} cores", flush=True)
        for c in contenders:
            c.start(tracking.url, tmp)
        for rnd in range(args.rounds):
            for c in contenders:
                print(_line(c, c.measure(args.duration, args.warmup, script), rnd), flush=True)
    except CgroupUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        for c in contenders:
            c.stop()
        if tracking is not None:
            tracking.stop()
        if LOAD is not None:
            LOAD.remove()
    results: dict[str, Any] = {c.label: {k: statistics.median(r[k] for r in c.runs) for k in c.runs[0]}
                               for c in contenders}
    print(f"\nmedians of {args.rounds} rounds of {args.duration:g} s:")
    for c in contenders:
        m = results[c.label]
        print(f"  {c.label:>10s} {m['rps']:9.0f} req/s = {m['rps'] / c.cpus:9.0f} per CPU  p99 {m['p99']:7.2f} ms"
              f"  PSS {m['pss_mb']:6.0f} MiB")
    base = contenders[0]
    print("per-round ratios (runs of a round are back to back), median [min..max]:")
    ratios: dict[str, float] = {}
    for c in contenders[1:]:
        per_round = _per_round(c, base)
        scale = c.cpus / base.cpus
        ratios[c.label] = statistics.median(per_round)
        print(f"  {c.label} / {base.label}: req/s x{_mid_range(per_round)} with x{scale:g} the CPU: "
              f"{_mid_range([x / scale for x in per_round], ' of linear')}")
    if controls:
        # What the controls say about B, the two-process replica: against one process with the
        # core to itself and the connections one of B's processes gets, and against two
        # independent replicas time-sharing the core (no supervisor).
        two = contenders[1]
        for c in controls:
            per_round = _per_round(two, c)
            ratios[f"{two.label}/{c.label}"] = statistics.median(per_round)
            print(f"  {two.label} / {c.label}: req/s x{_mid_range(per_round)}")
    results["ratios"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
