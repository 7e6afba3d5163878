"""Side-by-side benchmark: the balancer with API keys, rate limits and a 10 % canary, against the
plain balancer, in one run.

Both confs are `nginx.render.render(settings)` of the dev stack, the featured one with
`apiKeys` (the key checked on every request), `rateLimitPerKey` and `rateLimitPerClient` (set
far above the load, so that every request passes through both limit_req zones and none is
refused) and a canary group taking 10 % through `split_clients`. The stand-in replicas are one
small nginx answering a constant prediction on every group's address, so that the balancer,
not the model, is what is measured. A DNS stand-in answers the groups' weight aliases.

Both balancers run side by side (one worker each, pinned to core 0; only the one under load
works), wrk and the stand-ins on core 1. Each round runs wrk against both in turn (order
alternating), with the same connections and duration, for many short rounds; printed: req/s and p99 of each, and
per round the ratio featured/plain, with the median. The issue's target is at most 10 % lower
throughput with the features on.

    sudo .venv/bin/python benchmarks/balancer_bench.py [--rounds 30] [--duration 1] [--connections 16]

Runs in a private network namespace (`unshare -n`, as root) because it binds Docker's DNS
address 127.0.0.11:53; every process it starts is stopped in `finally`.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app import contract  # noqa: E402
from nginx.render import API_KEYS_FILE, STATUS_DIR, render, render_api_keys  # noqa: E402
from stackconfig.names import weight_alias  # noqa: E402
from stackconfig.settings import MAX_RATE, Settings, parse  # noqa: E402
from tests.support import Table, nginx_binary, serve_dns, stop  # noqa: E402

BALANCER = "127.0.0.5"
BALANCER_FEATURED = "127.0.0.6"
BACKEND = {"default": "127.0.0.21", "challenger": "127.0.0.31"}
KEY = "k" * 40
ANSWER = '{"predictions": [0]}'
PLAIN: dict[str, object] = {}
FEATURED: dict[str, object] = {
    "apiKeys": ["bench"],
    "rateLimitPerKey": MAX_RATE,
    "rateLimitPerClient": MAX_RATE,
    "groups": [{"name": "challenger", "role": "canary", "alias": "challenger", "replicas": 1, "trafficPercent": 10}],
}
BODY = json.dumps({"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[5.1, 3.5, 1.4, 0.2]]}})


def settings(raw: dict[str, object]) -> Settings:
    return parse("dev", {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()})


def backend_conf() -> str:
    servers = "\n".join(
        f"  server {{ listen {address}:{contract.REPLICA_PORT}; access_log off; location / {{"
        f" default_type application/json; add_header {contract.HEADER_INSTANCE_ID} {address};"
        f" return 200 '{ANSWER}'; }} }}"
        for address in BACKEND.values()
    )
    return f"worker_processes 1;\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n{servers}\n}}\n"


# The balancer under test gets one worker on core 0; wrk and the stand-in replicas share core 1,
# so that the two variants differ only in the conf (other load on the machine still shows:
# hence many short rounds and the median of the per-round ratios).
BALANCER_CPU = "0"
LOAD_CPU = "1"


def start_nginx(prefix: Path, conf: str, extra: dict[str, str] | None = None, cpu: str = LOAD_CPU) -> subprocess.Popen[bytes]:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / STATUS_DIR).mkdir(exist_ok=True)
    for relative, content in (extra or {}).items():
        (prefix / relative).parent.mkdir(parents=True, exist_ok=True)
        (prefix / relative).write_text(content)
    # The benchmark measures throughput: the balancer's access log (stdout) goes nowhere.
    (prefix / "nginx.conf").write_text(conf.replace("access_log /dev/stdout mlserve;", "access_log off;"))
    return subprocess.Popen(["taskset", "-c", cpu, nginx_binary(), "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=open(prefix / "error.log", "wb"))


def wait_ok(url: str, headers: dict[str, str]) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, content=BODY, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200")


def url(address: str) -> str:
    return f"http://{address}:{contract.BALANCER_PORT}{contract.ROUTE_INVOCATIONS}"


def lua_script(path: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if os.environ.get("MLSERVE_BENCH_NETNS") != "1":
        if os.geteuid() != 0 or not shutil.which("unshare"):
            print("needs root and unshare (it binds 127.0.0.11:53 in a private network namespace)", file=sys.stderr)
            return 2
        command = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
        return subprocess.run(command, env={**os.environ, "MLSERVE_BENCH_NETNS": "1"}).returncode
    if not shutil.which("wrk"):
        print("needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2

    from replica_bench import parse_wrk

    tmp = Path(tempfile.mkdtemp(prefix="balancer-bench-"))
    table = Table({weight_alias(1, group): [address] for group, address in BACKEND.items()})
    dns = serve_dns(table)
    procs: list[subprocess.Popen[bytes]] = []
    variants = {
        "plain": (settings(PLAIN), {"Content-Type": "application/json"}),
        "featured": (settings(FEATURED), {"Content-Type": "application/json", contract.HEADER_API_KEY: KEY}),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    addresses = {"plain": BALANCER, "featured": BALANCER_FEATURED}
    try:
        procs.append(start_nginx(tmp / "backend", backend_conf()))
        scripts = {}
        for name, (s, headers) in variants.items():
            extra = {API_KEYS_FILE: render_api_keys({"bench": KEY})} if s.balancer.access.api_keys else {}
            conf = render(s).replace(f"listen {contract.BALANCER_PORT};", f"listen {addresses[name]}:{contract.BALANCER_PORT};")
            conf = conf.replace("worker_processes auto;", "worker_processes 1;")
            procs.append(start_nginx(tmp / name, conf, extra, cpu=BALANCER_CPU))
            wait_ok(url(addresses[name]), headers)
            scripts[name] = lua_script(tmp / f"{name}.lua", headers)
            # Warm-up: keep-alive pools, resolution, the split's and zones' first entries.
            subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{args.connections}", "-d2s", "-s", str(scripts[name]),
                            url(addresses[name])], capture_output=True, timeout=60, check=True)
        # Short runs taking turns (order alternating): the other load on the machine drifts
        # slowly, so the two runs of a round see about the same machine.
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{args.connections}",
                                      f"-d{max(1, round(args.duration))}s", "--latency", "-s", str(scripts[name]),
                                      url(addresses[name])],
                                     capture_output=True, text=True, timeout=args.duration + 60, check=True).stdout
                results[name].append(parse_wrk(out))
    finally:
        for proc in procs:
            stop(proc)
        dns.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"balancer benchmark: {args.rounds} rounds x {args.duration:g} s, {args.connections} connections; "
          f"balancer (1 worker) on core {BALANCER_CPU}, wrk and the stand-in replicas on core {LOAD_CPU}")
    print(f"{'round':>5} {'plain req/s':>12} {'p99 ms':>7} {'featured req/s':>15} {'p99 ms':>7} {'ratio':>6} {'non-2xx':>8}")
    ratios = []
    for i, (plain, featured) in enumerate(zip(results["plain"], results["featured"], strict=True)):
        ratio = featured["rps"] / plain["rps"]
        ratios.append(ratio)
        print(f"{i + 1:>5} {plain['rps']:>12.0f} {plain['p99']:>7.2f} {featured['rps']:>15.0f} {featured['p99']:>7.2f} "
              f"{ratio:>6.3f} {int(plain['non2xx'] + featured['non2xx']):>8}")
    summary = {
        "plain_rps_median": statistics.median(r["rps"] for r in results["plain"]),
        "featured_rps_median": statistics.median(r["rps"] for r in results["featured"]),
        "plain_p99_ms_median": statistics.median(r["p99"] for r in results["plain"]),
        "featured_p99_ms_median": statistics.median(r["p99"] for r in results["featured"]),
        "ratio_median": statistics.median(ratios),
        "non2xx": sum(r["non2xx"] for rs in results.values() for r in rs),
    }
    print(f"median throughput ratio featured/plain: {summary['ratio_median']:.3f} (target >= 0.90)")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
