"""TLS, and the tenant from the TLS server name (issue 11, points 1 and 2), with stock clients.

A certificate for `*.chat.test` is made with openssl; the server runs with `--tls-port 0` and
`TENANT_DOMAIN=chat.test`. redis-cli connects with `--tls --sni`, redis-py with `ssl=True`
(its server name is the host it connects to, so `*.chat.test` resolves to 127.0.0.1 here).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from conftest import READY_RE, SOCKET_TIMEOUT, SUBPROCESS_TIMEOUT, TENANTD_BIN, _clean_env

DOMAIN = "chat.test"


def _make_certificate(directory: Path, name: str) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:*.{DOMAIN},DNS:{DOMAIN},DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT)


@pytest.fixture(scope="module")
def tls_server():
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    root = Path(tempfile.mkdtemp(prefix="tenantd-tls-"))
    _make_certificate(root, "first")
    token = secrets.token_hex(32)
    env = _clean_env(token)
    env["TENANT_DOMAIN"] = DOMAIN
    proc = subprocess.Popen(
        [str(TENANTD_BIN), "--port", "0", "--data-dir", str(root / "data"), "--metrics-port", "0",
         "--tls-port", "0", "--tls-cert-file", str(root / "cert.pem"), "--tls-key-file", str(root / "key.pem")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        line = proc.stdout.readline().decode().rstrip("\n")
        match = READY_RE.match(line)
        assert match and " tls_port=" in line, f"ready line: {line!r}"
        tls_port = int(line.split(" tls_port=")[1].split()[0])
        assert tls_port > 0
        yield {"port": int(match.group(2)), "tls_port": tls_port, "token": token, "root": root, "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == 0
        proc.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def resolve_chat_test(monkeypatch):
    """`<anything>.chat.test` is 127.0.0.1 for this process (redis-py sends its host as SNI)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and (host == DOMAIN or host.endswith("." + DOMAIN)):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _tenant(srv, subdomain: str) -> dict:
    with redis.Redis(port=srv["port"], username="admin", password=srv["token"], protocol=2,
                     decode_responses=True, socket_timeout=SOCKET_TIMEOUT) as op:
        flat = op.execute_command("TENANT", "CREATE", subdomain, subdomain, "OWNER", "alice")
    return dict(zip(flat[0::2], flat[1::2]))


def _tls_client(srv, host: str, username: str, password: str, protocol: int = 3) -> redis.Redis:
    return redis.Redis(host=host, port=srv["tls_port"], username=username, password=password, protocol=protocol,
                       ssl=True, ssl_ca_certs=str(srv["root"] / "cert.pem"), decode_responses=True,
                       socket_timeout=SOCKET_TIMEOUT)


def _cli(srv, sni: str, user: str, password: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(srv["tls_port"]), "--tls", "--cacert", str(srv["root"] / "cert.pem"),
         "--sni", sni, "--user", user, "--pass", password, "--no-auth-warning", *command],
        capture_output=True, timeout=SUBPROCESS_TIMEOUT)


def test_redis_cli_with_sni_logs_in_by_plain_user_name(tls_server):
    acme = _tenant(tls_server, "acme-" + secrets.token_hex(2))
    sni = f"{acme['subdomain']}.{DOMAIN}"
    posted = _cli(tls_server, sni, "alice", acme["owner_token"], "POST", "general", "over tls")
    assert (posted.returncode, posted.stdout) == (0, b"1\n"), posted.stderr
    who = _cli(tls_server, sni, "alice", acme["owner_token"], "WHOAMI")
    assert who.stdout.decode().split("\n")[:2] == [acme["tenant_id"], "alice"]


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_redis_py_ssl_with_the_tenant_from_the_server_name(tls_server, protocol):
    acme = _tenant(tls_server, "py-" + secrets.token_hex(2))
    host = f"{acme['subdomain']}.{DOMAIN}"
    with _tls_client(tls_server, host, "alice", acme["owner_token"], protocol) as alice:
        assert alice.execute_command("POST", "general", "from redis-py over tls") == 1
        assert alice.execute_command("WHOAMI")[:2] == [acme["tenant_id"], "alice"]
    # The same credential in the user@tenant form works too; so does the operator.
    with _tls_client(tls_server, host, "alice@" + acme["subdomain"], acme["owner_token"], protocol) as alice:
        assert alice.ping() is True
    with _tls_client(tls_server, host, "admin", tls_server["token"], protocol) as admin:
        assert admin.execute_command("WHOAMI")[0] == acme["tenant_id"]


