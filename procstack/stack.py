"""Bring the declared stack up as local processes, change it as `pulumi up` would, take it down.

`LocalStack` is the entry point of the command line, the tests and the report: it reads the
declared stack (the program under mocks, translate.py), keeps the state directory (state.py) and
hands the diff to the reconciler (reconcile.py), which starts each container's stand-in
(standins.py) and publishes its names (publish.py).

The state directory (default `<repo>/.proc-stack/<stack>/`, gitignored) holds the state file,
`logs/`, `run/` (sockets, nginx prefix, homes, the DNS table) and `data/` (the volumes:
MariaDB's datadir and the S3 recording). `down` keeps `data/` unless asked to purge, as
`docker stop` keeps volumes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app import contract
from stackconfig.names import MLFLOW_PRIVATE_URL, ROLE_BALANCER, ROLE_MINIO, ROLE_MLFLOW, ROLE_MYSQL, ROLE_REPLICA, ROLE_TRAINER

from . import procs
from . import translate as tr
from .errors import StackError
from .reconcile import Log, Reconciler
from .standins import Trainer, stand_in
from .state import Paths, StackState, default_state_dir

__all__ = ["LocalStack", "StackError", "default_state_dir", "promote"]


class LocalStack:
    def __init__(self, stack: str = "dev", state_dir: Path | None = None) -> None:
        self.stack = stack
        self.paths = Paths(Path(state_dir) if state_dir else default_state_dir(stack))
        self._state = StackState(stack, self.paths)
        self._reconciler = Reconciler(self._state)

    @property
    def state(self) -> dict[str, Any]:
        """The state file's contents as last read (overrides, addresses, process records)."""
        return self._state.data

    def address(self, name: str) -> str:
        return self._state.address(name)

    def declared(self, overrides: Mapping[str, Any]) -> list[tr.Service]:
        from mockrun import run_program

        return tr.services(run_program(self.stack, dict(overrides)))

    def up(self, overrides: Mapping[str, Any] | None = None, reset: bool = False, log: Log = print) -> dict[str, Any]:
        with self._state.locked():
            if reset:
                self.state["overrides"] = {}
            self._state.overrides.update(overrides or {})
            wanted = self.declared(self._state.overrides)
            self._state.save()
            self._reconciler.apply(wanted, log)
            info = self.info(wanted)
            self.state["info"] = info
            self._state.save()
            return info

    def down(self, purge: bool = False, log: Log = print) -> None:
        with self._state.locked():
            self._reconciler.stop_all(log)
            self.state.pop("info", None)
            self._state.save()
            if purge:
                log(f"removing data {self.paths.data}")
                shutil.rmtree(self.paths.data, ignore_errors=True)

    def run_oneshot(self, role: str, extra_args: list[str], env_overrides: Mapping[str, str] | None = None) -> str:
        """Run a declared one-shot container (the trainer) again by hand, with extra arguments.

        Returns its standard output (the trainer prints one JSON line)."""
        with self._state.locked():
            wanted = self.declared(self._state.overrides)
            service = next((s for s in wanted if s.role == role), None)
            if service is None:
                raise StackError(f"the program declares no {role} container (is trainDemoModel false?)")
            job = stand_in(service, self._state.address(service.name), self.paths)
            if not isinstance(job, Trainer):
                raise StackError(f"only the trainer is run again by hand, not the {role} container {service.name}")
            return job.run_again(extra_args, env_overrides or {})

    def status(self) -> dict[str, Any]:
        self._state.load()
        rows = {}
        for name, record in self._state.records.items():
            if record.get("done"):
                state = "done"
            else:
                state = "running" if procs.alive(record["pid"], record.get("started")) else "dead"
            rows[name] = {"role": record.get("role"), "address": record.get("address"), "pid": record.get("pid"), "state": state}
        return {
            "stack": self.stack,
            "state_dir": str(self.paths.root),
            "overrides": self._state.overrides,
            "processes": rows,
            **self.state.get("info", {}),
        }

    def info(self, wanted: list[tr.Service]) -> dict[str, Any]:
        by_role: dict[str, list[tr.Service]] = {}
        for s in wanted:
            by_role.setdefault(s.role, []).append(s)
        records = self._state.records
        tracking = by_role.get(ROLE_MLFLOW, [])
        return {
            "entry_url": next((records[s.name].get("entry_url") for s in by_role.get(ROLE_BALANCER, [])), None),
            "mlflow_url": MLFLOW_PRIVATE_URL if tracking else None,
            "mlflow_address": f"http://{records[tracking[0].name]['address']}:{contract.MLFLOW_PORT}" if tracking else None,
            "replicas": {
                s.name: {"url": f"http://{records[s.name]['address']}:{contract.REPLICA_PORT}", "weight": s.weight}
                for s in by_role.get(ROLE_REPLICA, [])
            },
            "s3_endpoint": next(
                (f"http://{records[s.name]['address']}:{contract.MINIO_PORT}" for s in by_role.get(ROLE_MINIO, [])), None
            ),
            "mysql_address": next((records[s.name]["address"] for s in by_role.get(ROLE_MYSQL, [])), None),
        }


def promote(stack: LocalStack, c: float = 0.5) -> dict[str, Any]:
    """The promotion demo: the declared trainer, run by hand with `--promote` and another
    hyper-parameter, registers a new version and moves the alias. Replicas pick it up by
    polling; nothing is restarted. Only-if-empty is switched off for this run: it is what
    makes the stack's own trainer run a no-op once a model exists."""
    out = stack.run_oneshot(ROLE_TRAINER, ["--promote", "--c", str(c)], {contract.ENV_TRAINER_ONLY_IF_EMPTY: "0"})
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise StackError(f"the trainer printed no result line:\n{out}")
    result: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps(result))
    return result
