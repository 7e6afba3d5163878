"""procstack.dns: the DNS stand-in's answers from its table (asked directly, without a socket)."""

from __future__ import annotations

import os

from dnslib import RCODE, DNSRecord

from procstack import dns, procs


def _ask(resolver: dns.TableResolver, name: str, qtype: str = "A") -> tuple[int, list[str]]:
    reply = resolver.resolve(DNSRecord.question(name, qtype), None)
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr]


def test_answers_every_address_of_a_name_and_nxdomain_for_the_rest(tmp_path):
    table = tmp_path / "t.json"
    me = (os.getpid(), procs.start_time(os.getpid()))
    dns.write_hosts(table, {"Replica-W1": ["127.0.0.22", "127.0.0.21"]}, {"127.0.0.21": me, "127.0.0.22": me})
    resolver = dns.TableResolver(table)
    assert _ask(resolver, "replica-w1") == (RCODE.NOERROR, ["127.0.0.21", "127.0.0.22"])
    assert _ask(resolver, "replica-w1", "AAAA") == (RCODE.NOERROR, [])
    assert _ask(resolver, "replica-w2") == (RCODE.NXDOMAIN, [])


def test_an_address_whose_process_is_gone_is_left_out(tmp_path):
    table = tmp_path / "t.json"
    dns.write_hosts(table, {"replica-w1": ["127.0.0.21", "127.0.0.23"]}, {"127.0.0.21": (os.getpid(), "0")})
    # 127.0.0.21's process is not the one started at tick 0; 127.0.0.23 has no process to check.
    assert _ask(dns.TableResolver(table), "replica-w1") == (RCODE.NOERROR, ["127.0.0.23"])


def test_a_missing_or_broken_table_keeps_the_last_good_answers(tmp_path):
    table = tmp_path / "t.json"
    resolver = dns.TableResolver(table)
    assert _ask(resolver, "mysql") == (RCODE.NXDOMAIN, [])
    dns.write_hosts(table, {"mysql": ["127.0.0.20"]}, {})
    assert _ask(resolver, "mysql") == (RCODE.NOERROR, ["127.0.0.20"])
    table.write_text("{not json")
    os.utime(table, ns=(1, 1))
    assert _ask(resolver, "mysql") == (RCODE.NOERROR, ["127.0.0.20"])


def test_a_rewrite_with_the_same_timestamp_is_seen(tmp_path):
    """Two writes within one clock tick (same mtime) must not leave the older table answering."""
    table = tmp_path / "t.json"
    dns.write_hosts(table, {"replica-w1": ["127.0.0.21"]}, {})
    stamp = table.stat().st_mtime_ns
    resolver = dns.TableResolver(table)
    assert _ask(resolver, "replica-w1") == (RCODE.NOERROR, ["127.0.0.21"])
    dns.write_hosts(table, {"replica-w1": ["127.0.0.22"]}, {})
    os.utime(table, ns=(stamp, stamp))
    assert _ask(resolver, "replica-w1") == (RCODE.NOERROR, ["127.0.0.22"])
