"""The reconciler: the declared containers against the running processes, as `pulumi up` would.

Containers are matched by name and compared by the digest of their declared inputs: unchanged
ones are left alone (no restart, no nginx reload), changed ones are replaced (a one-shot job
that did not finish, and a service whose process is gone, count as changed), new ones started,
removed ones stopped. Starts follow `stackconfig.names.ROLES` (the database and the bucket exist
before MLflow, a model before the replicas); stops run it backwards. Names follow each step
(publish.py): a new container is published once it is ready, a removed or replaced one is
withdrawn before it is stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Literal

from stackconfig.names import ROLES

from . import procs
from .dns import DNS_ADDRESS
from .publish import DNS_NAME, NamePublisher, name_table
from .standins import stand_in
from .state import Record, StackState
from .translate import Service

Action = Literal["keep", "start", "replace"]
KEEP: Final = "keep"
START: Final = "start"
REPLACE: Final = "replace"
STOP_GRACE_S = 15.0

Log = Callable[[str], Any]


def action(service: Service, record: Record | None, alive: Callable[[int, str | None], bool]) -> Action:
    """What `up` does with a declared container, given the record of its process (None: none)
    and how to tell whether a recorded process still runs."""
    if record is None:
        return START
    if record.get("digest") != service.digest:
        return REPLACE
    if service.oneshot:
        return KEEP if record.get("done") else REPLACE
    return KEEP if alive(record["pid"], record.get("started")) else REPLACE


def stop_order(records: Mapping[str, Record]) -> list[str]:
    """Names in the order to stop them: roles in reverse start order (within a role, in the
    order they were started), the DNS stand-in last. A record of no known role (written by an
    older procstack) goes first, as if of the last role."""

    def rank(name: str) -> int:
        role = records[name].get("role")
        if name == DNS_NAME:
            return -1
        return ROLES.index(role) if role in ROLES else len(ROLES)

    return sorted(records, key=lambda name: -rank(name))


def gone(wanted: Sequence[Service], records: Mapping[str, Record]) -> list[str]:
    """Running containers the program no longer declares, in stop order."""
    names = {s.name for s in wanted}
    return stop_order({n: r for n, r in records.items() if n not in names and n != DNS_NAME})


class Reconciler:
    def __init__(self, state: StackState) -> None:
        self.state = state
        self.names = NamePublisher(state.paths)

    @property
    def records(self) -> dict[str, Record]:
        return self.state.records

    def apply(self, wanted: Sequence[Service], log: Log) -> None:
        """Make the running processes what `wanted` (in start order) declares."""
        self.ensure_dns(wanted)
        stopping = gone(wanted, self.records)
        if stopping:
            self.publish(wanted)
            for name in stopping:
                log(f"stopping {name} (no longer declared)")
                self.stop(name)
        for service in wanted:
            todo = action(service, self.records.get(service.name), procs.alive)
            if todo == KEEP:
                continue
            if todo == REPLACE:
                log(f"replacing {service.name} (declared inputs changed or process gone)")
                self.publish(wanted, exclude={service.name})
                self.stop(service.name)
            log(f"starting {service.name} ({service.role}) on {self.state.address(service.name)}")
            self.start(service)
            self.publish(wanted)
        self.publish(wanted)

    def start(self, service: Service) -> None:
        address = self.state.address(service.name)
        base: Record = {"role": service.role, "digest": service.digest, "address": address, "resource": service.resource}

        def started(pid: int, argv: list[str]) -> None:
            self.records[service.name] = {**base, "pid": pid, "argv": argv, "started": procs.start_time(pid)}
            self.state.save()

        facts = stand_in(service, address, self.state.paths).start(started)
        if service.oneshot:
            self.records[service.name] = {**base, "pid": 0, "argv": [], "done": True, **facts}
        else:
            self.records[service.name].update(facts)
        self.state.save()

    def stop(self, name: str) -> None:
        record = self.records.pop(name, None)
        if record and record.get("pid"):
            procs.stop(record["pid"], record.get("started"), STOP_GRACE_S)
        self.state.save()

    def stop_all(self, log: Log) -> None:
        for name in stop_order(self.records):
            if self.records[name].get("pid"):
                log(f"stopping {name}")
            self.stop(name)
        self.names.withdraw()

    def ensure_dns(self, wanted: Sequence[Service]) -> None:
        record = self.records.get(DNS_NAME)
        if record and procs.alive(record["pid"], record.get("started")):
            return
        self.publish(wanted)

        def started(pid: int, argv: list[str]) -> None:
            self.records[DNS_NAME] = {
                "role": DNS_NAME,
                "digest": "",
                "pid": pid,
                "argv": argv,
                "address": DNS_ADDRESS,
                "started": procs.start_time(pid),
            }
            self.state.save()

        self.names.start_dns(started)

    def publish(self, wanted: Sequence[Service], exclude: Collection[str] = frozenset()) -> None:
        """Names of the declared containers that run, except `exclude`: the ones no longer
        declared drop out, a new one comes in only once it was started."""
        self.names.publish(name_table(wanted, self.records, exclude))
