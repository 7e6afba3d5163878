"""`python -m procstack report`: throughput and p99 latency at 1..N replicas, and nginx's cost.

For each replica count n the running local stack is changed to n replicas (weight 1 each, the
way `pulumi config set replicas n` + `pulumi up` would), then `wrk` sends single-row iris
requests through nginx for a fixed time. At n = 1 the same load also goes straight to that
replica, so the nginx overhead is a ratio of two measurements taken in the same run.

Writes <out>/scaling.md (table), <out>/scaling.csv and <out>/scaling.png. Every wrk run is
bounded by its duration (and a subprocess timeout); only loopback addresses are loaded.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import contract

from .loadgen import check_loopback, iris_row_body
from .stack import LocalStack, StackError


@dataclass(frozen=True)
class Point:
    target: str  # "nginx", "direct" (one replica, no balancer) or "nginx-again" (enginestack)
    replicas: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers + socket errors

    @classmethod
    def of(cls, target: str, replicas: int, run: dict[str, Any]) -> Point:
        """The point of one wrk() run."""
        return cls(target, replicas, run["rps"], run["p50_ms"], run["p99_ms"], run["requests"], run["errors"])


def write_csv(points: list[Point], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "replicas", "rps", "p50_ms", "p99_ms", "requests", "errors"])
        for p in points:
            w.writerow([p.target, p.replicas, f"{p.rps:.1f}", f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}", p.requests, p.errors])


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, seconds: float, connections: int, threads: int = 2) -> dict[str, Any]:
    """One bounded wrk run; POST of one iris row. Returns rps, p50/p99 (ms), requests, errors."""
    check_loopback(url)
    binary = shutil.which("wrk")
    if binary is None:
        raise StackError("wrk not found: apt-get install wrk (scripts/setup.sh does)")
    body = iris_row_body().decode()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(
            'wrk.method = "POST"\n'
            f"wrk.body = [==[{body}]==]\n"  # a level-2 long string: the body itself holds "]]"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    try:
        out = subprocess.run(
            [binary, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "-s", lua.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        Path(lua.name).unlink(missing_ok=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))
    p = {k: _ms(*re.match(r"([\d.]+)(\w+)", v).groups()) for k, v in lat.items()}  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": rps, "p50_ms": p["50"], "p99_ms": p["99"], "requests": requests, "errors": non2xx + sock, "raw": out}


def report(stack: LocalStack, max_replicas: int, duration: float, concurrency: int, out_dir: Path) -> list[Point]:
    if not 1 <= max_replicas <= 20 or not 1 <= duration <= 120:
        raise StackError("--max-replicas 1..20 and --duration 1..120 s")
    status = stack.status()
    was_running = any(r["state"] == "running" for r in status["processes"].values())
    previous = dict(status["overrides"])
    points: list[Point] = []
    try:
        for n in range(1, max_replicas + 1):
            info = stack.up({"replicas": n, "weights": [1] * n}, log=lambda *_: None)
            entry = info["entry_url"] + contract.ROUTE_INVOCATIONS
            _wait_all_serving(entry, set(info["replicas"]))
            wrk(entry, 1.0, concurrency)  # warm-up: connections, model caches, JIT-free but still
            r = wrk(entry, duration, concurrency)
            points.append(Point.of("nginx", n, r))
            print(f"{n} replica(s) via nginx: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, errors {r['errors']}", flush=True)
            if n == 1:
                direct = next(iter(info["replicas"].values()))["url"] + contract.ROUTE_INVOCATIONS
                d = wrk(direct, duration, concurrency)
                points.append(Point.of("direct", 1, d))
                print(f"1 replica direct:    {d['rps']:.0f} req/s, p99 {d['p99_ms']:.1f} ms", flush=True)
    finally:
        if was_running:
            stack.up(previous, reset=True, log=lambda *_: None)
        else:
            stack.down(log=lambda *_: None)
    _write(points, out_dir, duration, concurrency)
    bad = [p for p in points if p.errors]
    if bad:
        raise StackError(f"requests failed during the report (a figure with errors is no figure): {bad}")
    return points


def _wait_all_serving(url: str, replicas: set[str], deadline_s: float = 30.0) -> None:
    """Until nginx has resolved every replica (resolver valid=): each answered at least once."""
    import httpx

    seen: set[str] = set()
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while seen != replicas and time.monotonic() < end:
            r = client.post(url, content=iris_row_body(), headers={"content-type": "application/json"})
            if r.status_code == 200:
                seen.add(r.headers.get(contract.HEADER_INSTANCE_ID, ""))
            else:
                time.sleep(0.05)
    if not replicas <= seen:
        raise StackError(f"nginx did not reach every replica within {deadline_s}s: saw {sorted(seen)}")


def _write(points: list[Point], out_dir: Path, duration: float, concurrency: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(points, out_dir / "scaling.csv")
    via = [p for p in points if p.target == "nginx"]
    direct = next((p for p in points if p.target == "direct"), None)
    one = next((p for p in via if p.replicas == 1), None)
    lines = [
        f"wrk, {concurrency} connections, {duration:g} s per point, single-row iris POST /invocations, all on loopback",
        "",
        "| replicas | target | req/s | p50 ms | p99 ms | requests | errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(f"| {p.replicas} | {p.target} | {p.rps:.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | {p.requests} | {p.errors} |")
    if direct and one:
        lines += [
            "",
            f"nginx overhead at 1 replica (same run): throughput via nginx / direct = {one.rps / direct.rps:.2f}, "
            f"p99 via nginx / direct = {one.p99_ms / direct.p99_ms:.2f}",
        ]
    text = "\n".join(lines) + "\n"
    (out_dir / "scaling.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    xs = [p.replicas for p in via]
    ax1.plot(xs, [p.rps for p in via], "o-", color="tab:blue", label="throughput via nginx")
    if direct:
        ax1.plot([1], [direct.rps], "s", color="tab:cyan", label="throughput direct (1 replica)")
    ax1.set_xlabel("replicas")
    ax1.set_ylabel("requests/s")
    ax1.set_xticks(xs)
    ax2 = ax1.twinx()
    ax2.plot(xs, [p.p99_ms for p in via], "^--", color="tab:red", label="p99 via nginx")
    ax2.set_ylabel("p99 latency (ms)")
    handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(handles, [str(h.get_label()) for h in handles], loc="best", fontsize=8)
    ax1.set_title(f"local stack, wrk -c{concurrency}, {duration:g}s per point")
    fig.tight_layout()
    fig.savefig(out_dir / "scaling.png", dpi=110)
    plt.close(fig)
