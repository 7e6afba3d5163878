"""A CPU limit for processes started on this machine, the way Docker's `--cpus` sets one: a
cgroup with a CFS quota (`cpu.cfs_quota_us` / `cpu.cfs_period_us` under cgroup v1's cpu
controller, `cpu.max` under cgroup v2). Used by the benchmarks to compare replicas at
different CPU limits side by side without a container engine. Needs root (or a delegated
cgroup); every cgroup made here is removed by `remove()`, once its processes have exited.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.server.throttle import read_cpu_stat

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000  # Docker's CFS period


class CgroupUnavailable(RuntimeError):
    pass


class CpuLimit:
    def __init__(self, name: str, cpus: float | None, weight: int | None = None) -> None:
        """`cpus`: the limit (None: none, only the weight). `weight`: the cgroup's CPU weight
        against other work (cgroup v2 cpu.weight scale, 1-10000, 100 normal; v1 cpu.shares
        gets 1024/100 of it). None: normal."""
        self.cpus = cpus
        quota = int(round(cpus * PERIOD_US)) if cpus is not None else None
        if (V1_CPU / "cpu.cfs_quota_us").exists():
            self.path = V1_CPU / name
            self.v2 = False
        elif "cpu" in _read(V2_ROOT / "cgroup.controllers").split():
            self.path = V2_ROOT / name
            self.v2 = True
            _enable_v2_cpu_for_children()
        else:
            raise CgroupUnavailable("no cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 with cpu) on this machine")
        try:
            self.path.mkdir()
            if self.v2:
                (self.path / "cpu.max").write_text(f"{quota if quota is not None else 'max'} {PERIOD_US}")
                if weight is not None:
                    (self.path / "cpu.weight").write_text(str(weight))
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota if quota is not None else -1))
                if weight is not None:
                    (self.path / "cpu.shares").write_text(str(weight * 1024 // 100))
        except OSError as exc:
            self.remove()
            raise CgroupUnavailable(f"cannot make cgroup {self.path}: {exc} (needs root)") from exc

    def prefix(self) -> list[str]:
        """Put before a command: it joins the cgroup, then execs (its children stay in it)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def stats(self) -> dict[str, int]:
        """The kernel's cpu.stat: periods, throttled periods, throttled time."""
        return read_cpu_stat(self.path / "cpu.stat")

    def remove(self, deadline_s: float = 10.0) -> None:
        """Remove the cgroup once its processes have gone (they are the caller's to stop)."""
        end = time.monotonic() + deadline_s
        while self.path.exists():
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > end:
                    return
                time.sleep(0.1)  # its last processes are still exiting


def _enable_v2_cpu_for_children() -> None:
    """Where nothing (systemd, a container runtime) has delegated the cpu controller to the
    root's children, a child has no cpu.max; enabling it is what those managers do at boot."""
    control = V2_ROOT / "cgroup.subtree_control"
    if "cpu" not in _read(control).split():
        try:
            control.write_text("+cpu")
        except OSError as exc:
            raise CgroupUnavailable(f"cannot enable the cpu controller in {control}: {exc} (needs root)") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def available() -> bool:
    return os.geteuid() == 0 and ((V1_CPU / "cpu.cfs_quota_us").exists() or "cpu" in _read(V2_ROOT / "cgroup.controllers").split())
