"""The stand-in for Docker's embedded DNS server (127.0.0.11:53 inside a container network).

nginx's `resolver 127.0.0.11` line is used unchanged: this server answers A queries for the
container hostnames and network aliases of the running local stack (for example every
`replica-w<W>` alias with the loopback addresses of the running replicas of weight W), and
NXDOMAIN for everything else, as Docker's DNS does for names it does not know and for which
it has no upstream (nothing outside loopback is reachable here anyway).

It runs as its own process (`python -m procstack.dns <hosts.json>`), because the stack must
outlive the `up` command. The runner changes the answers by atomically replacing the JSON
file; the server re-reads it when its modification time changes, so scaling never restarts
the server (or nginx).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from nginx.render import RESOLVER_ADDRESS

DNS_ADDRESS = RESOLVER_ADDRESS  # the resolver the rendered nginx.conf names (Docker's DNS)

DNS_PORT = 53
# Docker answers container names with TTL 600; nginx overrides it with `valid=`, so the TTL we
# send only matters to other clients. Keep it short so a test client never caches a stale set.
ANSWER_TTL_S = 1


def write_hosts(path: Path, hosts: dict[str, list[str]], processes: dict[str, tuple[int, str | None]]) -> None:
    """Atomically replace the answer table the server reads.

    `hosts`: name -> addresses; `processes`: address -> (pid, start time) of the process behind
    it. Like Docker's DNS, which forgets a container once it stops, an address whose process
    is gone (a crashed replica) is left out of the answers until the runner starts it again.
    """
    tmp = path.with_suffix(".tmp")
    table = {
        "hosts": {k.lower(): sorted(v) for k, v in sorted(hosts.items())},
        "processes": {addr: list(p) for addr, p in sorted(processes.items())},
    }
    tmp.write_text(json.dumps(table, indent=1))
    os.replace(tmp, path)


def _alive(pid: int, started: str | None) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and (started is None or fields[19] == started)


class TableResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._table: dict[str, Any] = {"hosts": {}, "processes": {}}

    def table(self) -> dict[str, Any]:
        """The table as last written. Read on every query: nginx asks a few times per second at
        most, and a cache keyed on the file's mtime missed two writes within one clock tick."""
        with self._lock:
            try:
                self._table = json.loads(self._path.read_text())
            except (OSError, ValueError):
                pass  # not written yet, or unreadable: keep answering with the last good table
            return self._table

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        table = self.table()
        processes = table.get("processes", {})
        addresses = [a for a in table.get("hosts", {}).get(name, []) if a not in processes or _alive(*processes[a])]
        if not addresses:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for address in addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=ANSWER_TTL_S))
        # AAAA for a known name: NOERROR with no answer (the name exists, it has no IPv6 address).
        return reply


def serve(hosts_file: Path, address: str = DNS_ADDRESS, port: int = DNS_PORT) -> None:
    resolver = TableResolver(hosts_file)
    logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    udp = DNSServer(resolver, address=address, port=port, logger=logger)
    tcp = DNSServer(resolver, address=address, port=port, tcp=True, logger=logger)
    udp.start_thread()
    tcp.start_thread()
    print(f"dns ready on {address}:{port}", flush=True)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    udp.stop()
    tcp.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: python -m procstack.dns <hosts.json> [address] [port]")
    serve(Path(args[0]), args[1] if len(args) > 1 else DNS_ADDRESS, int(args[2]) if len(args) > 2 else DNS_PORT)
