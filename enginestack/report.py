"""`python -m enginestack report`: throughput and p99 by replica count on the Docker engine.

Each replica is held to a CPU quota (Docker --cpus, the stack key replicaCpus) meant to make the
replicas, not the load generator (wrk, on the host) or the balancer, the bottleneck: with
QUOTA = 0.1 and up to 4 replicas the replicas together get 0.4 of a core; wrk keeps
CONNECTIONS_PER_REPLICA connections open per replica. Whether the quota is small enough shows in
the table: the direct run is one replica's ceiling. So the curve shows what adding replicas
buys, not how processes fight over two cores.

On a machine with two CPUs or more the replicas run on the first CPU this process may use
(replicaCpuSet) and the balancer (balancerCpuSet) and wrk on the others (`split_cores`):
measured here, a replica at its quota that shares its core with nginx or wrk spends 15-30 %
more CPU per request than one that does not, and part of the balancer's cost against a direct
replica measured before was nginx working on the replica's core. In production the load comes
from other hosts; balancerCpuSet is what keeps the balancer off the replicas' cores there too.

Every count from 2 replicas is measured with both balancing algorithms (balancerAlgorithm),
one right after the other. A replica at its quota runs about 10 ms of each 100 ms CFS period
and is frozen for the rest; round robin keeps handing a frozen replica its share of new
requests, so the client's connections pile up behind it while the others idle (measured: each
of four replicas throttled in ~60 % of the periods instead of all of them, half the rows per
model call, twice the CPU per request). least_conn sends new requests to the replicas that
are answering. Which one a user wants is in the README ("Throughput by replica count").

At 1 replica the same load also goes straight to a replica container with the same quota and
environment (published on 127.0.0.1 for the report only, removed after), so the balancer's cost
is a ratio of two measurements of one run: pairs of runs back to back, one via nginx and one
direct, their order alternating, each run after its own warm-up like every other run (the
earlier form put a direct run between two via nginx, the second of those without a warm-up).
Each pair back to back is followed by one pair run at once (two wrk, one via nginx and one
direct, started together): runs minutes apart differ by up to 60 % here, and two loads at the
same moment meet the same machine; the two replicas' own quotas keep them from taking CPU from
each other. It is measured at BALANCER_CONNECTIONS: a replica at its quota spends more CPU per
request behind nginx than reached directly, more so with few connections: the cost grows with
the round trip (two TCP proxies in a row cost as much as nginx), and with it how often the
replica's event loop wakes (the README, "Throughput by replica count", has the counts and
what is not settled).

On this machine much of that cost is not the balancer's: its two vCPUs share a physical core's
execution resources (as SMT siblings do), so work on the balancer's CPU slows a replica running
on the other one. Measured: an idle-priority process spinning on CPU 1 raised a direct replica's
CPU per request on CPU 0 by 25 %. nginx works exactly while its replica runs (the traffic flows
only in the replica's unthrottled moments), where the direct twin's CPU 1 sees only wrk. So a
third way of pairing runs both runs while `busy_cpus` keeps the balancer's CPUs busy whenever
nginx and wrk leave them idle: both replicas then have a busy neighbour. The spinner is the
harsher neighbour (it fills every moment nginx leaves, and the direct twin's CPU 1 has more of
them), so this pairing favours the balancer, as the plain pairs favour the direct twin:
nginx's own cost lies between the two (at 32 connections the busy pairs put nginx ahead of
direct, 1.12 in the run of 2026-12-04 12:38). Pinned runs only: unpinned, the spinner would sit
on the replicas' CPUs.

The replicas poll the registry and are probed at the stack defaults (pollIntervalSeconds,
healthIntervalSeconds), not at the test stack's 2 s: at 0.1 CPU a poll every 2 s alone was ~5 %
of a replica's quota, and each probe is a process in the replica's cgroup.

Writes <out>/engine-scaling.md (table), .csv and .png. Every wrk run is bounded by its duration;
only loopback addresses are loaded. The stack (`enginetest`) is taken
down afterwards with its volumes; it holds the same lock as the engine tests.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app import contract
from enginestack.apply import EngineStack
from procstack.loadgen import iris_row_body
from procstack.report import Point, write_csv, wrk
from stackconfig.names import LABEL_STACK
from stackconfig.settings import BALANCER_ALGORITHMS, DEFAULTS

STACK = "enginetest"  # the test stack's config (stand-in images); tests and report share a lock
# CPUs of each replica. Measured here: one replica at 0.25 CPU already answers ~2,500 single-row
# requests a second (micro-batches, linear kernels), about what wrk and nginx can drive on the
# machine's other core, so 0.25 would measure them. At 0.1 four replicas need 0.4 CPU.
QUOTA = "0.1"
# Connections per replica: the offered concurrency grows with the replicas, so that each one
# sees the same queue at every count. 8, not 32: at 32 the CPU a replica held to 0.1 CPU spent
# per request wandered most between runs (70-164 us, by the containers' cpuacct).
CONNECTIONS_PER_REPLICA = 8
# The balancer's cost at one replica is measured at these connection counts, each in
# BALANCER_PAIRS pairs per round.
BALANCER_CONNECTIONS = (CONNECTIONS_PER_REPLICA, 32)
BALANCER_PAIRS = 2
# How each pair is run: one run after the other (the order alternating), both at once, and one
# after the other while the balancer's CPUs are held busy (`busy_cpus`; pinned runs only).
PAIRINGS = ("back to back", "at once", "balancer CPUs busy")
# Runs the spinner of `busy_cpus`: argv CPU, seconds at most.
_SPIN = ("import os, sys, time\n"
         "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
         "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
         "end = time.monotonic() + float(sys.argv[2])\n"
         "while time.monotonic() < end:\n"
         "    pass\n")
# The wrk targets of the table: the default algorithm keeps the name the table always had.
DEFAULT_ALGORITHM = DEFAULTS["balancerAlgorithm"]
OTHER_ALGORITHMS = tuple(a for a in BALANCER_ALGORITHMS if a != DEFAULT_ALGORITHM)


def split_cores(cpus: set[int]) -> tuple[str, str] | None:
    """(replicaCpuSet, balancerCpuSet) for these CPUs: the replicas on the lowest, the balancer
    and the load generator on the rest; None with a single CPU (nothing to split)."""
    if len(cpus) < 2:
        return None
    first, *rest = sorted(cpus)
    return str(first), ",".join(str(c) for c in rest)


@contextmanager
def busy_cpus(cpus: set[int], longest_s: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One process per CPU that spins at the idle scheduling policy (SCHED_IDLE): it runs only
    when nothing else on its CPU wants to, and yields at once to what wakes there, so it keeps
    the CPU busy without delaying nginx or wrk. Each ends after `longest_s` by itself and on
    leaving the block; yielded once every one runs at that policy on its CPU."""
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu), f"{longest_s:g}"]) for cpu in sorted(cpus)]
    try:
        end = time.monotonic() + 10
        while not all(_spinning(p.pid) for p in procs):
            if time.monotonic() > end or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"spinners on CPUs {sorted(cpus)} did not start")
            time.sleep(0.01)
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _spinning(pid: int) -> bool:
    try:
        return os.sched_getscheduler(pid) == os.SCHED_IDLE
    except ProcessLookupError:
        return False


