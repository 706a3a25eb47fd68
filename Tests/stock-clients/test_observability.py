"""What operators point at tenantd: promtool on /metrics, redis-py's and redis-cli's INFO.

Needs `promtool` (Debian's `prometheus` package; `.ci/run` installs it).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import redis

from conftest import READY_RE, SOCKET_TIMEOUT, SUBPROCESS_TIMEOUT, TENANTD_BIN, _clean_env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def metered():
    """A tenantd with its /metrics listener on a free port: (port, metrics port, token)."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    root = Path(tempfile.mkdtemp(prefix="tenantd-metrics-"))
    token = secrets.token_hex(32)
    metrics_port = _free_port()
    proc = subprocess.Popen(
        [str(TENANTD_BIN), "--port", "0", "--data-dir", str(root / "data"), "--metrics-port", str(metrics_port),
         "--metrics-tenants", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_clean_env(token),
    )
    try:
        line = proc.stdout.readline().decode()
        match = READY_RE.match(line.rstrip("\n"))
        assert match, f"no ready line: {line!r}"
        yield int(match.group(2)), metrics_port, token
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == 0
        proc.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


def _client(port: int, user: str, password: str, protocol: int = 3) -> redis.Redis:
    return redis.Redis(port=port, username=user, password=password, protocol=protocol,
                       decode_responses=True, socket_timeout=SOCKET_TIMEOUT)


def _tenant(port: int, token: str, name: str) -> dict:
    with _client(port, "admin", token, protocol=2) as op:
        flat = op.execute_command("TENANT", "CREATE", name, name, "OWNER", "alice")
    return dict(zip(flat[0::2], flat[1::2]))


def test_promtool_accepts_metrics_with_the_seeds_per_tenant_series(metered):
    port, metrics_port, token = metered
    acme = _tenant(port, token, "acme-" + secrets.token_hex(2))
    with _client(port, "alice@" + acme["subdomain"], acme["owner_token"]) as alice:
        for index in range(3):
            assert alice.execute_command("POST", "general", f"message {index}") == index + 1
    # A second, quieter tenant: over --metrics-tenants 1, summed under _other.
    beta = _tenant(port, token, "beta-" + secrets.token_hex(2))
    with _client(port, "alice@" + beta["subdomain"], beta["owner_token"]) as alice:
        assert alice.execute_command("POST", "general", "one") == 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=SOCKET_TIMEOUT).read()
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                             timeout=SUBPROCESS_TIMEOUT)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    text = body.decode()
    tenant = acme["tenant_id"]
    for series in ("tenant_requests_total", "tenant_storage_bytes", "tenant_users_count",
                   "tenant_messages_posted_total", "tenant_bytes_in_total", "tenant_bytes_out_total"):
        assert f'{series}{{tenant_id="{tenant}"}} ' in text, series
    assert f'tenant_messages_posted_total{{tenant_id="{tenant}"}} 3\n' in text
    assert f'tenant_users_count{{tenant_id="{tenant}"}} 1\n' in text
    assert 'tenantd_command_duration_seconds_bucket{command="post",le="+Inf"} ' in text
    assert 'tenant_messages_posted_total{tenant_id="_other"} 1\n' in text
    assert "tenant_series_omitted 1\n" in text
    assert beta["tenant_id"] not in text


def _same(parsed, text: str) -> bool:
    if isinstance(parsed, str):
        return parsed == text
    return parsed == float(text)


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_redis_py_parses_info(metered, protocol):
    port, _, token = metered
    with _client(port, "admin", token, protocol=protocol) as op:
        info = op.info()
        assert info["redis_version"] == "7.0.0"
        assert info["tcp_port"] == port
        assert info["aof_enabled"] == 1
        assert "total_commands_processed" in info and "tenants" in info
        assert set(op.info("server")) >= {"redis_version", "tenantd_version", "uptime_in_seconds"}
        assert "connected_clients" not in op.info("server")
    acme = _tenant(port, token, "own-" + secrets.token_hex(2))
    other = _tenant(port, token, "other-" + secrets.token_hex(2))
    with _client(port, "alice@" + acme["subdomain"], acme["owner_token"], protocol=protocol) as alice:
        mine = alice.info()
        # redis-py's INFO parser turns a value that looks like a number into one ("12345678",
        # "1234e567"): a tenant id made of such hex digits comes back as an int or a float.
        assert _same(mine["tenant_id"], acme["tenant_id"]) and mine["subdomain"] == acme["subdomain"]
        assert "total_commands_processed" not in mine and "tenants" not in mine
        everything = alice.info("everything")
        assert other["tenant_id"] not in str(everything) and other["subdomain"] not in str(everything)
        with _client(port, "admin", token, protocol=protocol) as op:
            keyspace = op.info("tenants")
            # redis-py reads `tenant_<id>:k=v,...` lines as dicts, as it reads Redis's keyspace.
            assert keyspace["tenant_" + acme["tenant_id"]]["users"] == 1


def test_redis_cli_info(metered):
    port, _, token = metered
    out = subprocess.run(["redis-cli", "-p", str(port), "--user", "admin", "--pass", token, "--no-auth-warning",
                          "INFO", "server"], capture_output=True, timeout=SUBPROCESS_TIMEOUT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "# Server" and "redis_version:7.0.0" in lines
