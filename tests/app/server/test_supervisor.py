"""app/server/supervisor.py in process: how many workers, which GPU each, the poll schedule,
the warning when they outnumber the CPUs they may run on.
(The supervisor running real workers is tested in tests/app/test_replica_workers.py.)"""

from __future__ import annotations

import logging

import pytest

from app import contract
from app.server import config as config_mod
from app.server import supervisor
from app.server.manager import BACKOFF_MAX_S, BACKOFF_START_S
from app.server.supervisor import Served, Track, visible_gpus, warn_if_processes_outnumber_cpus, worker_count

from .helpers import BASE_ENV


def test_the_gpus_a_container_sees_are_those_listed_or_its_device_nodes() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, GPU-abc"}) == ["2", "GPU-abc"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.parametrize(("spec", "gpus", "expected"), [
    ("3", [], 3), ("3", ["0"], 3), (contract.WORKERS_PER_GPU, ["0", "1"], 2), (contract.WORKERS_PER_GPU, [], 1),
])
def test_worker_count(spec: str, gpus: list[str], expected: int) -> None:
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_WORKERS: spec})
    assert worker_count(cfg, gpus) == expected


def test_the_poll_schedule_is_the_one_process_replicas() -> None:
    """The interval after a good poll; doubling backoff after failures, capped by the interval
    once a version serves (ModelManager.run's rule)."""
    cfg = config_mod.from_env({**BASE_ENV, contract.ENV_POLL_INTERVAL_S: "5"})
    track = Track("primary", "champion", cfg, None)
    assert track.next_wait(True) == 5.0
    waits = [track.next_wait(False) for _ in range(8)]
    assert waits[0] == BACKOFF_START_S and waits[1] == 2 * BACKOFF_START_S
    assert max(waits) == BACKOFF_MAX_S
    track.current = Served("1", 1, "sklearn", "cpu", None, 0.0)
    assert track.next_wait(False) == 5.0
    assert track.next_wait(True) == 5.0 and track.delay == BACKOFF_START_S


@pytest.mark.parametrize(("workers", "cpus", "warned"), [(2, {0}, True), (2, {0, 1}, False), (3, {0, 1}, True),
                                                          (1, {0}, False)])
def test_more_processes_than_cpus_to_run_on_is_said(workers: int, cpus: set[int], warned: bool,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervisor.os, "sched_getaffinity", lambda pid: cpus)
    with caplog.at_level(logging.WARNING, logger=supervisor.log.name):
        warn_if_processes_outnumber_cpus(workers)
    said = [r for r in caplog.records if "take turns" in r.getMessage()]
    assert bool(said) == warned, caplog.records
    if warned:
        assert (said[0].workers, said[0].cpus) == (workers, len(cpus))  # type: ignore[attr-defined]
