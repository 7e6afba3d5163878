"""app/server/metrics.py: the Prometheus exposition."""

from __future__ import annotations

from app import contract
from app.server.metrics import Metrics


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
