"""Is this process's CPU quota running out? Read from its cgroup's `cpu.stat`.

A replica held to a CPU quota (`replicaCpus`, Docker's `--cpus`, a Kubernetes CPU limit) runs
its share of each 100 ms CFS period and is frozen for the rest, so its throughput is the quota
over the CPU a request costs, and a request costs less in a larger model call (the thread
hand-off and the call's own fixed work are paid once per call). While the quota runs out the
batcher waits for a fuller batch (`batcher.Batcher`): a sleeping thread uses none of the
quota. Without a quota the same wait would cost throughput, since closed-loop clients cannot
send more until they are answered; hence this check.

`nr_throttled` counts the periods in which the cgroup used its whole quota. Where no
`cpu.stat` with it can be read (no cgroup cpu controller, another OS), the answer is always no.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Read at most this often: one read is a file open (~15 us), and a quota's period is 100 ms.
RECHECK_S = 0.25


def cpu_stat_path(proc_cgroup: str, root: Path = CGROUP_ROOT) -> Path | None:
    """The `cpu.stat` of the cgroup that `proc_cgroup` (the text of /proc/self/cgroup) names.

    cgroup v2 (`0::/path`): root/path/cpu.stat. cgroup v1 (`N:cpu,cpuacct:/path`): under the
    cpu controller's mount. Inside a container the path names the container's cgroup on the
    host while the container sees its own cgroup at the mount's root, so the root is tried
    after the full path."""
    candidates: list[Path] = []
    for line in proc_cgroup.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if controllers == "" and line.startswith("0::"):
            candidates += [root / rel / "cpu.stat", root / "cpu.stat"]
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                candidates += [mount / rel / "cpu.stat", mount / "cpu.stat"]
    for candidate in candidates:
        if candidate.is_file() and _throttled_periods(candidate) is not None:
            return candidate
    return None


def read_cpu_stat(path: Path) -> dict[str, int]:
    """A `cpu.stat` file's counters (periods, throttled periods, throttled time, ...); {}
    where it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    stats: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            stats[key] = int(value)
    return stats


def _throttled_periods(path: Path) -> int | None:
    return read_cpu_stat(path).get("nr_throttled")


class QuotaWatch:
    """`throttled()`: did the cgroup run out of quota since the check before last?

    Called from the model thread only (no lock). Two reads apart by at least RECHECK_S make
    a window; the answer holds until the next read, so it follows the load within a
    fraction of a second and costs one file read per RECHECK_S."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._last_count = _throttled_periods(path) if path is not None else None
        self._last_read = clock()
        self._throttled = False

    @classmethod
    def for_this_process(cls) -> QuotaWatch:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return cls(None)
        return cls(cpu_stat_path(text))

    def throttled(self) -> bool:
        if self.path is None:
            return False
        now = self._clock()
        if now - self._last_read < RECHECK_S:
            return self._throttled
        count = _throttled_periods(self.path)
        self._last_read = now
        if count is None or self._last_count is None:
            self._last_count = count
            self._throttled = False
        else:
            self._throttled = count > self._last_count
            self._last_count = count
        return self._throttled
