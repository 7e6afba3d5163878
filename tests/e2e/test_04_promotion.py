"""Promotion under load: a new version is registered and the alias moved; every replica serves
it within the polling interval (plus the time to load it); no request fails."""

from __future__ import annotations

import time

import httpx
import pytest

from app import contract
from procstack.loadgen import Load, iris_row_body
from procstack.stack import promote

from .helpers import info, settings_of_stack

pytestmark = pytest.mark.e2e

# Loading an sklearn model through the MLflow proxy takes a few seconds on two busy cores.
LOAD_ALLOWANCE_S = 15.0


def _version_of(url: str) -> str:
    r = httpx.post(
        url + contract.ROUTE_INVOCATIONS, content=iris_row_body(), headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.headers[contract.HEADER_MODEL_VERSION]


def test_promotion_reaches_every_replica_under_load(stack):
    status = info(stack)
    poll_s = settings_of_stack(stack).serving.poll_interval_s
    replicas = {n: r["url"] for n, r in status["replicas"].items()}
    old = {_version_of(url) for url in replicas.values()}
    assert len(old) == 1, f"replicas disagree before the promotion: {old}"

    load = Load(status["entry_url"], concurrency=3, max_requests=50_000, max_seconds=180).start()
    try:
        result = promote(stack, c=0.25)
        moved_at = time.monotonic()
        new_version = str(result["alias_version"])
        assert new_version not in old, result
        first_seen: dict[str, float] = {}
        deadline = moved_at + poll_s + LOAD_ALLOWANCE_S
        while time.monotonic() < deadline and len(first_seen) < len(replicas):
            for name, url in replicas.items():
                if name not in first_seen and _version_of(url) == new_version:
                    first_seen[name] = time.monotonic() - moved_at
            time.sleep(0.2)
        # The balanced load sees the new version too (bounded wait).
        until = time.monotonic() + 10
        while time.monotonic() < until and new_version not in {a.version for a in list(load.run.answers)[-50:]}:
            time.sleep(0.1)
    finally:
        run = load.stop()

    assert not run.failures, f"{len(run.failures)} failed requests, e.g. {run.failures[:3]}"
    assert set(first_seen) == set(replicas), (
        f"not every replica serves v{new_version} within {poll_s + LOAD_ALLOWANCE_S}s: {first_seen}"
    )
    print(f"\npromotion to v{new_version}: seconds until each replica served it: {first_seen} (poll interval {poll_s}s)")
    versions_through_nginx = {a.version for a in run.answers}
    assert new_version in versions_through_nginx
