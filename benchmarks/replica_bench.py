"""Side-by-side benchmark: our replica vs `mlflow models serve`, same model, same core.

One run:
  1. starts an MLflow tracking server (SQLite, artifacts proxied) and trains the iris
     LogisticRegression with `python -m app.trainer`;
  2. starts `mlflow models serve` (1 worker, --env-manager local), our replica, our
     replica with its prediction kernel switched off (`ours-est`: the estimator's own
     `predict`, what any scikit-learn model without a kernel gets) and a
     constant-answer app on the same stack as the replica, each pinned to core 0
     (`taskset -c 0`); only the one under load does any work;
  3. drives each with wrk pinned to core 1, one single-row `dataframe_split` request
     body, at 8 and 32 connections (warm-up, then a measured run), the three servers
     taking turns for several rounds;
  4. prints req/s, p50, p99, RSS, non-2xx counts and the ratios ours/theirs and
     ours/ceiling. The ceiling is the constant answer on the replica's own stack (bare
     ASGI); the same constant answer on Starlette is printed as a reference (the stack
     the issue's reference figures were measured on), never used as the ceiling. The
     replica answers invocations without uvicorn's ASGI cycle (app/server/protocol.py),
     so the constant answer taken that way (ceiling-direct) is measured too: the most
     that path can serve;
  5. the same for the models of `--models` (benchmarks/bench_models.py: a
     Pipeline(StandardScaler, LogisticRegression), predicted by a kernel, and a
     RandomForestClassifier, predicted by the estimator), each served by
     `mlflow models serve` (mlflow-<kind>) and ours (ours-<kind>) and taking its turn in
     the same rounds: ratios ours-<kind>/mlflow-<kind> and ours-<kind>/ceiling.

    .venv/bin/python benchmarks/replica_bench.py [--duration 10] [--connections 8 32]
    # quicker iterations on the replica alone (ratios only for the pairs measured):
    .venv/bin/python benchmarks/replica_bench.py --connections 32 --only ours,ceiling
    # the replica against itself on uvicorn's own protocol (every request on its ASGI cycle,
    # head and body in two writes):
    .venv/bin/python benchmarks/replica_bench.py --only ours,ours-2w
    # the replica against itself with invocations on uvicorn's ASGI cycle, and the constant
    # answer on the replica's direct path (ceiling-direct):
    .venv/bin/python benchmarks/replica_bench.py --only ours,ours-asgi,ceiling,ceiling-direct

Needs `wrk` and `taskset` and at least two cores. All traffic goes to 127.0.0.1; every
process it starts is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import contract  # noqa: E402
from benchmarks import bench_models  # noqa: E402
from procstack import solo as rp  # noqa: E402

MODEL = "iris-bench"
ALIAS = "champion"
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
BODY = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}})
SERVER_CPU = "0"
LOAD_CPU = "1"


def wrk(url: str, connections: int, duration: float, script: Path) -> dict[str, float]:
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    return parse_wrk(out)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def check_answer(label: str, base_url: str) -> None:
    """One request of BODY must come back with predictions: a wrong answer would make the
    figures meaningless."""
    r = httpx.post(base_url + contract.ROUTE_INVOCATIONS, content=BODY, timeout=30,
                   headers={"Content-Type": "application/json"})
    if r.json().get("predictions") is None:
        raise RuntimeError(f"{label}: unexpected answer {r.text!r}")


def parse_wrk(out: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}"] = _ms(m.group(1), m.group(2)) if m else float("nan")
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors:.*?(\d+)\s+timeout", out)
    res["timeouts"] = float(m.group(1)) if m else 0.0
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load before each run")
    ap.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="measured runs per server and concurrency (median)")
    ap.add_argument("--max-batch-size", default="32", help="the stack default (maxBatchSize)")
    ap.add_argument("--max-batch-wait-ms", default="2", help="the stack default (maxBatchWaitMs)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--only", help="comma-separated subset of mlflow,ours,ours-est,ours-2w,ours-asgi,ceiling,"
                                   "ceiling-direct,starlette-const to measure (quicker iterations; ratios are "
                                   "printed for the pairs measured). ours-2w, the replica on uvicorn's own protocol "
                                   "(ASGI cycle, head and body in two writes), and ours-asgi, the replica with invocations on "
                                   "uvicorn's ASGI cycle, run only when named here")
    ap.add_argument("--starlette", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the constant answer on Starlette (reference only)")
    ap.add_argument("--models", default=",".join(bench_models.KINDS),
                    help="other models, each served by mlflow-<kind> and ours-<kind> (benchmarks/bench_models.py): "
                         f"comma-separated subset of {','.join(bench_models.KINDS)}, or none")
    args = ap.parse_args()
    extra = [m for m in args.models.split(",") if m and m != "none"]
    if set(extra) - set(bench_models.KINDS):
        print(f"--models: unknown {sorted(set(extra) - set(bench_models.KINDS))}", file=sys.stderr)
        return 2
    wanted = set(args.only.split(",")) if args.only else set()
    known = {"mlflow", "ours", "ours-est", "ours-2w", "ours-asgi", "ours-est-asgi", "ceiling", "ceiling-direct", "starlette-const",
             *(f"{side}-{m}" for m in bench_models.KINDS for side in ("mlflow", "ours"))}
    if wanted - known:
        print(f"--only: unknown {sorted(wanted - known)}", file=sys.stderr)
        return 2
    if not shutil.which("wrk") or not shutil.which("taskset"):
        print("needs wrk and taskset on PATH", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs two cores (server on core 0, load on core 1)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="replica-bench-"))
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    procs: list[rp.Proc] = []
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        tracking = rp.start_tracking_server(tmp / "mlflow")
        procs.append(tracking)
        trained = rp.train(tracking.url, MODEL, ALIAS)
        print(f"model: {MODEL} version {trained['version']} ({ALIAS})", flush=True)
        model_uri = f"models:/{MODEL}@{ALIAS}"

        def theirs() -> rp.Proc:
            return rp.start_mlflow_serve(tracking.url, model_uri, tmp, cpus=SERVER_CPU)

        def knobs(kernels: str = "true") -> dict[str, str]:
            return {contract.ENV_MAX_BATCH_SIZE: args.max_batch_size,
                    contract.ENV_MAX_BATCH_WAIT_MS: args.max_batch_wait_ms,
                    contract.ENV_POLL_INTERVAL_S: "30",
                    contract.ENV_LOG_LEVEL: "info",
                    contract.ENV_PREDICT_KERNELS: kernels}

        def ours(kernels: str = "true") -> rp.Proc:
            return rp.start_replica(tracking.url, MODEL, ALIAS, tmp, cpus=SERVER_CPU, **knobs(kernels))

        def variant(module: str, kernels: str = "true") -> rp.Proc:
            port = rp.free_port()
            p = rp.Proc(module, ["taskset", "-c", SERVER_CPU, rp.PY, "-m", f"benchmarks.{module}"],
                        rp.replica_env(tracking.url, MODEL, ALIAS, port, **knobs(kernels)), tmp / f"{module}-{port}.log",
                        port=port).start()
            try:
                p.wait_http(contract.ROUTE_READY, 120)
            except BaseException:
                p.stop()
                raise
            return p

        def ceiling(variant: str = "asgi") -> rp.Proc:
            port = rp.free_port()
            p = rp.Proc("const", ["taskset", "-c", SERVER_CPU, rp.PY, "-m", "benchmarks.replica_const_app", str(port),
                                  variant], rp._base_env(), tmp / f"const-{variant}.log", port=port).start()
            try:
                _wait_port(p)
            except BaseException:
                p.stop()
                raise
            return p

        servers: dict[str, rp.Proc] = {}
        factories = [("mlflow", theirs), ("ours", ours), ("ours-est", lambda: ours("false")), ("ceiling", ceiling),
                     ("ceiling-direct", lambda: ceiling("direct"))]
        if "ours-2w" in wanted:
            factories.insert(2, ("ours-2w", lambda: variant("replica_two_writes")))
        if "ours-asgi" in wanted:
            factories.insert(2, ("ours-asgi", lambda: variant("replica_asgi_path")))
        if "ours-est-asgi" in wanted:
            factories.insert(3, ("ours-est-asgi", lambda: variant("replica_asgi_path", "false")))
        if args.starlette:
            factories.append(("starlette-const", lambda: ceiling("starlette")))
        for kind in extra:
            name = f"{MODEL}-{kind}"
            if not args.only or {f"mlflow-{kind}", f"ours-{kind}"} & wanted:
                version = bench_models.register(tracking.url, name, ALIAS, kind)
                print(f"model: {name} version {version} ({ALIAS})", flush=True)
            factories.append((f"mlflow-{kind}", lambda n=name: rp.start_mlflow_serve(  # type: ignore[misc]
                tracking.url, f"models:/{n}@{ALIAS}", tmp, cpus=SERVER_CPU)))
            factories.append((f"ours-{kind}", lambda n=name: rp.start_replica(  # type: ignore[misc]
                tracking.url, n, ALIAS, tmp, cpus=SERVER_CPU, **knobs())))
        if args.only:
            factories = [(label, f) for label, f in factories if label in wanted]
        for label, factory in factories:
            p = factory()
            procs.append(p)
            servers[label] = p
            check_answer(label, p.url)
        # All three stay up (idle ones use no CPU) and take turns, round after round, so
        # that noise from other work on the machine hits all of them alike; the median
        # of the rounds is reported.
        runs: dict[str, dict[int, list[dict[str, float]]]] = {}
        for c in args.connections:
            for rnd in range(args.rounds):
                for label, p in servers.items():
                    url = p.url + contract.ROUTE_INVOCATIONS
                    wrk(url, c, args.warmup, script)
                    cpu_before = p.cpu_seconds()
                    r = wrk(url, c, args.duration, script)
                    # The server's CPU per request: on this shared machine other work takes
                    # turns on the core, which moves req/s far more than this.
                    r["cpu_us"] = (p.cpu_seconds() - cpu_before) / max(r["requests"], 1) * 1e6
                    r["rss_mb"] = p.rss_bytes() / 2**20
                    runs.setdefault(label, {}).setdefault(c, []).append(r)
                    print(f"{label:14s} c={c:<3d} round {rnd + 1}: {r['rps']:9.0f} req/s  p50 {r['p50']:8.2f} ms"
                          f"  p99 {r['p99']:8.2f} ms  CPU/req {r['cpu_us']:7.1f} us  RSS {r['rss_mb']:7.1f} MiB"
                          f"  non-2xx {int(r['non2xx'])}  timeouts {int(r['timeouts'])}", flush=True)
        for label, by_c in runs.items():
            for c, rs in by_c.items():
                results.setdefault(label, {})[c] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
    finally:
        for p in reversed(procs):
            p.stop()

    print()
    print(f"medians of {args.rounds} rounds of {args.duration:.0f} s:")
    for label in runs:
        for c in args.connections:
            r = results[label][c]
            print(f"  {label:14s} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50']:8.2f} ms  p99 {r['p99']:8.2f} ms"
                  f"  CPU/req {r['cpu_us']:7.1f} us  RSS {r['rss_mb']:7.1f} MiB")
    print("ratios, per round (the runs of a round are back to back), median [min..max]; 'per CPU': requests per\n"
          "second of the server's CPU time, the other's CPU per request over ours (steadier on a shared machine):")
    for c in args.connections:
        ratios: dict[str, float] = {}
        line = f"  c={c:<3d}"
        o_rs = runs.get("ours", {}).get(c)
        t_rs = runs.get("mlflow", {}).get(c)
        k_rs = runs.get("ceiling", {}).get(c)
        if o_rs and t_rs:
            speed, p99 = _per_round(o_rs, t_rs, "rps"), _per_round(o_rs, t_rs, "p99")
            o, t = results["ours"][c], results["mlflow"][c]
            line += (f" ours/mlflow req/s x{_span(speed, '.1f')}   ours/mlflow p99 {_span(p99, '.3f')}"
                     f"   RSS ours/mlflow x{o['rss_mb'] / t['rss_mb']:.2f}")
            ratios.update(rps_vs_mlflow=statistics.median(speed), p99_vs_mlflow=statistics.median(p99))
        if o_rs and k_rs:
            ceil = _per_round(o_rs, k_rs, "rps")
            per_cpu = _per_cpu(o_rs, k_rs)
            line += f"   ours/ceiling req/s {_span(ceil, '.2f')}   per CPU {_span(per_cpu, '.2f')}"
            ratios["rps_vs_ceiling"] = statistics.median(ceil)
            ratios["per_cpu_vs_ceiling"] = statistics.median(per_cpu)
        print(line)
        e_rs = runs.get("ours-est", {}).get(c)
        if e_rs and (t_rs or k_rs):
            parts = []
            if t_rs:
                est_speed = _per_round(e_rs, t_rs, "rps")
                parts.append(f"/mlflow req/s x{_span(est_speed, '.1f')}"
                             f"   /mlflow p99 {_span(_per_round(e_rs, t_rs, 'p99'), '.3f')}")
                ratios["est_rps_vs_mlflow"] = statistics.median(est_speed)
            if k_rs:
                est_ceil = _per_round(e_rs, k_rs, "rps")
                parts.append(f"/ceiling req/s {_span(est_ceil, '.2f')}   per CPU {_span(_per_cpu(e_rs, k_rs), '.2f')}")
                ratios["est_rps_vs_ceiling"] = statistics.median(est_ceil)
            print("        ours-est (kernel off) " + "   ".join(parts))
        for mine, other, text, key in (
                ("ours", "ceiling-direct", "ours / constant answer on the replica's direct path (ceiling-direct)",
                 "ceiling_direct"),
                ("ours", "ours-asgi", "ours (invocations without ASGI) / ours-asgi (on uvicorn's ASGI cycle)", "asgi_path"),
                ("ours-est", "ours-est-asgi", "ours-est / ours-est-asgi (kernel off, without / on uvicorn's ASGI cycle)",
                 "est_asgi_path")):
            m_rs, x_rs = runs.get(mine, {}).get(c), runs.get(other, {}).get(c)
            if m_rs and x_rs:
                speed, per_cpu = _per_round(m_rs, x_rs, "rps"), _per_cpu(m_rs, x_rs)
                print(f"        {text} req/s {_span(speed, '.2f')}   per CPU {_span(per_cpu, '.2f')}"
                      f"   p99 {_span(_per_round(m_rs, x_rs, 'p99'), '.3f')}")
                ratios[f"rps_vs_{key}"] = statistics.median(speed)
                ratios[f"per_cpu_vs_{key}"] = statistics.median(per_cpu)
        w_rs = runs.get("ours-2w", {}).get(c)
        if o_rs and w_rs:
            one_write = _per_round(o_rs, w_rs, "rps")
            print(f"        ours / ours-2w (uvicorn's own protocol: ASGI cycle, two writes) req/s {_span(one_write, '.3f')}"
                  f"   p99 {_span(_per_round(o_rs, w_rs, 'p99'), '.3f')}")
            ratios["rps_vs_two_writes"] = statistics.median(one_write)
        if o_rs and "starlette-const" in runs:
            st = _per_round(o_rs, runs["starlette-const"][c], "rps")
            print(f"        ours / constant answer on Starlette (reference, not the ceiling): {_span(st, '.2f')}")
        for kind in extra:
            m_rs, t2_rs = runs.get(f"ours-{kind}", {}).get(c), runs.get(f"mlflow-{kind}", {}).get(c)
            parts = []
            if m_rs and t2_rs:
                speed = _per_round(m_rs, t2_rs, "rps")
                parts.append(f"/mlflow-{kind} req/s x{_span(speed, '.1f')}"
                             f"   p99 {_span(_per_round(m_rs, t2_rs, 'p99'), '.3f')}")
                ratios[f"{kind}_rps_vs_mlflow"] = statistics.median(speed)
            if m_rs and k_rs:
                ceil = _per_round(m_rs, k_rs, "rps")
                parts.append(f"/ceiling req/s {_span(ceil, '.2f')}   per CPU {_span(_per_cpu(m_rs, k_rs), '.2f')}")
                ratios[f"{kind}_rps_vs_ceiling"] = statistics.median(ceil)
                ratios[f"{kind}_per_cpu_vs_ceiling"] = statistics.median(_per_cpu(m_rs, k_rs))
            if parts:
                print(f"        ours-{kind} " + "   ".join(parts))
        results.setdefault("ratios", {})[c] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _per_round(mine: list[dict[str, float]], other: list[dict[str, float]], key: str) -> list[float]:
    """mine/other for one figure, round by round (the runs of a round are back to back)."""
    return [m[key] / o[key] for m, o in zip(mine, other, strict=True)]


def _per_cpu(mine: list[dict[str, float]], other: list[dict[str, float]]) -> list[float]:
    """Requests per CPU-second, mine/other, round by round: the other's CPU per request over mine."""
    return [o["cpu_us"] / m["cpu_us"] for m, o in zip(mine, other, strict=True)]


def _span(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}..{format(max(values), fmt)}]"


def _wait_port(p: rp.Proc, deadline_s: float = 30.0) -> None:
    # The constant app answers every path; a GET on /ping is enough to know it is up.
    p.wait_http(contract.ROUTE_PING, deadline_s)


if __name__ == "__main__":
    sys.exit(main())
