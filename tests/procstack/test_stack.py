"""procstack.stack: what `up` reports and `status` shows, from the process records (no process
of the stack is started)."""

from __future__ import annotations

import os
import subprocess
import sys

from app import contract
from procstack import procs
from procstack import translate as tr
from procstack.stack import LocalStack
from procstack.state import Paths, StackState
from stackconfig.names import MLFLOW_PRIVATE_URL, ROLE_BALANCER


def _stack_with_records(tmp_path, records: dict[str, dict[str, object]]) -> LocalStack:
    """A LocalStack whose state file holds these process records (addresses handed out in order)."""
    state = StackState("dev", Paths(tmp_path))
    state.load()
    for name, record in records.items():
        state.records[name] = {"address": state.address(name), **record}
    state.save()
    stack = LocalStack("dev", tmp_path)
    stack.status()  # reads the state file
    return stack


def test_info_names_the_entry_url_the_mlflow_urls_and_every_replica(tmp_path, declared):
    services = tr.services(declared)
    records: dict[str, dict[str, object]] = {s.name: {"role": s.role, "pid": 0, "done": True} for s in services}
    balancer = next(s for s in services if s.role == ROLE_BALANCER)
    records[balancer.name]["entry_url"] = "http://127.0.0.30:8080"
    stack = _stack_with_records(tmp_path, records)
    info = stack.info(services)
    address = {s.resource: stack.state["procs"][s.name]["address"] for s in services}
    assert info == {
        "entry_url": "http://127.0.0.30:8080",
        "mlflow_url": MLFLOW_PRIVATE_URL,
        "mlflow_address": f"http://{address['mlflow']}:{contract.MLFLOW_PORT}",
        "replicas": {
            f"mlserve-dev-replica-{i}": {"url": f"http://{address[f'replica-{i}']}:{contract.REPLICA_PORT}", "weight": w}
            for i, w in enumerate([1, 2, 2])
        },
        "s3_endpoint": f"http://{address['minio']}:{contract.MINIO_PORT}",
        "mysql_address": address["mysql"],
    }


def test_status_tells_running_dead_and_done_apart(tmp_path):
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    stack = _stack_with_records(
        tmp_path,
        {
            "job": {"role": "trainer", "pid": 0, "done": True},
            "me": {"role": "replica", "pid": os.getpid(), "started": procs.start_time(os.getpid())},
            "gone": {"role": "replica", "pid": exited.pid, "started": "1"},
        },
    )
    rows = stack.status()["processes"]
    assert {n: r["state"] for n, r in rows.items()} == {"job": "done", "me": "running", "gone": "dead"}
    assert rows["me"] == {"role": "replica", "address": "127.0.0.21", "pid": os.getpid(), "state": "running"}
    assert rows["job"]["address"] == "127.0.0.20"
