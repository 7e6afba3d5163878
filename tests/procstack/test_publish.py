"""procstack.publish: the name table (which containers' names are published, at which address)
and its two destinations, the DNS stand-in's table and the /etc/hosts block (here a temporary
file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from procstack import dns, publish
from procstack import translate as tr
from procstack.state import Paths
from stackconfig.names import ROLE_BUCKET, ROLE_MYSQL, ROLE_REPLICA

from . import fakes

OTHER_LINES = "127.0.0.1 localhost\n10.1.2.3 other\n"


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hosts = tmp_path / "hosts"
    hosts.write_text(OTHER_LINES)
    monkeypatch.setattr(publish, "HOSTS_FILE", hosts)
    return hosts


def _services() -> list[tr.Service]:
    return tr.services(
        fakes.stack(
            fakes.container("mysql", ROLE_MYSQL, aliases=["mysql"]),
            fakes.container("bucket", ROLE_BUCKET),
            fakes.container("replica-0", ROLE_REPLICA, aliases=["replica-0", "replica-w1"]),
            fakes.container("replica-1", ROLE_REPLICA, aliases=["replica-1", "replica-w1"]),
        )
    )


RECORDS = {
    "mlserve-dev-mysql": {"address": "127.0.0.20", "pid": 100, "started": "7"},
    "mlserve-dev-bucket": {"address": "127.0.0.21", "pid": 0, "done": True},
    "mlserve-dev-replica-0": {"address": "127.0.0.22", "pid": 102, "started": "9"},
}


def test_running_containers_publish_every_name_and_alias_jobs_none():
    table = publish.name_table(_services(), RECORDS)
    assert table.hosts == {
        "mlserve-dev-mysql": ["127.0.0.20"],
        "mysql": ["127.0.0.20"],
        "mlserve-dev-replica-0": ["127.0.0.22"],
        "replica-0": ["127.0.0.22"],
        "replica-w1": ["127.0.0.22"],
    }
    assert table.processes == {"127.0.0.20": (100, "7"), "127.0.0.22": (102, "9")}
    # replica-1 is declared but was not started: it has no name yet, and adds nobody to replica-w1.


def test_excluded_containers_are_left_out_and_the_others_keep_their_shared_aliases():
    records = {**RECORDS, "mlserve-dev-replica-1": {"address": "127.0.0.23", "pid": 103, "started": "9"}}
    table = publish.name_table(_services(), records, exclude={"mlserve-dev-replica-0"})
    assert table.hosts["replica-w1"] == ["127.0.0.23"] and table.hosts["replica-1"] == ["127.0.0.23"]
    assert "replica-0" not in table.hosts and "127.0.0.22" not in table.processes


def test_hosts_block_is_replaced_and_removed_without_touching_other_lines(hosts):
    publish.write_hosts_block({"mysql": ["127.0.0.20"], "replica-w1": ["127.0.0.25", "127.0.0.26"]}, Path("/x"))
    assert hosts.read_text() == (
        f"{OTHER_LINES}{publish.HOSTS_BEGIN} /x\n127.0.0.20 mysql\n127.0.0.25 replica-w1\n127.0.0.26 replica-w1\n{publish.HOSTS_END}\n"
    )
    publish.write_hosts_block({"mysql": ["127.0.0.20"]}, Path("/x"))
    text = hosts.read_text()
    assert text.count(publish.HOSTS_BEGIN) == 1 and "127.0.0.20 mysql" in text and "replica-w1" not in text
    publish.remove_hosts_block(Path("/x"))
    assert hosts.read_text() == OTHER_LINES


def test_one_line_per_address_with_all_its_names(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    publish.write_hosts_block({"replica-0": ["127.0.0.22"], "replica-w1": ["127.0.0.22"]}, Path("/x"), hosts)
    assert "127.0.0.22 replica-0 replica-w1\n" in hosts.read_text()


def test_publisher_writes_the_dns_table_and_the_hosts_block_from_one_table(hosts, tmp_path):
    paths = Paths(tmp_path / "state")
    publisher = publish.NamePublisher(paths)
    table = publish.name_table(_services(), RECORDS)
    publisher.publish(table)
    assert "127.0.0.22 mlserve-dev-replica-0 replica-0 replica-w1" in hosts.read_text()

    # What the DNS stand-in answers from that table (it also checks that pid 102 runs: it does not).
    assert _answer(paths, "nowhere") == (RCODE.NXDOMAIN, [])
    assert _answer(paths, "replica-w1") == (RCODE.NXDOMAIN, [])
    publisher.publish(publish.NameTable({"replica-w1": ["127.0.0.22"]}, {}))
    assert _answer(paths, "Replica-W1") == (RCODE.NOERROR, ["127.0.0.22"])

    publisher.withdraw()
    assert hosts.read_text() == OTHER_LINES


def _answer(paths: Paths, name: str) -> tuple[int, list[str]]:
    reply = dns.TableResolver(paths.dns_table).resolve(DNSRecord.question(name), None)
    return reply.header.rcode, [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