def target(algorithm: str) -> str:
    return "nginx" if algorithm == DEFAULT_ALGORITHM else f"nginx {algorithm}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(url: str, instances: set[str], deadline_s: float = 60.0) -> None:
    seen: set[str] = set()
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while not instances <= seen and time.monotonic() < end:
            try:
                r = client.post(url, content=iris_row_body(), headers={"content-type": "application/json"})
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if r.status_code == 200:
                seen.add(r.headers.get(contract.HEADER_INSTANCE_ID, ""))
            else:
                time.sleep(0.05)
    if not instances <= seen:
        raise RuntimeError(f"not every replica answered within {deadline_s}s: saw {sorted(seen)}, want {sorted(instances)}")


def _direct(stack: EngineStack, port: int) -> Any:
    """A replica container like replica-0 (image, env, quota, CPUs), published on loopback."""
    model = stack.client.containers.get(f"mlserve-{STACK}-replica-0")
    env = [e for e in model.attrs["Config"]["Env"] if not e.startswith(f"{contract.ENV_INSTANCE_ID}=")]
    env.append(f"{contract.ENV_INSTANCE_ID}=mlserve-{STACK}-direct")
    host = model.attrs["HostConfig"]
    return stack.client.containers.run(
        model.image.id, ["python", "-m", contract.REPLICA_MODULE], name=f"mlserve-{STACK}-direct", detach=True,
        environment=env, network=f"mlserve-{STACK}", ports={f"{contract.REPLICA_PORT}/tcp": ("127.0.0.1", port)},
        nano_cpus=host["NanoCpus"], cpuset_cpus=host["CpusetCpus"] or None, mem_limit=host["Memory"], labels={LABEL_STACK: STACK},
    )


