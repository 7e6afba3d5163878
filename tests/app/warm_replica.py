"""Replica processes started warm: forked from a process that imported the replica's libraries
once, the way supervisor.py forks its serving processes, instead of a fresh `python -m
app.server` (or another replica module) each time.

Why: kill_scenario.py restarts a replica after every SIGKILL, and a cold start spends 4-5 s of
its 5.5-7 s importing scikit-learn, skops and MLflow (two cores, under load). The scenario is
about what clients lose when a replica dies, not about its imports, and 100 cold restarts made
it the longest test of the suite. A warm child runs the replica's module as `python -m` would, with the
replica's environment: the same code serves, loads the model from the registry and listens on
its address; only the imports were done before the fork. Cold starts stay covered where they
matter (the process stack's and the engine's failover and restart tests).

The fork server is multiprocessing's (single-threaded, so a fork of it is safe); its children
are stopped when it dies (PR_SET_PDEATHSIG), and it exits when the process that started it does.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import runpy
import signal
from pathlib import Path

from procstack.solo import log_tail

ROOT = Path(__file__).resolve().parents[2]
# Imported in the fork server before its first fork: skops first (model.import_model_libraries
# says why the order matters), then everything supervisor.preload() imports for a worker.
PRELOAD = ["skops.io", "tests.app.warm_replica_preload"]

_context: multiprocessing.context.ForkServerContext | None = None


def _fork_server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run(module: str, env: dict[str, str], log_path: str) -> None:
    """In the forked child: become what `python -m module` with `env` would be."""
    from app.server.supervisor import _die_with_parent

    os.setsid()
    _die_with_parent()  # as the supervisor's forks: SIGTERM (a drain) when the fork server dies
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(env)
    # Its SystemExit is the exit code; multiprocessing flushes stdout and stderr before exiting.
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class WarmProc:
    """One warm replica process: the parts of procstack.solo.Proc the kill scenario uses."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = _fork_server().Process(target=_run, args=(module, env, str(log_path)), name=name)

    def start(self) -> WarmProc:
        self.process.start()
        return self

    @property
    def pid(self) -> int:
        assert self.process.pid is not None, "not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def tail(self, n: int = 4000) -> str:
        return log_tail(self.log_path, n)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process.pid is None:
            return None
        self.signal(signal.SIGTERM)
        if self.wait(timeout) is None:
            self.signal(signal.SIGKILL)
            self.wait(timeout)
        return self.process.exitcode
