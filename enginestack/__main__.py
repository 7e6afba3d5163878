"""`python -m enginestack`: the stack on the local Docker engine (stand-in for `pulumi up`).

    python -m enginestack images [--remove] [--app-cache]   build (or remove) the stand-in images
    python -m enginestack up [--stack dev] [--set key=value ...] [--official-images]
    python -m enginestack status [--stack dev]
    python -m enginestack down [--stack dev] [--purge] [--remove-images]
    python -m enginestack report [--max-replicas 4] [--duration 10] [--rounds 3] [--no-pin]   table + PNG in benchmarks/out/

`up` builds the stand-in images and the project's images, applies the declared stack and prints
`entry URL: http://127.0.0.1:PORT` and one line per replica container. Unless
`--official-images` (a host that can pull from a registry), the image keys are those of
Pulumi.enginetest.yaml (the stand-ins), the balancer is published on 127.0.0.1 only and the
MLflow UI is not published. `down` deletes the containers and the network and keeps the
volumes (`--purge` deletes them too, `--remove-images` the two images built from app/).
The engine is the one DOCKER_HOST names (default: the local socket); `scripts/engine.sh start`
starts one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import docker
import yaml

from enginestack import standins
from enginestack.apply import ApplyError, EngineStack
from stackconfig.names import LABEL_ROLE, ROLE_REPLICA


def _value(text: str) -> Any:
    return yaml.safe_load(text)


def local_overrides() -> dict[str, object | None]:
    """What `up` changes in a stack for the local engine: the stand-in images, loopback only."""
    overrides: dict[str, object | None] = dict(standins.test_stack_images())
    overrides["balancerBindIp"] = "127.0.0.1"
    overrides["mlflowUiPort"] = None
    return overrides


def replica_lines(stack: EngineStack) -> list[str]:
    lines = []
    containers = [c for c in stack.running() if (c.labels or {}).get(LABEL_ROLE) == ROLE_REPLICA]
    for c in sorted(containers, key=lambda c: int("".join(ch for ch in c.name.rsplit("-", 1)[-1] if ch.isdigit()) or 0)):
        health = (c.attrs.get("State", {}).get("Health") or {}).get("Status", "-")
        nets = c.attrs.get("NetworkSettings", {}).get("Networks", {})
        aliases = sorted({a for n in nets.values() for a in (n.get("Aliases") or []) if not c.id.startswith(a)})
        lines.append(f"replica {c.name}: {c.status}, {health}, aliases {','.join(aliases)}, image {c.image.id[:19]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enginestack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="build the stand-in images (cached), or remove them")
    images.add_argument("--remove", action="store_true")
    images.add_argument("--app-cache", action="store_true",
                        help="also build the project's images as the test stack declares them, into the build cache "
                             "only (tags this made are removed again): the engine tests' builds then are cache hits")
    rep = sub.add_parser("report", help="throughput and p99 by replica count under a CPU quota (table + PNG)")
    rep.add_argument("--max-replicas", type=int, default=4)
    rep.add_argument("--duration", type=float, default=10.0)
    rep.add_argument("--rounds", type=int, default=3, help="runs of every point; the table has the median")
    rep.add_argument("--out", default="benchmarks/out")
    rep.add_argument("--no-pin", action="store_true",
                     help="let replicas, nginx and wrk share every CPU (by default the replicas get the first CPU, nginx and wrk the rest)")
    for name in ("up", "status", "down"):
        p = sub.add_parser(name)
        p.add_argument("--stack", default="dev")
        if name == "up":
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config value (YAML), repeatable")
            p.add_argument("--official-images", action="store_true", help="keep the stack's image keys (a host with a registry)")
        if name == "down":
            p.add_argument("--purge", action="store_true", help="also delete the volumes (MySQL data)")
            p.add_argument("--remove-images", action="store_true", help="also remove the images built from app/")
    args = parser.parse_args(argv)
    client = docker.from_env(timeout=600)

    if args.command == "images":
        if args.remove:
            standins.remove_standins(client)
        else:
            for key, built in standins.build_standins(client).items():
                print(f"{key}: {built.tag} {built.image_id[:19]} ({built.seconds:.0f} s)")
            if args.app_cache:
                for built in standins.cache_app_images(client).values():
                    print(f"cached {built.tag}: {built.image_id[:19]} ({built.seconds:.0f} s)")
        return 0

    if args.command == "report":
        from pathlib import Path

        from enginestack.report import report

        standins.build_standins(client, log=lambda line: None)
        report(args.max_replicas, args.duration, Path(args.out), args.rounds, pin=not args.no_pin)
        return 0

    stack = EngineStack(args.stack, client)
    try:
        if args.command == "up":
            overrides: dict[str, object | None] = {} if args.official_images else local_overrides()
            if not args.official_images:
                standins.build_standins(client)
            for item in args.set:
                key, sep, value = item.partition("=")
                if not sep:
                    parser.error(f"--set wants KEY=VALUE, got {item!r}")
                overrides[key] = _value(value)
            applied = stack.up(overrides)
            changed = applied.changed()
            print(f"{len(changed)} change(s): " + (", ".join(f"{s.op} {s.name}" for s in changed) or "none"))
            print(f"entry URL: {applied.declared.output('entryUrl')}")
            for line in replica_lines(stack):
                print(line)
        elif args.command == "status":
            for c in stack.running():
                health = (c.attrs.get("State", {}).get("Health") or {}).get("Status", "-")
                print(f"{c.name}: {c.status}, {health}")
            for line in replica_lines(stack):
                print(line)
        else:
            for step in stack.down(purge=args.purge, remove_images=args.remove_images):
                print(f"{step.op} {step.name}")
    except ApplyError as exc:
        print(f"enginestack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
