"""The CPU one run of the replica's health probe costs, side by side with the interpreter alone
and with the same two GETs over urllib.request (how the probe did them before), in one run.

Docker runs the probe (`python -m app.server.probe`, the image's HEALTHCHECK and the one the
program declares) every healthIntervalSeconds as a process in the replica's cgroup, so what it
costs comes out of `replicaCpus`. Each contender runs --runs times per round against a stand-in
replica on 127.0.0.1 that answers /ready and /health the way a replica in rotation does (the
probe's CPU is its own: the server's answer is two small JSON documents); rounds alternate the
order. Printed: CPU ms per run (user + system, from the children's rusage), median of the
rounds, and what the probe costs a replica held to 0.1 CPU at the default interval.

    .venv/bin/python benchmarks/probe_cost.py [--rounds 5] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import contract  # noqa: E402
from enginestack.report import QUOTA  # noqa: E402
from stackconfig.settings import DEFAULTS  # noqa: E402

# What the probe did before: the same two GETs with urllib.request, and json.
URLLIB_PROBE = """
import json, os, sys, urllib.request
base = "http://127.0.0.1:" + os.environ["MLSERVE_PORT"]
with urllib.request.urlopen(base + sys.argv[1], timeout=3) as r:
    assert r.status == 200
with urllib.request.urlopen(base + sys.argv[2], timeout=3) as r:
    assert json.loads(r.read())["served"] > 0
"""
REPLICA_CPUS = float(QUOTA)  # the shares are of a replica held to the engine report's quota


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers = {
        contract.ROUTE_READY: json.dumps({"status": "ready"}).encode(),
        contract.ROUTE_HEALTH: json.dumps({"status": "ok", "served": 1, "model": {"loaded_at": time.time()}}).encode(),
    }

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        body = self.answers.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the hook's signature
        pass


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20, help="runs of each contender per round")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    env = {"PATH": "/usr/bin:/bin", contract.ENV_PORT: port, contract.ENV_ROTATION_GRACE_S: "3600"}
    contenders = {
        "probe": [sys.executable, "-m", contract.PROBE_MODULE],
        "urllib GETs (before)": [sys.executable, "-c", URLLIB_PROBE, contract.ROUTE_READY, contract.ROUTE_HEALTH],
        "interpreter alone": [sys.executable, "-c", "pass"],
    }
    per_run: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for rnd in range(args.rounds):
            names = list(contenders)
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                before = children_cpu_s()
                for _ in range(args.runs):
                    subprocess.run(contenders[name], cwd=ROOT, env=env, check=True, timeout=60)
                per_run[name].append((children_cpu_s() - before) / args.runs)
            print(f"round {rnd + 1}: " + ", ".join(f"{n} {1000 * v[-1]:.1f} ms" for n, v in per_run.items()), flush=True)
    finally:
        server.shutdown()
    med = {name: statistics.median(v) for name, v in per_run.items()}
    interval = int(DEFAULTS["healthIntervalSeconds"])
    print(f"\nCPU per run, median of {args.rounds} rounds of {args.runs}:")
    for name, v in med.items():
        share = v / interval / REPLICA_CPUS
        print(f"  {name:>22s} {1000 * v:6.1f} ms   = {100 * share:4.1f} % of a {REPLICA_CPUS:g}-CPU replica probed every {interval} s")
    ratios = [p / u for p, u in zip(per_run["probe"], per_run["urllib GETs (before)"], strict=True)]
    print(f"probe / urllib GETs, per round: median {statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
