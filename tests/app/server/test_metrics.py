"""app/server/metrics.py: the Prometheus exposition."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import contract
from app.server.metrics import Metrics, SampleFile, archive_dead, use_multiprocess_dir


def test_metrics_exposition() -> None:
    m = Metrics("r-1", "m", "champion")
    m.observe(contract.ROUTE_INVOCATIONS, 200, 0.003)
    m.observe(contract.ROUTE_INVOCATIONS, 400, 0.3)
    m.model_loaded("3", None, 1.0)
    m.model_loaded("4", "3", 1.0)
    m.load_failures.inc()
    m.batch_rows.observe(5)
    text = m.render().decode()
    assert 'mlserve_replica_requests_total{route="/invocations",status="200"} 1.0' in text
    assert 'mlserve_replica_request_duration_seconds_bucket{le="0.005",route="/invocations"} 1.0' in text
    assert 'mlserve_replica_request_duration_seconds_bucket{le="+Inf",route="/invocations"} 2.0' in text
    assert "mlserve_replica_model_version 4.0" in text
    assert 'mlserve_replica_model_version_info{alias="champion",model="m",version="3"} 0.0' in text
    assert "mlserve_replica_model_load_failures_total 1.0" in text
    assert "mlserve_replica_model_swaps_total 1.0" in text
    assert "mlserve_replica_batch_rows_count 1.0" in text


@pytest.fixture
def multiprocess_dir(tmp_path: Path) -> Iterator[Path]:
    """prometheus_client in multiprocess mode for one test, as a supervisor sets it; restored after."""
    from prometheus_client import values

    saved = values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    use_multiprocess_dir(tmp_path)
    try:
        yield tmp_path
    finally:
        values.ValueClass = saved[0]
        if saved[1] is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved[1]


def _samples(text: str, prefix: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith(prefix))


def test_several_processes_add_up_to_what_one_process_would_say(multiprocess_dir: Path) -> None:
    """Each forked process writes its own files; any of them renders the sum, in the same
    exposition as a one-process replica's, and a process's figures survive its exit."""
    observations = [(contract.ROUTE_INVOCATIONS, 200, 0.003), (contract.ROUTE_INVOCATIONS, 400, 0.3),
                    (contract.ROUTE_HEALTH, 200, 0.0001), (contract.ROUTE_INVOCATIONS, 200, 20.0)]
    pids = []
    for half in (observations[:2], observations[2:]):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                m = Metrics("r-1", "m", "champion", shared_dir=multiprocess_dir)
                for o in half:
                    m.observe(*o)
                m.rejected.inc()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    alone = Metrics("r-1", "m", "champion")
    for o in observations:
        alone.observe(*o)
    text = Metrics("r-1", "m", "champion", shared_dir=multiprocess_dir).render().decode()
    for prefix in ("mlserve_replica_requests_total", "mlserve_replica_request_duration_seconds_bucket",
                   "mlserve_replica_request_duration_seconds_count"):
        assert _samples(text, prefix) == _samples(alone.render().decode(), prefix), prefix
    assert "mlserve_replica_rejected_total 2.0" in text

    # The archive of a dead process keeps its figures and its files go.
    archive_dead(multiprocess_dir, pids[0])
    assert not list(multiprocess_dir.glob(f"*_{pids[0]}*.db"))
    archive_dead(multiprocess_dir, pids[1])
    after = Metrics("r-1", "m", "champion", shared_dir=multiprocess_dir).render().decode()
    for prefix in ("mlserve_replica_requests_total", "mlserve_replica_request_duration_seconds_bucket",
                   "mlserve_replica_rejected_total"):
        assert _samples(after, prefix) == _samples(text, prefix), prefix


def test_a_sample_file_grows_past_its_first_mapping(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    f = SampleFile(tmp_path / "counter_1-x.db", capacity=4096)
    slots = [f.slot(f'["m", "m_total", {{"i": "{i}"}}, "h"]') for i in range(200)]
    for n, s in enumerate(slots):
        f.values[s] += n
    read = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(tmp_path / "counter_1-x.db"))}
    assert len(read) == 200 and read['["m", "m_total", {"i": "199"}, "h"]'] == 199.0
