"""Finding the replica's cgroup `cpu.stat` and telling when its CPU quota runs out."""

from __future__ import annotations

from pathlib import Path

from app.server import throttle
from app.server.throttle import QuotaWatch, cpu_stat_path

V1_STAT = "nr_periods 120\nnr_throttled {n}\nthrottled_time 9000000\n"
V2_STAT = "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 120\nnr_throttled {n}\nthrottled_usec 90\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_the_process_cgroup_under_the_root(tmp_path: Path) -> None:
    stat = _write(tmp_path / "system.slice" / "replica.scope" / "cpu.stat", V2_STAT.format(n=3))
    _write(tmp_path / "cpu.stat", V2_STAT.format(n=0))  # the root's: not this process's
    assert cpu_stat_path("0::/system.slice/replica.scope\n", tmp_path) == stat


def test_cgroup_v2_in_a_container_its_own_cgroup_at_the_root(tmp_path: Path) -> None:
    stat = _write(tmp_path / "cpu.stat", V2_STAT.format(n=3))
    assert cpu_stat_path("0::/\n", tmp_path) == stat


def test_cgroup_v2_without_the_cpu_controller_has_no_throttle_count(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\n")
    assert cpu_stat_path("0::/\n", tmp_path) is None


def test_cgroup_v1_under_the_cpu_controllers_mount(tmp_path: Path) -> None:
    stat = _write(tmp_path / "cpu,cpuacct" / "bench" / "cpu.stat", V1_STAT.format(n=1))
    proc = "9:name=systemd:/\n4:memory:/bench\n2:cpu,cpuacct:/bench\n0::/\n"
    assert cpu_stat_path(proc, tmp_path) == stat
    alone = _write(tmp_path / "cpu" / "other" / "cpu.stat", V1_STAT.format(n=1))
    assert cpu_stat_path("1:cpu:/other\n", tmp_path) == alone


def test_cgroup_v1_in_a_container_the_mount_root_is_its_own_cgroup(tmp_path: Path) -> None:
    # The path names the container's cgroup on the host; inside, that cgroup is the mount's root.
    stat = _write(tmp_path / "cpu,cpuacct" / "cpu.stat", V1_STAT.format(n=0))
    assert cpu_stat_path("4:cpu,cpuacct:/docker/0123abcd\n", tmp_path) == stat


def test_no_cgroup_cpu_stat_means_never_throttled(tmp_path: Path) -> None:
    assert cpu_stat_path("0::/\n4:memory:/x\n", tmp_path) is None
    assert QuotaWatch(None).throttled() is False


def test_throttled_when_the_count_grew_since_the_read_before(tmp_path: Path) -> None:
    stat = _write(tmp_path / "cpu.stat", V2_STAT.format(n=5))
    now = [100.0]
    watch = QuotaWatch(stat, clock=lambda: now[0])
    step = throttle.RECHECK_S + 0.01
    assert watch.throttled() is False  # nothing has happened since it was made
    now[0] += step
    assert watch.throttled() is False  # the count stayed
    stat.write_text(V2_STAT.format(n=7))
    assert watch.throttled() is False  # not read again so soon
    now[0] += step
    assert watch.throttled() is True
    stat.write_text(V2_STAT.format(n=8))
    assert watch.throttled() is True  # the answer holds until the next read
    now[0] += step
    assert watch.throttled() is True  # 7 -> 8
    now[0] += step
    assert watch.throttled() is False  # a window without a throttled period
    stat.unlink()
    now[0] += step
    assert watch.throttled() is False  # the file went away: no
