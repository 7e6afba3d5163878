"""procstack.procs: detached processes, told apart by pid and start time, stopped for sure."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from procstack import procs


def test_a_started_process_runs_until_stopped_with_its_whole_group(tmp_path):
    # The child spawns a grandchild in its group: stop must take both.
    grandchild = "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    argv = [sys.executable, "-c", f"import subprocess, sys, time; {grandchild}; time.sleep(60)"]
    pid = procs.start(argv, {}, tmp_path, tmp_path / "logs" / "p.log")
    started = procs.start_time(pid)
    try:
        assert started and procs.alive(pid, started)
        assert not procs.alive(pid, str(int(started) + 1)), "another start time is another process"
    finally:
        procs.stop(pid, started, grace_s=5)
    assert not procs.alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_wait_until_fails_early_when_the_process_exits_and_shows_its_log(tmp_path):
    log = tmp_path / "p.log"
    pid = procs.start([sys.executable, "-c", "print('cannot start: no model')"], {}, tmp_path, log)
    with pytest.raises(procs.ReadinessError, match="exited before it was ready(.|\n)*cannot start: no model"):
        procs.wait_until(lambda: False, 60, "p", pid, log)


def test_wait_until_gives_up_at_the_deadline():
    with pytest.raises(procs.ReadinessError, match="not ready after 0s"):
        procs.wait_until(lambda: False, 0.2, "p")


def test_port_free_sees_a_bound_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not procs.port_free("127.0.0.1", port)
    assert procs.port_free("127.0.0.1", port)


def test_a_benchmarked_servers_cpu_time_counts_its_children(tmp_path):
    # The parent only waits; its child spins (bounded): what cpu_seconds() reports is the child's.
    from procstack import solo

    spin = "import time; end = time.monotonic() + 30\nwhile time.monotonic() < end: pass"
    argv = [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"]
    proc = solo.Proc("spinner", argv, dict(os.environ), tmp_path / "spinner.log").start()
    try:
        assert proc.cpu_seconds() < 0.5
        procs.wait_until(lambda: proc.cpu_seconds() >= 0.5, 20, "the child's CPU time counted")
    finally:
        proc.stop()
    assert not proc.alive()
