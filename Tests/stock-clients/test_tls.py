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
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import READY_RE, SOCKET_TIMEOUT, SUBPROCESS_TIMEOUT, TENANTD_BIN, _clean_env
from tlsnames import DOMAIN, make_certificate, read_until_closed, resolve_chat_test  # noqa: F401 (a fixture)

@pytest.fixture(scope="module")
def tls_server():
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    root = Path(tempfile.mkdtemp(prefix="tenantd-tls-"))
    make_certificate(root, "first")
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


def _tenant(srv, subdomain: str) -> dict:
    with redis.Redis(port=srv["port"], username="admin", password=srv["token"], protocol=2,
                     decode_responses=True, socket_timeout=SOCKET_TIMEOUT) as op:
        flat = op.execute_command("TENANT", "CREATE", subdomain, subdomain, "OWNER", "alice")
    return dict(zip(flat[0::2], flat[1::2]))


def _tls_client(srv, host: str, username: str, password: str, protocol: int = 3) -> redis.Redis:
    return redis.Redis(host=host, port=srv["tls_port"], username=username, password=password, protocol=protocol,
                       ssl=True, ssl_ca_certs=str(srv["root"] / "cert.pem"), decode_responses=True,
                       socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0))


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
        make_certificate(tls_server["root"], "second")
        tls_server["proc"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ssl.get_server_certificate(("127.0.0.1", tls_server["tls_port"])) == before:
            assert time.monotonic() < deadline, "the new certificate was not served"
            time.sleep(0.1)
        # The connection made before the reload goes on.
        assert alice.execute_command("POST", "general", "after the reload") == 2
    with _tls_client(tls_server, host, "alice", acme["owner_token"]) as again:
        assert again.ping() is True


@pytest.mark.parametrize("prefix", [b"", b"\x16\x03\x01\xff\xff\r\n"], ids=["plain", "a-record-header"])
def test_plain_bytes_on_the_tls_port_are_never_read_as_requests(tls_server, prefix):
    acme = _tenant(tls_server, "plain-" + secrets.token_hex(2))
    with socket.create_connection(("127.0.0.1", tls_server["tls_port"]), timeout=SOCKET_TIMEOUT) as raw:
        auth = f"*3\r\n$4\r\nAUTH\r\n${len('alice@' + acme['subdomain'])}\r\nalice@{acme['subdomain']}\r\n$64\r\n{acme['owner_token']}\r\n"
        raw.sendall(prefix + auth.encode() + b"*1\r\n$4\r\nPING\r\n")
        raw.shutdown(socket.SHUT_WR)  # the end of input, as a half-closing client sends it
        data = read_until_closed(raw)  # a timeout here fails the test: the server must close
        assert b"PONG" not in data and b"+OK" not in data, data
    with redis.Redis(port=tls_server["port"], username="admin", password=tls_server["token"],
                     socket_timeout=SOCKET_TIMEOUT) as op:
        assert op.ping() is True


def _code(client: redis.Redis, *command: str) -> str:
    """The error code a command gets (redis-py keeps it in the message but for the codes it turns
    into exception classes: WRONGPASS, NOPERM)."""
    try:
        client.execute_command(*command)
    except redis.exceptions.AuthenticationError:
        return "WRONGPASS"
    except redis.exceptions.NoPermissionError:
        return "NOPERM"
    except redis.ResponseError as error:
        return str(error).split(" ", 1)[0]
    return "none"


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_the_cross_tenant_matrix_under_a_server_name(tls_server, protocol):
    """A user logged in by the server name of tenant A aims at tenant B every way the protocol has:
    each is refused with the contract's code, and B is as it was."""
    a = _tenant(tls_server, f"mx-a{protocol}-" + secrets.token_hex(2))
    b = _tenant(tls_server, f"mx-b{protocol}-" + secrets.token_hex(2))
    with redis.Redis(port=tls_server["port"], username="alice@" + b["subdomain"], password=b["owner_token"],
                     protocol=2, decode_responses=True, socket_timeout=SOCKET_TIMEOUT) as owner_b:
        owner_b.execute_command("POST", "general", "b1")
        carol = owner_b.execute_command("USER", "ADD", "carol", "member")
        before = [owner_b.execute_command("USER", "LIST"), owner_b.execute_command("HISTORY", "general")]
    with redis.Redis(port=tls_server["port"], username="admin", password=tls_server["token"], protocol=2,
                     decode_responses=True, socket_timeout=SOCKET_TIMEOUT) as op:
        meta_before = op.execute_command("TENANT", "GET", b["tenant_id"])

    sni = f"{a['subdomain']}.{DOMAIN}"
    path_b = f"/tenant/{b['tenant_id']}/general"
    matrix = [
        (("POST", path_b, "x"), {"NOPERM"}),
        (("HISTORY", path_b), {"NOPERM"}),
        (("HISTORY", path_b, "AFTER", "0", "LIMIT", "5"), {"NOPERM"}),
        (("USE", b["tenant_id"]), {"NOPERM"}),
        (("USE", b["subdomain"]), {"NOPERM"}),
        # Under A's server name, every credential is A's: B's users and tokens are nobody here.
        (("AUTH", "alice@" + b["subdomain"], b["owner_token"]), {"WRONGPASS"}),
        (("AUTH", "alice@" + b["tenant_id"], b["owner_token"]), {"WRONGPASS"}),
        (("AUTH", "alice", b["owner_token"]), {"WRONGPASS"}),
        (("AUTH", "carol", carol), {"WRONGPASS"}),
        (("AUTH", "carol@" + b["subdomain"], carol), {"WRONGPASS"}),
        (("HELLO", "3", "AUTH", "alice@" + b["subdomain"], b["owner_token"]), {"WRONGPASS"}),
        (("USER", "DEL", "carol"), {"NOTFOUND"}),
        (("USER", "ROLE", "carol", "owner"), {"NOTFOUND"}),
        (("USER", "TOKEN", "carol"), {"NOTFOUND"}),
        (("USER", "DEL", "carol@" + b["subdomain"]), {"NOTFOUND", "INVALID"}),
        (("TENANT", "GET", b["tenant_id"]), {"NOPERM"}),
        (("TENANT", "LIST"), {"NOPERM"}),
        (("TENANT", "UPDATE", b["tenant_id"], "max_users", "1"), {"NOPERM"}),
        (("TENANT", "SUSPEND", b["tenant_id"]), {"NOPERM"}),
        (("TENANT", "DELETE", b["tenant_id"], b["tenant_id"]), {"NOPERM"}),
        (("TENANT", "MIGRATE", b["tenant_id"], "127.0.0.1", "1"), {"NOPERM"}),
        (("TENANT", "RECEIVE", b["tenant_id"], "ab", "ABORT"), {"NOPERM"}),
    ]
    with _tls_client(tls_server, sni, "alice", a["owner_token"], protocol=protocol) as attacker:
        for command, codes in matrix:
            code = _code(attacker, *command)
            assert code in codes, (command, code)
            # Whatever it tried, the connection is still A's owner.
            assert attacker.execute_command("WHOAMI") == [a["tenant_id"], "alice", "owner"], command
        # A's own room of the same name is A's alone.
        assert attacker.execute_command("POST", "general", "a1") == 1
        assert [m[3] for m in attacker.execute_command("HISTORY", "general")] == ["a1"]
    # A subscription through the path form is refused too (redis-py's pubsub reads the error).
    with _tls_client(tls_server, sni, "alice", a["owner_token"], protocol=protocol) as attacker:
        pubsub = attacker.pubsub()
        with pytest.raises(redis.exceptions.NoPermissionError):
            pubsub.subscribe(path_b)
            pubsub.get_message(timeout=5)
        pubsub.close()
    # B is as it was.
    with redis.Redis(port=tls_server["port"], username="alice@" + b["subdomain"], password=b["owner_token"],
                     protocol=2, decode_responses=True, socket_timeout=SOCKET_TIMEOUT) as owner_b:
        assert [owner_b.execute_command("USER", "LIST"), owner_b.execute_command("HISTORY", "general")] == before
    with redis.Redis(port=tls_server["port"], username="admin", password=tls_server["token"], protocol=2,
                     decode_responses=True, socket_timeout=SOCKET_TIMEOUT) as op:
        assert op.execute_command("TENANT", "GET", b["tenant_id"]) == meta_before


def test_a_handshake_not_done_in_10_s_is_closed(tls_server):
    """A client that opens the TLS port and sends nothing, or half a ClientHello, holds a
    connection slot 10 s at most (the contract's handshake deadline), then is closed."""
    silent = socket.create_connection(("127.0.0.1", tls_server["tls_port"]), timeout=SOCKET_TIMEOUT)
    partial = socket.create_connection(("127.0.0.1", tls_server["tls_port"]), timeout=SOCKET_TIMEOUT)
    # A TLS record header announcing 512 bytes of handshake, then only a few of them.
    partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    started = time.monotonic()
    for raw in (silent, partial):
        raw.settimeout(20)
        assert read_until_closed(raw) == b""
        raw.close()
    waited = time.monotonic() - started
    assert 8.0 <= waited <= 15.0, waited
    with redis.Redis(port=tls_server["port"], username="admin", password=tls_server["token"],
                     socket_timeout=SOCKET_TIMEOUT) as op:
        assert op.ping() is True
