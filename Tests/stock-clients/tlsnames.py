"""What the TLS and HAProxy tests share: a certificate for `*.chat.test`, `*.chat.test` resolving
to 127.0.0.1 (redis-py sends the host it connects to as the server name), and reading a socket
until the server closes it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from conftest import SUBPROCESS_TIMEOUT

DOMAIN = "chat.test"


def make_certificate(directory: Path, name: str = "chat") -> None:
    """`cert.pem` and `key.pem` in `directory`, self-signed, for `*.chat.test` and loopback."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:*.{DOMAIN},DNS:{DOMAIN},DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT)


@pytest.fixture(autouse=True)
def resolve_chat_test(monkeypatch):
    """`<anything>.chat.test` is 127.0.0.1 for this process (a test module imports this fixture)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and (host == DOMAIN or host.endswith("." + DOMAIN)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def read_until_closed(raw: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    while True:
        try:
            chunk = raw.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
