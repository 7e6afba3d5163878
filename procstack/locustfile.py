"""Locust load for the local (or any loopback) stack: single-row iris requests to /invocations.

    python -m procstack load --users 8 --run-time 20s          # headless, bounded
    locust -f procstack/locustfile.py --host http://127.0.0.27:80   # web UI, by hand

Each answer's serving replica and model version are checked to be present, so a request that
nginx answers itself (an error page) counts as a failure even with a 200.
"""

from __future__ import annotations

from locust import HttpUser, constant, task

from app import contract
from procstack.loadgen import iris_row_body


class ScoringUser(HttpUser):
    wait_time = constant(0)

    @task
    def invocations(self) -> None:
        with self.client.post(
            contract.ROUTE_INVOCATIONS,
            data=iris_row_body(),
            headers={"content-type": "application/json"},
            catch_response=True,
            name=contract.ROUTE_INVOCATIONS,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            elif not resp.headers.get(contract.HEADER_INSTANCE_ID) or not resp.headers.get(contract.HEADER_MODEL_VERSION):
                resp.failure("answer without instance id or model version header")
            else:
                resp.success()