def test_another_tenants_credential_or_an_unknown_name_is_wrongpass(tls_server):
    acme = _tenant(tls_server, "acme2-" + secrets.token_hex(2))
    globex = _tenant(tls_server, "globex-" + secrets.token_hex(2))
    sni = f"{acme['subdomain']}.{DOMAIN}"
    # Credentials that work on the plain port (user@tenant) are refused under another tenant's name.
    for user, password in [("alice@" + globex["subdomain"], globex["owner_token"]),
                           ("alice@" + globex["tenant_id"], globex["owner_token"])]:
        with redis.Redis(port=tls_server["port"], username=user, password=password,
                         socket_timeout=SOCKET_TIMEOUT) as plain_port:
            assert plain_port.ping() is True
        refused = _cli(tls_server, sni, user, password, "PING")
        assert b"WRONGPASS" in refused.stdout + refused.stderr, (user, refused)
    # And through redis-py's HELLO 3 AUTH.
    with pytest.raises(redis.exceptions.AuthenticationError):
        with _tls_client(tls_server, sni, "alice@" + globex["subdomain"], globex["owner_token"]) as wrong:
            wrong.ping()
    # A name that names no tenant: even a credential valid elsewhere is refused.
    unknown = _cli(tls_server, f"nosuch-{secrets.token_hex(2)}.{DOMAIN}", "alice@" + acme["subdomain"],
                   acme["owner_token"], "PING")
    assert b"WRONGPASS" in unknown.stdout + unknown.stderr, unknown
    # Outside the domain (no tenant in the name), the user@tenant form works as on the plain port.
    plain = _cli(tls_server, "localhost", "alice@" + acme["subdomain"], acme["owner_token"], "PING")
    assert plain.stdout == b"PONG\n", plain


def test_sighup_reloads_the_certificate_without_dropping_connections(tls_server):
    acme = _tenant(tls_server, "reload-" + secrets.token_hex(2))
    host = f"{acme['subdomain']}.{DOMAIN}"
    before = ssl.get_server_certificate(("127.0.0.1", tls_server["tls_port"]))
    with _tls_client(tls_server, host, "alice", acme["owner_token"]) as alice:
        assert alice.execute_command("POST", "general", "before the reload") == 1
        _make_certificate(tls_server["root"], "second")
        tls_server["proc"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ssl.get_server_certificate(("127.0.0.1", tls_server["tls_port"])) == before:
            assert time.monotonic() < deadline, "the new certificate was not served"
            time.sleep(0.1)
        # The connection made before the reload goes on.
        assert alice.execute_command("POST", "general", "after the reload") == 2
    with _tls_client(tls_server, host, "alice", acme["owner_token"]) as again:
        assert again.ping() is True


def _read_until_closed(raw: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = raw.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("prefix", [b"", b"\x16\x03\x01\xff\xff\r\n"], ids=["plain", "a-record-header"])
def test_plain_bytes_on_the_tls_port_are_never_read_as_requests(tls_server, prefix):
    acme = _tenant(tls_server, "plain-" + secrets.token_hex(2))
    with socket.create_connection(("127.0.0.1", tls_server["tls_port"]), timeout=SOCKET_TIMEOUT) as raw:
        auth = f"*3\r\n$4\r\nAUTH\r\n${len('alice@' + acme['subdomain'])}\r\nalice@{acme['subdomain']}\r\n$64\r\n{acme['owner_token']}\r\n"
        raw.sendall(prefix + auth.encode() + b"*1\r\n$4\r\nPING\r\n")
        raw.shutdown(socket.SHUT_WR)  # the end of input, as a half-closing client sends it
        data = _read_until_closed(raw)  # a timeout here fails the test: the server must close
        assert b"PONG" not in data and b"+OK" not in data, data
    with redis.Redis(port=tls_server["port"], username="admin", password=tls_server["token"],
                     socket_timeout=SOCKET_TIMEOUT) as op:
        assert op.ping() is True
