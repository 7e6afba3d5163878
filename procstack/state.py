"""The state directory of one local stack, and the state file in it.

`<state dir>/state.json` holds the loopback address given to each container (kept across runs,
so a restarted container keeps its address), the record of every process started (role, digest
of the declared inputs, address, pid and kernel start time; a one-shot job's record says it is
done) and the config overrides in effect. `logs/`, `run/` (sockets, nginx prefix, homes, the DNS
table) and `data/` (the volumes) sit beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StackError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_ROOT = PROJECT_ROOT / ".proc-stack"
FIRST_HOST = 20  # 127.0.0.<20+k>; 127.0.0.11 is the DNS stand-in

Record = dict[str, Any]


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dns_table(self) -> Path:
        return self.run / "dns-hosts.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def rundir(self, name: str) -> Path:
        return self.run / name

    def home(self, name: str) -> Path:
        return self.run / name / "home"


def default_state_dir(stack: str) -> Path:
    return STATE_ROOT / stack


class StackState:
    """The state file's contents (`data`), read under the directory's lock and saved after every
    change, so that a command that fails half-way leaves a state `down` can act on."""

    def __init__(self, stack: str, paths: Paths) -> None:
        self.stack = stack
        self.paths = paths
        self.data: dict[str, Any] = {}

    @property
    def records(self) -> dict[str, Record]:
        """Container (or DNS stand-in) name -> record of its process."""
        records: dict[str, Record] = self.data["procs"]
        return records

    @property
    def overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = self.data["overrides"]
        return overrides

    def load(self) -> None:
        self.data = json.loads(self.paths.state.read_text()) if self.paths.state.exists() else {}
        self.data.setdefault("stack", self.stack)
        self.data.setdefault("addresses", {})
        self.data.setdefault("procs", {})
        self.data.setdefault("overrides", {})
        if self.data["stack"] != self.stack:
            raise StackError(f"{self.paths.root} holds stack {self.data['stack']!r}, not {self.stack!r}")

    def save(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.paths.state)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(f"another procstack command is working on {self.paths.root}") from None
            self.load()
            yield

    def address(self, name: str) -> str:
        """The container's loopback address: the one it had before, else the first free one."""
        addresses: dict[str, str] = self.data["addresses"]
        if name not in addresses:
            used = set(addresses.values())
            for k in range(FIRST_HOST, 255):
                candidate = f"127.0.0.{k}"
                if candidate not in used:
                    addresses[name] = candidate
                    break
            else:
                raise StackError("no loopback address left in 127.0.0.20-254")
        return addresses[name]
