"""procstack.reconcile: the diff between declared containers and running processes (on declared
stacks made by hand and on the program's own), and the order in which `up` and `down` act on it
(with stand-ins, processes and name publishing faked: nothing is started)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from mockrun import run_program
from procstack import procs, reconcile
from procstack import translate as tr
from procstack.publish import DNS_NAME, NameTable
from procstack.reconcile import KEEP, REPLACE, START, Reconciler, action, gone, stop_order
from procstack.state import Paths, StackState
from stackconfig.names import ROLE_BALANCER, ROLE_BUCKET, ROLE_MINIO, ROLE_MYSQL, ROLE_REPLICA, ROLE_TRAINER

from . import fakes


def _service(resource: str, role: str, **inputs: Any) -> tr.Service:
    return tr.service(fakes.container(resource, role, **inputs))


def _record(service: tr.Service, pid: int = 1000, **extra: Any) -> dict[str, Any]:
    return {"role": service.role, "digest": service.digest, "pid": pid, "started": "1", **extra}


def _always(alive: bool) -> Any:
    return lambda pid, started: alive


def test_a_container_without_a_process_is_started():
    assert action(_service("replica-0", ROLE_REPLICA), None, _always(True)) == START


def test_an_unchanged_running_container_is_kept_a_changed_or_dead_one_replaced():
    replica = _service("replica-0", ROLE_REPLICA, envs=["A=1"])
    assert action(replica, _record(replica), _always(True)) == KEEP
    assert action(replica, _record(replica), _always(False)) == REPLACE
    changed = _service("replica-0", ROLE_REPLICA, envs=["A=2"])
    assert action(changed, _record(replica), _always(True)) == REPLACE


def test_a_finished_job_is_kept_an_unfinished_one_run_again():
    trainer = _service("trainer", ROLE_TRAINER)
    assert action(trainer, _record(trainer, pid=0, done=True), _always(False)) == KEEP
    assert action(trainer, _record(trainer), _always(True)) == REPLACE


def test_stop_order_is_the_start_order_backwards_and_the_dns_stand_in_last():
    records = {
        DNS_NAME: {"role": DNS_NAME},
        "db": {"role": ROLE_MYSQL},
        "replica-0": {"role": ROLE_REPLICA},
        "lb": {"role": ROLE_BALANCER},
        "replica-1": {"role": ROLE_REPLICA},
        "s3": {"role": ROLE_MINIO},
        "old": {"kind": "tracking"},  # written by an older procstack: no role
    }
    assert stop_order(records) == ["old", "lb", "replica-0", "replica-1", "s3", "db", DNS_NAME]


def test_gone_are_the_running_containers_no_longer_declared_in_stop_order():
    wanted = [_service("db", ROLE_MYSQL), _service("replica-0", ROLE_REPLICA)]
    records = {
        DNS_NAME: {"role": DNS_NAME},
        "mlserve-dev-db": {"role": ROLE_MYSQL},
        "mlserve-dev-s3": {"role": ROLE_MINIO},
        "mlserve-dev-replica-0": {"role": ROLE_REPLICA},
        "mlserve-dev-replica-1": {"role": ROLE_REPLICA},
    }
    assert gone(wanted, records) == ["mlserve-dev-replica-1", "mlserve-dev-s3"]


def _running(services: Sequence[tr.Service]) -> dict[str, dict[str, Any]]:
    return {s.name: _record(s, pid=0, done=True) if s.oneshot else _record(s) for s in services}


def test_scaling_the_declared_stack_out_starts_only_the_new_replicas(declared):
    running = _running(tr.services(declared))
    wanted = tr.services(run_program("dev", {"replicas": 5, "weights": [1, 2, 2, 1, 1]}))
    plan = {s.name: action(s, running.get(s.name), _always(True)) for s in wanted}
    assert {n for n, a in plan.items() if a != KEEP} == {"mlserve-dev-replica-3", "mlserve-dev-replica-4"}
    assert {plan["mlserve-dev-replica-3"], plan["mlserve-dev-replica-4"]} == {START}
    assert gone(wanted, running) == []


def test_scaling_the_declared_stack_in_stops_only_the_last_replicas(declared):
    running = _running(tr.services(run_program("dev", {"replicas": 5, "weights": [1, 2, 2, 1, 1]})))
    wanted = tr.services(declared)
    assert gone(wanted, running) == ["mlserve-dev-replica-3", "mlserve-dev-replica-4"]
    assert {action(s, running[s.name], _always(True)) for s in wanted} == {KEEP}


def test_a_changed_weight_replaces_that_replica_only(declared):
    running = _running(tr.services(declared))
    wanted = tr.services(run_program("dev", {"replicas": 3, "weights": [1, 2, 3]}))
    assert [s.name for s in wanted if action(s, running[s.name], _always(True)) != KEEP] == ["mlserve-dev-replica-2"]


# --- up and down, in order: what is started, stopped and published when ---------------------------


class _FakeStandIn:
    def __init__(self, service: tr.Service, events: list[tuple[str, Any]], pids: dict[int, str]) -> None:
        self.service, self.events, self.pids = service, events, pids

    def start(self, started: Any) -> dict[str, Any]:
        self.events.append(("start", self.service.resource))
        if self.service.oneshot:
            return {"argv": ["job"]}
        pid = 1000 + len(self.pids)
        self.pids[pid] = self.service.resource
        started(pid, ["fake", self.service.resource])
        return {"entry_url": "http://x"} if self.service.role == ROLE_BALANCER else {}


class _FakeNames:
    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events

    def publish(self, table: NameTable) -> None:
        self.events.append(("publish", frozenset(h for h in table.hosts if not h.startswith("mlserve-"))))

    def withdraw(self) -> None:
        self.events.append(("withdraw", None))

    def start_dns(self, started: Any) -> None:
        self.events.append(("start", DNS_NAME))
        started(999, ["dns"])


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    """A Reconciler whose stand-ins, processes and name publishing only write down events."""
    events: list[tuple[str, Any]] = []
    pids: dict[int, str] = {999: DNS_NAME}
    monkeypatch.setattr(reconcile, "stand_in", lambda service, address, paths: _FakeStandIn(service, events, pids))
    monkeypatch.setattr(procs, "start_time", lambda pid: "1")
    monkeypatch.setattr(procs, "alive", lambda pid, started=None: pid in pids)

    def stop(pid: int, started: Any, grace_s: float) -> None:
        if pid in pids:  # as procs.stop: a process that is gone needs no stopping
            events.append(("stop", pids.pop(pid)))

    monkeypatch.setattr(procs, "stop", stop)
    state = StackState("dev", Paths(tmp_path))
    state.load()
    reconciler = Reconciler(state)
    reconciler.names = _FakeNames(events)  # type: ignore[assignment]
    return reconciler, events, pids


def _stack(*extra: Any, replica0_env: str = "A=1") -> list[tr.Service]:
    return tr.services(
        fakes.stack(
            fakes.container("lb", ROLE_BALANCER, aliases=["lb"]),
            fakes.container("replica-0", ROLE_REPLICA, envs=[replica0_env], aliases=["replica-0", "replica-w1"]),
            fakes.container("bucket", ROLE_BUCKET),
            fakes.container("db", ROLE_MYSQL, aliases=["db"]),
            *extra,
        )
    )


def _published_before_started(events: list[tuple[str, Any]], running: set[str]) -> list[str]:
    """Names that were published while their container was not running (`running`: those that
    ran before the events)."""
    running = set(running)
    early = []
    for kind, what in events:
        if kind == "start":
            running.add(what)
        elif kind == "stop":
            running.discard(what)
        elif kind == "publish":
            early += sorted(h for h in what if not h.startswith("replica-w") and h not in running)
    return early


def test_up_starts_the_dns_stand_in_then_each_role_in_order_publishing_each_once_ready(fake_world):
    reconciler, events, _ = fake_world
    reconciler.apply(_stack(), log=lambda line: None)
    assert [what for kind, what in events if kind == "start"] == [DNS_NAME, "db", "bucket", "replica-0", "lb"]
    assert _published_before_started(events, set()) == []
    assert events[-1] == ("publish", frozenset({"db", "replica-0", "replica-w1", "lb"}))
    records = reconciler.records
    assert records["mlserve-dev-bucket"]["done"] and records["mlserve-dev-bucket"]["argv"] == ["job"]
    assert records["mlserve-dev-lb"]["entry_url"] == "http://x"
    assert records["mlserve-dev-replica-0"]["role"] == ROLE_REPLICA


def test_up_again_with_nothing_changed_touches_nothing(fake_world):
    reconciler, events, _ = fake_world
    reconciler.apply(_stack(), log=lambda line: None)
    events.clear()
    reconciler.apply(_stack(), log=lambda line: None)
    assert [e for e in events if e[0] != "publish"] == []


def test_up_withdraws_a_changed_or_removed_container_before_stopping_it(fake_world):
    reconciler, events, pids = fake_world
    reconciler.apply(
        _stack(fakes.container("replica-1", ROLE_REPLICA, aliases=["replica-1", "replica-w1"])), log=lambda line: None
    )
    events.clear()
    lines: list[str] = []
    reconciler.apply(_stack(replica0_env="A=2"), log=lines.append)  # replica-1 removed, replica-0 changed
    assert [e for e in events if e[0] != "publish"] == [
        ("stop", "replica-1"),
        ("stop", "replica-0"),
        ("start", "replica-0"),
    ]
    stop_1 = events.index(("stop", "replica-1"))
    assert "replica-1" not in events[stop_1 - 1][1]  # published without it, then stopped
    stop_0 = events.index(("stop", "replica-0"))
    assert events[stop_0 - 1] == ("publish", frozenset({"db", "lb"}))
    assert lines == [
        "stopping mlserve-dev-replica-1 (no longer declared)",
        "replacing mlserve-dev-replica-0 (declared inputs changed or process gone)",
        f"starting mlserve-dev-replica-0 (replica) on {reconciler.records['mlserve-dev-replica-0']['address']}",
    ]
    assert set(reconciler.records) == {DNS_NAME, "mlserve-dev-db", "mlserve-dev-bucket", "mlserve-dev-replica-0", "mlserve-dev-lb"}
    assert set(pids.values()) == {DNS_NAME, "db", "replica-0", "lb"}


def test_up_replaces_a_dead_process_and_restarts_a_dead_dns_stand_in(fake_world):
    reconciler, events, pids = fake_world
    reconciler.apply(_stack(), log=lambda line: None)
    for pid, what in list(pids.items()):
        if what in ("replica-0", DNS_NAME):
            del pids[pid]
    events.clear()
    reconciler.apply(_stack(), log=lambda line: None)
    assert [e for e in events if e[0] == "start"] == [("start", DNS_NAME), ("start", "replica-0")]


def test_down_stops_in_reverse_start_order_the_dns_stand_in_last_and_withdraws_the_names(fake_world):
    reconciler, events, pids = fake_world
    reconciler.apply(_stack(), log=lambda line: None)
    events.clear()
    lines: list[str] = []
    reconciler.stop_all(log=lines.append)
    assert events == [("stop", "lb"), ("stop", "replica-0"), ("stop", "db"), ("stop", DNS_NAME), ("withdraw", None)]
    assert reconciler.records == {} and pids == {}
    # A finished job has no process to stop: nothing is said about it.
    assert lines == [f"stopping {n}" for n in ("mlserve-dev-lb", "mlserve-dev-replica-0", "mlserve-dev-db", DNS_NAME)]


def test_a_new_container_is_not_published_before_it_started_while_another_is_replaced(fake_world):
    reconciler, events, pids = fake_world
    reconciler.apply(_stack(), log=lambda line: None)
    events.clear()
    running = set(pids.values())
    new = fakes.container("replica-1", ROLE_REPLICA, aliases=["replica-1", "replica-w1"])
    reconciler.apply(_stack(new, replica0_env="A=2"), log=lambda line: None)
    assert [e for e in events if e[0] != "publish"] == [("stop", "replica-0"), ("start", "replica-0"), ("start", "replica-1")]
    assert _published_before_started(events, running) == []
