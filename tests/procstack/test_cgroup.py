"""procstack/cgroup.py on a cgroup v2 tree without a manager (no systemd: a bare VM or
container), simulated in a temporary folder: the cpu controller is enabled for the root's
children before a limit is made, and the limit is written as Docker writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstack import cgroup


@pytest.fixture
def v2_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("\n")
    monkeypatch.setattr(cgroup, "V1_CPU", tmp_path / "no-v1")
    monkeypatch.setattr(cgroup, "V2_ROOT", root)
    return root


def test_v2_without_delegation_enables_cpu_for_the_children(v2_root: Path) -> None:
    limit = cgroup.CpuLimit("bench", 1.5, weight=1000)
    assert limit.v2 and limit.path == v2_root / "bench"
    assert "+cpu" in (v2_root / "cgroup.subtree_control").read_text()
    assert (limit.path / "cpu.max").read_text() == f"150000 {cgroup.PERIOD_US}"
    assert (limit.path / "cpu.weight").read_text() == "1000"


def test_v2_already_delegated_is_left_alone(v2_root: Path) -> None:
    (v2_root / "cgroup.subtree_control").write_text("cpu memory\n")
    cgroup.CpuLimit("bench", None)
    assert (v2_root / "cgroup.subtree_control").read_text() == "cpu memory\n"
    assert (v2_root / "bench" / "cpu.max").read_text() == f"max {cgroup.PERIOD_US}"
