"""The nginx stand-in with keys and TLS: the uploads beside nginx.conf land under its prefix at the
paths the conf names, and the entry URL says https when the conf serves TLS only."""

from __future__ import annotations

from pathlib import Path

from app import contract
from mockrun import run_program
from nginx.render import API_KEYS_FILE, TLS_CERT_FILE, TLS_KEY_FILE
from procstack import standins
from procstack import translate as tr
from procstack.state import Paths
from stackconfig.names import ROLE_BALANCER
from tests.tls import self_signed


def balancer(overrides: dict[str, object], secrets: dict[str, object] | None = None) -> tr.Service:
    (service,) = [s for s in tr.services(run_program("dev", overrides, secrets=secrets)) if s.role == ROLE_BALANCER]
    return service


def test_keys_and_tls_material_are_written_where_the_conf_finds_them(tmp_path: Path) -> None:
    cert = self_signed()
    service = balancer({"apiKeys": ["ci"], "tlsCertificate": cert.certificate}, {"tlsKey": cert.key})
    nginx = standins.stand_in(service, "127.0.0.99", Paths(tmp_path))
    assert isinstance(nginx, standins.Nginx)
    prefix = nginx.prefix
    files = nginx.side_files()
    assert set(files) == {prefix / API_KEYS_FILE, prefix / TLS_CERT_FILE, prefix / TLS_KEY_FILE}
    assert files[prefix / TLS_KEY_FILE] == cert.key and '"mock-password-api-key-ci" ci;' in files[prefix / API_KEYS_FILE]
    assert nginx.port == contract.BALANCER_TLS_PORT


def test_without_keys_or_tls_only_the_conf_is_written(tmp_path: Path) -> None:
    nginx = standins.stand_in(balancer({}), "127.0.0.99", Paths(tmp_path))
    assert isinstance(nginx, standins.Nginx)
    assert nginx.side_files() == {} and nginx.port == contract.BALANCER_PORT
