"""API keys, rate limits, CORS origins and TLS material in the settings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stackconfig.settings import ConfigError, Settings, parse
from tests.tls import self_signed


def access(**raw: Any) -> Settings:
    # tlsKey is a secret key: here as if set with `pulumi config set --secret`.
    return parse("s", {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, secret_keys=("tlsKey",))


def test_by_default_the_entry_is_open_plain_http_and_unlimited() -> None:
    balancer = parse("s", {}).balancer
    assert balancer.access.api_keys == () and balancer.access.cors_origins == ()
    assert balancer.access.rate_per_key is None and balancer.access.rate_per_client is None and balancer.access.burst is None
    assert balancer.tls is None


def test_keys_limits_and_origins() -> None:
    a = access(apiKeys=["ci", "alice-2"], rateLimitPerKey=100, rateLimitPerClient=20, rateLimitBurst=0,
               corsOrigins=["https://app.example.com", "http://localhost:3000"]).balancer.access
    assert a.api_keys == ("ci", "alice-2") and (a.rate_per_key, a.rate_per_client, a.burst) == (100, 20, 0)
    assert a.cors_origins == ("https://app.example.com", "http://localhost:3000")


def test_tls_material_is_kept_out_of_reprs() -> None:
    cert = self_signed()
    tls = access(tlsCertificate=cert.certificate, tlsKey=cert.key).balancer.tls
    assert tls is not None and tls.key.value == cert.key and tls.certificate.value == cert.certificate
    assert "PRIVATE" not in repr(tls) and "PRIVATE" not in repr(access(tlsCertificate=cert.certificate, tlsKey=cert.key))


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"apiKeys": "ci"}, "apiKeys", "list of key names"),
        ({"apiKeys": ["CI"]}, "apiKeys", "lowercase"),
        ({"apiKeys": ["ci", "ci"]}, "apiKeys", "repeat"),
        ({"apiKeys": [""]}, "apiKeys", "1-32"),
        ({"rateLimitPerKey": 10}, "rateLimitPerKey", "apiKeys names none"),
        ({"apiKeys": ["ci"], "rateLimitPerKey": 0}, "rateLimitPerKey", "1 to 1000000"),
        ({"rateLimitPerClient": -1}, "rateLimitPerClient", "1 to 1000000"),
        ({"rateLimitBurst": 5}, "rateLimitBurst", "neither"),
        ({"corsOrigins": "https://a.example"}, "corsOrigins", "list of origins"),
        ({"corsOrigins": ["*"]}, "corsOrigins", "scheme://host"),
        ({"corsOrigins": ["https://a.example/"]}, "corsOrigins", "no path"),
        ({"corsOrigins": ["https://A.example"]}, "corsOrigins", "lowercase"),
        ({"corsOrigins": ["https://a.example", "https://a.example"]}, "corsOrigins", "repeat"),
        ({"tlsCertificate": "x"}, "tlsKey", "must be set too"),
        ({"tlsKey": "x"}, "tlsCertificate", "must be set too"),
    ],
)
def test_invalid_access_names_the_key(raw: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        access(**raw)
    assert caught.value.key == key and words in str(caught.value), str(caught.value)


def test_bad_tls_material_names_the_key_and_never_shows_the_value() -> None:
    cert = self_signed()
    with pytest.raises(ConfigError) as caught:
        access(tlsCertificate=cert.key, tlsKey=cert.key)
    assert caught.value.key == "tlsCertificate" and "PRIVATE" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        access(tlsCertificate=cert.certificate, tlsKey=cert.certificate)
    assert caught.value.key == "tlsKey" and "BEGIN CERTIFICATE" not in str(caught.value)
