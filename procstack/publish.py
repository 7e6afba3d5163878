"""Name publishing: the names the stack's containers answer to, where the processes look them up.

Two places, always written together from one table (name -> loopback addresses):
- the DNS stand-in's answer table (`run/dns-hosts.json`, read by procstack.dns on
  127.0.0.11:53, the resolver the nginx conf names), with the process behind each address so
  that the server leaves out the address of a process that died, as Docker's DNS forgets a
  stopped container;
- a marked block of /etc/hosts, for every other client (MLflow's `@mysql:3306`, a replica's
  `http://mlflow:5000`, the bucket job's `minio`), removed by `down`.

A name is published once its container is ready and withdrawn before it is stopped: a replica
joins nginx's rotation only when it serves, and leaves it before it goes away (nginx re-resolves
within the conf's `valid=`). One-shot jobs have no names: nothing connects to them.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import dns, procs
from .errors import StackError
from .state import PROJECT_ROOT, Paths, Record
from .translate import Service

HOSTS_FILE = Path(os.environ.get("MLSERVE_HOSTS_FILE", "/etc/hosts"))
HOSTS_BEGIN = "# BEGIN mlserve-procstack"
HOSTS_END = "# END mlserve-procstack"
DNS_NAME = "dns"  # the DNS stand-in's name in the state file (no container has it)
DNS_DEADLINE_S = 15.0


@dataclass(frozen=True)
class NameTable:
    hosts: dict[str, list[str]]  # hostname or alias -> addresses
    processes: dict[str, tuple[int, str | None]]  # address -> (pid, start time) of the process there


def name_table(services: Sequence[Service], records: Mapping[str, Record], exclude: Collection[str] = frozenset()) -> NameTable:
    """Every hostname and alias of the declared long-running containers that have a process
    record (started, and ready unless the start failed), never of those in `exclude`."""
    hosts: dict[str, list[str]] = {}
    processes: dict[str, tuple[int, str | None]] = {}
    for service in services:
        record = records.get(service.name)
        if record is None or service.name in exclude or service.oneshot:
            continue
        address = record["address"]
        if record.get("pid"):
            processes[address] = (record["pid"], record.get("started"))
        for host in service.hostnames:
            hosts.setdefault(host, []).append(address)
    return NameTable(hosts, processes)


class NamePublisher:
    """Writes a stack's name table to the DNS stand-in and /etc/hosts; runs the DNS stand-in."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def publish(self, table: NameTable) -> None:
        self.paths.run.mkdir(parents=True, exist_ok=True)
        dns.write_hosts(self.paths.dns_table, table.hosts, table.processes)
        write_hosts_block(table.hosts, self.paths.root)

    def withdraw(self) -> None:
        remove_hosts_block(self.paths.root)

    def start_dns(self, started: Callable[[int, list[str]], None]) -> None:
        """Start the DNS stand-in (answering from the table published last) and wait until it
        answers. `started(pid, argv)` is called before the wait, to record the process."""
        if not procs.port_free(dns.DNS_ADDRESS, dns.DNS_PORT, udp=True):
            raise StackError(
                f"{dns.DNS_ADDRESS}:{dns.DNS_PORT} is taken: another local stack runs (see {HOSTS_FILE}'s "
                f"'{HOSTS_BEGIN}' line), or a DNS server binds it. Stop it first (python -m procstack down)."
            )
        argv = [sys.executable, "-m", "procstack.dns", str(self.paths.dns_table)]
        log = self.paths.log(DNS_NAME)
        pid = procs.start(argv, {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(PROJECT_ROOT)}, PROJECT_ROOT, log)
        started(pid, argv)
        procs.wait_until(_dns_answers, DNS_DEADLINE_S, DNS_NAME, pid, log)


def _dns_answers() -> bool:
    from dnslib import DNSRecord

    DNSRecord.parse(DNSRecord.question("procstack-probe").send(dns.DNS_ADDRESS, dns.DNS_PORT, timeout=0.5))
    return True


# --- /etc/hosts block ---------------------------------------------------------------------------


def _hosts_without_block(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith(HOSTS_BEGIN):
            inside = True
        elif line.startswith(HOSTS_END):
            inside = False
        elif not inside:
            lines.append(line)
    return lines


def write_hosts_block(table: Mapping[str, list[str]], owner: Path, hosts_file: Path | None = None) -> None:
    """Replace the marked block (or add it at the end) with one line per address."""
    by_address: dict[str, list[str]] = {}
    for host, addresses in sorted(table.items()):
        for address in addresses:
            by_address.setdefault(address, []).append(host)
    block = [f"{HOSTS_BEGIN} {owner}"] + [f"{a} {' '.join(h)}" for a, h in sorted(by_address.items())] + [HOSTS_END]
    _rewrite_hosts(lambda lines: lines + block, hosts_file)


def remove_hosts_block(owner: Path, hosts_file: Path | None = None) -> None:
    _rewrite_hosts(lambda lines: lines, hosts_file)


def _rewrite_hosts(edit: Callable[[list[str]], list[str]], hosts_file: Path | None) -> None:
    # Rewritten in place, not replaced: /etc/hosts is often a bind mount.
    with open(hosts_file or HOSTS_FILE, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = edit(_hosts_without_block(f.read()))
        f.seek(0)
        f.write("\n".join(lines) + "\n")
        f.truncate()

