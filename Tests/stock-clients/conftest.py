"""Fixtures for the stock-client tests: a real tenantd on a free port.

The server binary is `$TENANTD_BIN`, by default `<repo>/.build/debug/tenantd`.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO = Path(__file__).resolve().parents[2]
TENANTD_BIN = Path(os.environ.get("TENANTD_BIN", REPO / ".build" / "debug" / "tenantd"))

READY_TIMEOUT = 20.0  # seconds for the ready line
STOP_TIMEOUT = 20.0  # seconds for a clean exit after SIGTERM
SUBPROCESS_TIMEOUT = 30.0  # any redis-cli / redis-benchmark run
SOCKET_TIMEOUT = 10.0  # any redis-py read or connect

READY_RE = re.compile(r"^tenantd ready host=(\S+) port=(\d+)(?: tls_port=\d+)? data=(.+)$")

# Variables that would change the server's behaviour if CI happened to export them.
_SERVER_ENV_PREFIXES = ("TENANTD_", "TENANT_", "MULTI_TENANCY")


class Server:
    """A running tenantd: its port, operator token and helpers to set up tenants."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, token: str, root: Path):
        self.proc = proc
        self.host = host
        self.port = port
        self.admin_token = token
        self.root = root
        self.stderr_path = root / "tenantd.stderr"
        self._names = itertools.count(1)

    def stderr_tail(self, n: int = 40) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def client(self, username: str | None = None, password: str | None = None, protocol: int = 3, **kw) -> redis.Redis:
        kw.setdefault("decode_responses", True)
        # No retries: redis-py's default retries every ConnectionError (AuthenticationError is one)
        # with backoff, which would slow the error tests down and hide a dropped connection.
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=username,
            password=password,
            protocol=protocol,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            **kw,
        )

    def operator(self, protocol: int = 2) -> redis.Redis:
        return self.client("admin", self.admin_token, protocol=protocol)

    def create_tenant(self, owner: str = "alice", plan: str | None = None) -> dict:
        """TENANT CREATE with a fresh subdomain; returns the field/value reply as a dict."""
        sub = f"t{next(self._names)}-{secrets.token_hex(3)}"
        args = ["TENANT", "CREATE", f"Tenant {sub}", sub, "OWNER", owner]
        if plan:
            args[4:4] = ["PLAN", plan]
        with self.operator(protocol=2) as op:
            flat = op.execute_command(*args)
        assert isinstance(flat, list) and len(flat) % 2 == 0, flat
        info = dict(zip(flat[0::2], flat[1::2]))
        assert re.fullmatch(r"[0-9a-f]{8}", info["tenant_id"]), info
        assert info["subdomain"] == sub and info["owner"] == owner, info
        assert re.fullmatch(r"[0-9a-f]{64}", info["owner_token"]), info
        return info

    def add_user(self, tenant: dict, name: str, role: str = "member") -> str:
        """USER ADD as the tenant's owner; returns the new user's token."""
        with self.client(f"{tenant['owner']}@{tenant['subdomain']}", tenant["owner_token"], protocol=2) as c:
            token = c.execute_command("USER", "ADD", name, role)
        assert re.fullmatch(r"[0-9a-f]{64}", token), token
        return token

    def history_all(self, tenant_id: str, room: str) -> list:
        """Every message of a room, paged with AFTER, as the operator (USE)."""
        with self.operator(protocol=2) as op:
            return read_history(op, tenant_id, room)


def read_history(op, tenant_id: str, room: str) -> list:
    """Every message of a room, paged with AFTER, over an operator connection (USE)."""
    assert op.execute_command("USE", tenant_id) in ("OK", b"OK")
    out: list = []
    after = 0
    while True:
        page = op.execute_command("HISTORY", room, "AFTER", str(after), "LIMIT", "1000")
        if not page:
            return out
        out.extend(page)
        after = int(page[-1][0])


def _clean_env(token: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVER_ENV_PREFIXES)}
    env["TENANT_ADMIN_TOKEN"] = token
    return env


def _drain(stream, lines: "queue.Queue[str | None]") -> None:
    # Reads the server's stdout to its end so the server never blocks on a full pipe.
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
    lines.put(None)


@pytest.fixture(scope="module")
def server():
    if not TENANTD_BIN.is_file() or not os.access(TENANTD_BIN, os.X_OK):
        pytest.fail(f"tenantd binary not found at {TENANTD_BIN} (build it or set TENANTD_BIN)")
    for tool in ("redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install redis-tools)")

    root = Path(tempfile.mkdtemp(prefix="tenantd-stock-"))
    token = secrets.token_hex(32)
    data = root / "data"
    stderr = open(root / "tenantd.stderr", "wb")
    proc = subprocess.Popen(
        [str(TENANTD_BIN), "--port", "0", "--data-dir", str(data), "--metrics-port", "0", "--fsync", "always"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_clean_env(token),
    )
    srv = None
    try:
        lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while srv is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no ready line within {READY_TIMEOUT}s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"tenantd exited before its ready line (code {proc.wait(timeout=5)})")
            m = READY_RE.match(line)
            if m:
                assert Path(m.group(3)) == data, line
                srv = Server(proc, m.group(1), int(m.group(2)), token, root)
        yield srv
    finally:
        exit_code = None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    exit_code = proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
            else:
                exit_code = ("already exited", proc.returncode)
            log = srv.stderr_tail() if srv else ""
        finally:
            stderr.close()
            if proc.stdout:
                proc.stdout.close()
            shutil.rmtree(root, ignore_errors=True)
    assert exit_code == 0, f"tenantd did not exit 0 after SIGTERM: {exit_code}\n{log}"


@pytest.fixture
def clients():
    """Collects redis-py clients and pub/subs made by a test and closes them afterwards."""
    made: list = []
    yield made
    for c in reversed(made):
        try:
            c.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
