"""How long a mock run of the program takes, for a 50-replica stack (target: under 3 s).

    .venv/bin/python benchmarks/mock_run.py [--replicas 50] [--repeat 5]

Prints, measured side by side in this one run:
- cold: a fresh interpreter that imports the program's dependencies and runs it once under
  mocks (what a test session or the local runner pays first),
- warm: the median of further runs in one process, for the 2-replica dev stack and for the
  big one, and the cost per extra replica.
A benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD = """
import sys, time
start = time.perf_counter()
sys.path.insert(0, {root!r})
from mockrun import run_program
stack = run_program("dev", {{"replicas": {n}}})
assert len(stack.replicas()) == {n}
print(time.perf_counter() - start)
"""


def warm(replicas: int, repeat: int) -> float:
    from mockrun import run_program

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        stack = run_program("dev", {"replicas": replicas})
        times.append(time.perf_counter() - start)
        assert len(stack.replicas()) == replicas
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    inner = subprocess.run(
        [sys.executable, "-c", COLD.format(root=str(ROOT), n=args.replicas)], capture_output=True, text=True, check=True
    )
    cold_total = time.perf_counter() - start
    cold_in_process = float(inner.stdout.strip().splitlines()[-1])

    warm(2, 1)  # imports, so that the warm figures compare runs only
    small = warm(2, args.repeat)
    big = warm(args.replicas, args.repeat)
    per_replica_ms = (big - small) / (args.replicas - 2) * 1000

    print(f"mock run, {args.replicas} replicas, cold (new interpreter, imports + run): {cold_total:.2f} s"
          f" (of which imports + run inside the interpreter: {cold_in_process:.2f} s)")
    print(f"mock run, warm median of {args.repeat}: 2 replicas {small:.3f} s, {args.replicas} replicas {big:.3f} s"
          f" -> {big / small:.1f}x, {per_replica_ms:.1f} ms per extra replica")
    print(f"target: {args.replicas}-replica mock run under 3 s -> cold {cold_total / 3:.0%} of it")


if __name__ == "__main__":
    main()
