"""Command line of the local stack."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

import procstack


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants key=value, got {pair!r}")
        # YAML scalars, as in Pulumi.<stack>.yaml: 5 -> int, [1,3] -> list, true -> bool.
        out[key] = yaml.safe_load(value) if value else value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m procstack", description=procstack.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--stack", default="dev", help="Pulumi stack whose config is used (default dev)")
        p.add_argument("--state-dir", type=Path, default=None, help="default: <repo>/.proc-stack/<stack>")

    p_up = sub.add_parser("up", help="start the declared stack, or apply a changed config to the running one")
    common(p_up)
    p_up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (kept until --reset)")
    p_up.add_argument("--reset", action="store_true", help="forget earlier --set overrides")
    p_down = sub.add_parser("down", help="stop every process; data persists unless --purge")
    common(p_down)
    p_down.add_argument("--purge", action="store_true", help="also delete the data (MariaDB datadir, S3 objects)")
    p_status = sub.add_parser("status", help="processes, addresses and URLs")
    common(p_status)
    p_promote = sub.add_parser("promote", help="run the declared trainer again to register a new version and move the alias")
    common(p_promote)
    p_load = sub.add_parser("load", help="headless Locust against the entry URL, bounded in users and time")
    common(p_load)
    p_load.add_argument("--users", type=int, default=8)
    p_load.add_argument("--spawn-rate", type=float, default=8)
    p_load.add_argument("--run-time", default="20s", help="Locust --run-time (bounded; default 20s)")
    p_load.add_argument("--url", default=None, help="default: the running stack's entry URL")
    p_report = sub.add_parser("report", help="throughput and p99 at 1..N replicas: table + PNG, and nginx overhead")
    common(p_report)
    p_report.add_argument("--max-replicas", type=int, default=3)
    p_report.add_argument("--duration", type=float, default=8.0, help="seconds of load per point")
    p_report.add_argument("--concurrency", type=int, default=8)
    p_report.add_argument("--out", type=Path, default=Path("benchmarks/out"))

    args = parser.parse_args(argv)
    from .stack import LocalStack, StackError

    ls = LocalStack(args.stack, args.state_dir)
    try:
        if args.cmd == "up":
            info = ls.up(_overrides(args.set), reset=args.reset)
            print(f"entry URL:  {info['entry_url']}")
            print(f"MLflow URL: {info['mlflow_url']}  ({info['mlflow_address']})")
            for name, rep in info["replicas"].items():
                print(f"replica:    {name}  {rep['url']}  weight={rep['weight']}")
        elif args.cmd == "down":
            ls.down(purge=args.purge)
        elif args.cmd == "status":
            print(json.dumps(ls.status(), indent=1))
        elif args.cmd == "promote":
            from .stack import promote

            promote(ls)
        elif args.cmd == "load":
            from .load import run_locust

            url = args.url or ls.status().get("entry_url")
            if not url:
                raise StackError("no running stack: run `python -m procstack up` first, or pass --url")
            return run_locust(url, args.users, args.spawn_rate, args.run_time)
        elif args.cmd == "report":
            from .report import report

            report(ls, args.max_replicas, args.duration, args.concurrency, args.out)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
