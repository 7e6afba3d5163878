"""SIGTERM under load: no accepted request is lost and the process exits within its grace."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from app import contract
from procstack import solo as rp

pytestmark = pytest.mark.live

COLS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
BODY = json.dumps({"dataframe_split": {"columns": COLS, "data": [[6.1, 2.8, 4.7, 1.2]]}}).encode()
GRACE_S = 8


@pytest.mark.parametrize("workers", ["1", "2"], ids=["1proc", "2proc"])
def test_sigterm_under_load_loses_nothing(tracking: rp.Proc, trained: dict[str, object], workdir: Path,
                                          workers: str) -> None:
    """One process, and two under a supervisor: SIGTERM reaches the supervisor only (as
    Docker sends it), which drains every process within the grace period."""
    # A long batch wait keeps requests queued inside the replica when SIGTERM arrives.
    proc = rp.start_replica(tracking.url, str(trained["model"]), str(trained["alias"]), workdir,
                            **{contract.ENV_MAX_BATCH_WAIT_MS: "30", contract.ENV_MAX_BATCH_SIZE: "64",
                               contract.ENV_SHUTDOWN_GRACE_S: str(GRACE_S), contract.ENV_WORKERS: workers})
    stop = threading.Event()
    answers: list[rp.Answer] = []
    loader = threading.Thread(target=lambda: answers.extend(
        rp.run_load(proc.url, BODY, threads=16, max_requests=100_000, max_seconds=60, stop=stop)))
    try:
        loader.start()
        end = time.monotonic() + 30
        while len(_served_so_far(proc)) == 0 or _served_so_far(proc)[0] < 200:
            assert time.monotonic() < end, "no load reached the replica"
            time.sleep(0.05)  # poll interval
        proc.signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.popen is not None
        code = proc.popen.wait(GRACE_S + 5)
        took = time.monotonic() - t0
    finally:
        stop.set()
        loader.join(90)
        proc.stop()
    # uvicorn re-raises the signal once shut down: dying of the SIGTERM it handled is its clean exit.
    assert code in (0, -signal.SIGTERM), proc.tail()
    assert took < GRACE_S, took
    ok = [a for a in answers if a.status == 200]
    other = [a for a in answers if a.status not in (200, None)]
    assert not other, other[:5]  # no 5xx: nothing accepted was dropped or refused with an answer
    # The replica's own line (a supervisor's workers log theirs, with their index, before it).
    stopped = [json.loads(line) for line in proc.log_path.read_text().splitlines()
               if line.startswith("{") and '"replica stopped"' in line and '"worker"' not in line]
    assert stopped, proc.tail()
    draining = [json.loads(line) for line in proc.log_path.read_text().splitlines()
                if line.startswith("{") and '"draining' in line]
    assert draining, proc.tail()
    # Every request the replica accepted and answered 200 reached the client, and the other
    # way round: the counts agree exactly.
    assert stopped[-1]["served"] == len(ok), (stopped[-1], len(ok))
    assert stopped[-1]["pending"] == 0
    assert len(ok) > 200


def _served_so_far(proc: rp.Proc) -> list[float]:
    try:
        text = httpx.get(proc.url + contract.ROUTE_METRICS, timeout=5).text
    except httpx.HTTPError:
        return []
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith('mlserve_replica_requests_total{route="/invocations",status="200"}')]
