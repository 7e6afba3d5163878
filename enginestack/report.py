"""`python -m enginestack report`: throughput and p99 by replica count on the Docker engine.

Each replica is held to a CPU quota (Docker --cpus, the stack key replicaCpus) meant to make the
replicas, not the load generator (wrk, on the host) or the balancer, the bottleneck: with
QUOTA = 0.1 and up to 4 replicas the replicas together get 0.4 of the machine's two cores and wrk
and nginx the rest; wrk keeps CONNECTIONS_PER_REPLICA connections open per replica. Whether the
quota is small enough shows in the table: the direct run is one replica's ceiling. So the curve shows what adding replicas buys, not how processes fight over two cores.
At 1 replica the same load also goes straight to a replica container with the same quota and
environment (published on 127.0.0.1 for the report only, removed after), so the balancer's cost
is a ratio of two measurements of one run.

Writes <out>/engine-scaling.md (table), .csv and .png. Every wrk run is bounded by its duration;
only loopback addresses are loaded. The stack (`enginetest`) is taken
down afterwards with its volumes; it holds the same lock as the engine tests.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx

from app import contract
from enginestack.apply import EngineStack
from procstack.loadgen import iris_row_body
from procstack.report import Point, write_csv, wrk
from stackconfig.names import LABEL_STACK

STACK = "enginetest"  # the test stack's config (stand-in images); tests and report share a lock
# CPUs of each replica. Measured here: one replica at 0.25 CPU already answers ~2,500 single-row
# requests a second (micro-batches, linear kernels), about what wrk and nginx can drive on the
# machine's other core, so 0.25 would measure them. At 0.1 four replicas need 0.4 CPU.
QUOTA = "0.1"
# Connections per replica: the offered concurrency grows with the replicas, so that each one
# sees the same queue at every count. 8, not 32: at 32 the CPU a replica held to 0.1 CPU spent
# per request wandered most between runs (70-164 us, by the containers' cpuacct). It still
# grows as replicas are added (each one's fixed background work and smaller micro-batches:
# README, "Throughput by replica count"), which is why the curve falls short of linear here.
CONNECTIONS_PER_REPLICA = 8


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
    """A replica container like replica-0 (image, env, quota), published on loopback."""
    model = stack.client.containers.get(f"mlserve-{STACK}-replica-0")
    env = [e for e in model.attrs["Config"]["Env"] if not e.startswith(f"{contract.ENV_INSTANCE_ID}=")]
    env.append(f"{contract.ENV_INSTANCE_ID}=mlserve-{STACK}-direct")
    host = model.attrs["HostConfig"]
    return stack.client.containers.run(
        model.image.id, ["python", "-m", contract.REPLICA_MODULE], name=f"mlserve-{STACK}-direct", detach=True,
        environment=env, network=f"mlserve-{STACK}", ports={f"{contract.REPLICA_PORT}/tcp": ("127.0.0.1", port)},
        nano_cpus=host["NanoCpus"], mem_limit=host["Memory"], labels={LABEL_STACK: STACK},
    )


def report(max_replicas: int, duration: float, out_dir: Path) -> list[Point]:
    if not 1 <= max_replicas <= 8 or not 1 <= duration <= 120:
        raise ValueError("--max-replicas 1..8 and --duration 1..120 s")
    from enginestack import stack_lock

    with stack_lock(STACK):
        return _report(max_replicas, duration, out_dir)


def _report(max_replicas: int, duration: float, out_dir: Path) -> list[Point]:
    stack = EngineStack(STACK, log=lambda line: None)
    port = _free_port()
    config: dict[str, object | None] = {"balancerPort": port, "replicaCpus": QUOTA, "replicas": 1, "weights": [1]}
    entry = f"http://127.0.0.1:{port}{contract.ROUTE_INVOCATIONS}"
    points: list[Point] = []
    stack.down(purge=True)
    try:
        declared, built = stack.declare(config)
        for n in range(1, max_replicas + 1):
            config.update(replicas=n, weights=[1] * n)
            from mockrun import run_program

            stack.apply(run_program(STACK, config, image_ids={k: b.image_id for k, b in built.items()}))
            _wait_serving(entry, {f"mlserve-{STACK}-replica-{i}" for i in range(n)})
            connections = CONNECTIONS_PER_REPLICA * n
            wrk(entry, 2.0, connections)  # warm-up
            r = wrk(entry, duration, connections)
            points.append(Point.of("nginx", n, r))
            print(f"{n} replica(s) via nginx: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, errors {r['errors']}", flush=True)
            if n == 1:
                direct_port = _free_port()
                container = _direct(stack, direct_port)
                try:
                    url = f"http://127.0.0.1:{direct_port}{contract.ROUTE_INVOCATIONS}"
                    _wait_serving(url, {f"mlserve-{STACK}-direct"}, 180)
                    wrk(url, 2.0, connections)
                    d = wrk(url, duration, connections)
                    # The same load through nginx again, right after: the ratio is of neighbours.
                    again = wrk(entry, duration, connections)
                finally:
                    container.remove(force=True)
                points.append(Point.of("direct", 1, d))
                points.append(Point.of("nginx-again", 1, again))
                print(f"1 replica direct: {d['rps']:.0f} req/s, p99 {d['p99_ms']:.1f} ms; via nginx again {again['rps']:.0f}", flush=True)
    finally:
        stack.down(purge=True)
    _write(points, out_dir, duration)
    return points


def _write(points: list[Point], out_dir: Path, duration: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(points, out_dir / "engine-scaling.csv")
    via = [p for p in points if p.target == "nginx"]
    one = via[0]
    direct = next(p for p in points if p.target == "direct")
    again = next(p for p in points if p.target == "nginx-again")
    lines = [
        f"Docker engine, each replica held to {QUOTA} CPU (--cpus); wrk with {CONNECTIONS_PER_REPLICA} connections per replica, {duration:g} s per point,"
        " single-row iris POST /invocations to the balancer published on 127.0.0.1",
        "",
        "| replicas | target | req/s | x 1 replica | / linear | p50 ms | p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        scale = p.rps / one.rps
        lines.append(f"| {p.replicas} | {p.target} | {p.rps:.0f} | {scale:.2f} | {scale / p.replicas:.2f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.errors} |")
    mean_nginx = (one.rps + again.rps) / 2
    lines += ["", f"Balancer cost at 1 replica: throughput via nginx / direct = {mean_nginx / direct.rps:.2f}"
              f" (mean of the runs before and after the direct one), p99 via nginx / direct = {one.p99_ms / direct.p99_ms:.2f}"]
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
    ax1.plot(xs, [p.rps for p in via], "o-", color="tab:blue", label="via nginx")
    ax1.plot([1], [direct.rps], "s", color="tab:orange", label="one replica direct")
    ax1.set_xlabel("replicas")
    ax1.set_ylabel("requests/s")
    ax1.set_xticks(xs)
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title(f"throughput, each replica limited to {QUOTA} CPU")
    ax2.plot(xs, [p.p99_ms for p in via], "^-", color="tab:red", label="p99 via nginx")
    ax2.plot([1], [direct.p99_ms], "s", color="tab:orange", label="p99 direct")
    ax2.set_xlabel("replicas")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_xticks(xs)
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    ax2.set_title(f"p99 latency, wrk {CONNECTIONS_PER_REPLICA} connections per replica")
    fig.suptitle(f"Docker engine: each replica limited to --cpus {QUOTA}; wrk and nginx share the same 2-core host", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "engine-scaling.png", dpi=110)
    plt.close(fig)