def report(max_replicas: int, duration: float, out_dir: Path, rounds: int = 3, pin: bool = True) -> list[Point]:
    if not 1 <= max_replicas <= 8 or not 1 <= duration <= 120 or not 1 <= rounds <= 9:
        raise ValueError("--max-replicas 1..8, --duration 1..120 s and --rounds 1..9")
    from enginestack import stack_lock

    with stack_lock(STACK):
        return _report(max_replicas, duration, out_dir, rounds, pin)


def _warmed(label: str, n: int, url: str, connections: int, duration: float) -> Point:
    """One wrk run after its own 2 s warm-up."""
    wrk(url, 2.0, connections)
    run = wrk(url, duration, connections)
    if run["errors"]:
        # What went wrong, in wrk's words (socket errors by kind, answers other than 2xx):
        # the table keeps only the count.
        print(f"{n} replica(s) {label}, {connections} connections: "
              + "; ".join(line.strip() for line in run["raw"].splitlines() if "Socket errors" in line or "Non-2xx" in line),
              flush=True)
    return Point.of(label, n, run)


def _median(runs: list[Point]) -> Point:
    """The run of median throughput (of an even count, the lower middle), its errors the rounds' sum."""
    mid = sorted(runs, key=lambda p: p.rps)[(len(runs) - 1) // 2]
    return Point(mid.target, mid.replicas, mid.rps, mid.p50_ms, mid.p99_ms, mid.requests, sum(p.errors for p in runs))


def _report(max_replicas: int, duration: float, out_dir: Path, rounds: int, pin: bool) -> list[Point]:
    """Every point `rounds` times, round after round (the machine's other load drifts slowly,
    and one replica's CPU per request moved by up to 40 % between single runs here); the
    table has each point's median run."""
    stack = EngineStack(STACK, log=lambda line: None)
    port = _free_port()
    config: dict[str, object | None] = {"balancerPort": port, "replicaCpus": QUOTA, "replicas": 1, "weights": [1],
                                        "pollIntervalSeconds": DEFAULTS["pollIntervalSeconds"],
                                        "healthIntervalSeconds": DEFAULTS["healthIntervalSeconds"],
                                        "balancerAlgorithm": DEFAULT_ALGORITHM}
    own_cpus = os.sched_getaffinity(0)
    cores = split_cores(own_cpus) if pin else None
    balancer_cpus = {int(c) for c in cores[1].split(",")} if cores is not None else set()
    if cores is not None:
        config.update(replicaCpuSet=cores[0], balancerCpuSet=cores[1])
        # wrk, started by this process, inherits its CPUs.
        os.sched_setaffinity(0, balancer_cpus)
    entry = f"http://127.0.0.1:{port}{contract.ROUTE_INVOCATIONS}"
    runs: dict[tuple[str, int], list[Point]] = {}
    # Per way of pairing (PAIRINGS) and connection count, throughput via nginx / direct of each pair.
    ways = PAIRINGS if cores is not None else PAIRINGS[:2]
    balancer_ratios: dict[str, dict[int, list[float]]] = {way: {c: [] for c in BALANCER_CONNECTIONS} for way in ways}
    balancer_errors = 0

    def measure(rnd: int, label: str, n: int, url: str, connections: int, record: bool = True) -> Point:
        point = _warmed(label, n, url, connections, duration)
        if record:
            runs.setdefault((label, n), []).append(point)
        print(f"round {rnd + 1}: {n} replica(s) {label}, {connections} connections: {point.rps:.0f} req/s, p99 {point.p99_ms:.1f} ms, "
              f"errors {point.errors}", flush=True)
        return point

    def at_once(rnd: int, targets: list[tuple[str, str]], connections: int) -> dict[str, Point]:
        with ThreadPoolExecutor(len(targets)) as pool:
            running = {label: pool.submit(_warmed, label, 1, url, connections, duration) for label, url in targets}
            got = {label: f.result() for label, f in running.items()}
        print(f"round {rnd + 1}: at once, {connections} connections: "
              + ", ".join(f"{label} {p.rps:.0f} req/s" for label, p in got.items()), flush=True)
        return got

    def while_busy(rnd: int, targets: list[tuple[str, str]], connections: int) -> dict[str, Point]:
        with busy_cpus(balancer_cpus, longest_s=len(targets) * (2 + duration) + 60):
            got = {label: _warmed(label, 1, url, connections, duration) for label, url in targets}
        print(f"round {rnd + 1}: balancer CPUs busy, {connections} connections: "
              + ", ".join(f"{label} {p.rps:.0f} req/s" for label, p in got.items()), flush=True)
        return got

    stack.down(purge=True)
    try:
        declared, built = stack.declare(config)
        from mockrun import run_program

        order = [DEFAULT_ALGORITHM, *OTHER_ALGORITHMS]
        for rnd in range(rounds):
            for n in range(1, max_replicas + 1):
                connections = CONNECTIONS_PER_REPLICA * n
                # One replica has nobody to choose from: the algorithms are measured from two on.
                # The order alternates from one count to the next, so the balancer is re-created
                # (its conf is an upload) once per count, not twice.
                for algorithm in order if n > 1 else [DEFAULT_ALGORITHM]:
                    config.update(replicas=n, weights=[1] * n, balancerAlgorithm=algorithm)
                    stack.apply(run_program(STACK, config, image_ids={k: b.image_id for k, b in built.items()}))
                    _wait_serving(entry, {f"mlserve-{STACK}-replica-{i}" for i in range(n)})
                    measure(rnd, target(algorithm), n, entry, connections)
                if n > 1:
                    order.reverse()
                    continue
                direct_port = _free_port()
                container = _direct(stack, direct_port)
                try:
                    url = f"http://127.0.0.1:{direct_port}{contract.ROUTE_INVOCATIONS}"
                    _wait_serving(url, {f"mlserve-{STACK}-direct"}, 180)
                    for c in BALANCER_CONNECTIONS:
                        for pair in range(BALANCER_PAIRS):
                            # Which target goes first alternates. Runs at the default connections
                            # are also the table's one-replica points.
                            targets = [(target(DEFAULT_ALGORITHM), entry), ("direct", url)]
                            in_order = targets if pair % 2 == 0 else targets[::-1]
                            back_to_back = {label: measure(rnd, label, 1, u, c, record=c == CONNECTIONS_PER_REPLICA)
                                            for label, u in in_order}
                            pairs = [back_to_back, at_once(rnd, targets, c)]
                            if cores is not None:
                                pairs.append(while_busy(rnd, in_order, c))
                            for way, got in zip(ways, pairs, strict=True):
                                via, direct = got[target(DEFAULT_ALGORITHM)], got["direct"]
                                balancer_ratios[way][c].append(via.rps / direct.rps)
                                balancer_errors += via.errors + direct.errors
                finally:
                    container.remove(force=True)
    finally:
        os.sched_setaffinity(0, own_cpus)
        stack.down(purge=True)
    points = [_median(r) for r in runs.values()]
    _write(points, out_dir, duration, rounds,
           {way: {c: sorted(r) for c, r in by_c.items()} for way, by_c in balancer_ratios.items()}, balancer_errors, cores)
    return points


def _write(points: list[Point], out_dir: Path, duration: float, rounds: int,
           balancer_ratios: dict[str, dict[int, list[float]]], balancer_errors: int, cores: tuple[str, str] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(points, out_dir / "engine-scaling.csv")
    via = [p for p in points if p.target == "nginx"]
    one = via[0]
    # One replica is the same point for every algorithm: each curve starts from it.
    curves = {DEFAULT_ALGORITHM: via, **{a: [one, *(p for p in points if p.target == target(a))] for a in OTHER_ALGORITHMS}}
    colors = dict(zip(curves, ("tab:blue", "tab:green", "tab:purple"), strict=False))
    direct = next(p for p in points if p.target == "direct")
    lines = [
        f"Docker engine, each replica held to {QUOTA} CPU (--cpus); {_where(cores)}; wrk with {CONNECTIONS_PER_REPLICA} connections per replica, {duration:g} s per run,"
        f" the median of {rounds} rounds; single-row iris POST /invocations to the balancer published on 127.0.0.1;"
        f" target nginx: balancerAlgorithm {DEFAULT_ALGORITHM} (the default)"
        + "".join(f", {target(a)}: balancerAlgorithm {a}" for a in OTHER_ALGORITHMS),
        "",
        "| replicas | target | req/s | x 1 replica | / linear | p50 ms | p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        scale = p.rps / one.rps
        lines.append(f"| {p.replicas} | {p.target} | {p.rps:.0f} | {scale:.2f} | {scale / p.replicas:.2f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.errors} |")
    lines += ["", "Balancer cost at 1 replica, throughput via nginx / direct (pairs of warmed runs, median [min..max] of"
              " the pairs): " + "; ".join(way + ", " + ", ".join(f"{c} connections {statistics.median(r):.2f} [{r[0]:.2f}..{r[-1]:.2f}] of {len(r)}"
                                                                  for c, r in by_c.items())
                                          for way, by_c in balancer_ratios.items())
              + f"; errors {balancer_errors}; p99 via nginx / direct at {CONNECTIONS_PER_REPLICA} connections = {one.p99_ms / direct.p99_ms:.2f}"]
    if PAIRINGS[2] in balancer_ratios:
        lines.append(f"{PAIRINGS[2]}: both runs while a process at the idle scheduling policy spins on the balancer's CPUs,"
                     " yielding to nginx and wrk: where CPUs share a physical core, nginx's work slows the replica beside it"
                     " while the direct twin's neighbour idles. The spinner is the harsher neighbour, so these pairs favour"
                     " nginx, as the others favour direct; nginx's own cost lies between"
                     " (README, \"Throughput by replica count\").")
    last = via[-1].replicas
    lines.append(f"At {last} replicas, of linear (n x 1 replica via nginx): " + ", ".join(
        f"{a} {curve[-1].rps / (one.rps * last):.2f}" for a, curve in curves.items() if curve[-1].replicas == last))
    text = "\n".join(lines) + "\n"
    (out_dir / "engine-scaling.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p.replicas for p in via]
    ax1.plot(xs, [one.rps * x for x in xs], ":", color="gray", label="linear (n x 1 replica)")
    ax1.plot(xs, [0.8 * one.rps * x for x in xs], "--", color="lightgray", label="0.8 x linear")
    for algorithm, curve in curves.items():
        ax1.plot([p.replicas for p in curve], [p.rps for p in curve], "o-", color=colors[algorithm], label=f"via nginx, {algorithm}")
    ax1.plot([1], [direct.rps], "s", color="tab:orange", label="one replica direct")
    ax1.set_xlabel("replicas")
    ax1.set_ylabel("requests/s")
    ax1.set_xticks(xs)
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title(f"throughput, each replica limited to {QUOTA} CPU")
    for algorithm, curve in curves.items():
        ax2.plot([p.replicas for p in curve], [p.p99_ms for p in curve], "^-", color=colors[algorithm], label=f"via nginx, {algorithm}")
    ax2.plot([1], [direct.p99_ms], "s", color="tab:orange", label="one replica direct")
    ax2.set_xlabel("replicas")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_xticks(xs)
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    ax2.set_title(f"p99 latency, wrk {CONNECTIONS_PER_REPLICA} connections per replica")
    fig.suptitle(f"Docker engine: each replica limited to --cpus {QUOTA}; {_where(cores)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "engine-scaling.png", dpi=110)
    plt.close(fig)


def _where(cores: tuple[str, str] | None) -> str:
    if cores is None:
        return f"replicas, nginx and wrk share the host's {os.cpu_count()} CPU(s)"
    return f"replicas on CPU {cores[0]} (replicaCpuSet), nginx (balancerCpuSet) and wrk on CPU {cores[1]}"
