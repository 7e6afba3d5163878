"""`python -m procstack load`: headless Locust, bounded in users and run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .loadgen import check_loopback

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _seconds(run_time: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    for ch in run_time:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"--run-time like 20s, 1m30s; got {run_time!r}")
    return total + (float(number) if number else 0.0)


def run_locust(url: str, users: int, spawn_rate: float, run_time: str, csv_prefix: str | None = None) -> int:
    check_loopback(url)
    bound = _seconds(run_time)
    if not 0 < bound <= 3600:
        raise ValueError("--run-time must be between 1s and 1h")
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        run_time,
        "--stop-timeout",
        "5",
        "--only-summary",
        "--exit-code-on-error",
        "1",
    ]
    if csv_prefix:
        argv += ["--csv", csv_prefix]
    # Belt and braces: Locust stops itself at --run-time; the timeout catches a hung run.
    return subprocess.run(argv, cwd=PROJECT_ROOT, timeout=bound + 60, check=False).returncode
