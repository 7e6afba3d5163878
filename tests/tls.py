"""A throwaway self-signed certificate for the TLS tests (openssl, generated per session)."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestCertificate:
    certificate: str  # PEM
    key: str  # PEM
    cert_path: Path  # for clients that verify against it


@functools.cache
def self_signed(common_name: str = "localhost", ip: str = "127.0.0.5") -> TestCertificate:
    directory = Path(tempfile.mkdtemp(prefix="mlserve-tls-"))
    # A private key, even a throwaway one, does not stay behind in /tmp.
    atexit.register(shutil.rmtree, directory, True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(directory / "key.pem"),
         "-out", str(directory / "cert.pem"), "-days", "2", "-subj", f"/CN={common_name}",
         "-addext", f"subjectAltName=DNS:{common_name},IP:{ip}"],
        check=True, capture_output=True, timeout=60,
    )
    return TestCertificate((directory / "cert.pem").read_text(), (directory / "key.pem").read_text(), directory / "cert.pem")
