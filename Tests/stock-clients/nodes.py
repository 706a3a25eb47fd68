"""Several tenantd processes on fixed ports, started, killed and restarted by a test.

Used by the migration tests (TENANT MIGRATE, its kill -9 trials) and the HAProxy end-to-end
test. A node keeps its port and data directory across restarts, so that a migration's target
(`host:port`) stays valid.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import SOCKET_TIMEOUT, TENANTD_BIN, _clean_env, read_history

READY = re.compile(r"^tenantd ready host=(\S+) port=(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One tenantd: `start()`, `kill()` (SIGKILL), `stop()` (SIGTERM, must exit 0)."""

    def __init__(self, root: Path, name: str, token: str | None = None, extra: list[str] | None = None,
                 env: dict | None = None):
        self.name = name
        self.root = root / name
        self.data = self.root / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = token or secrets.token_hex(32)
        self.extra = extra or []
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "stderr.log"

    def start(self, failpoint: str | None = None, timeout: float = 30.0) -> "Node":
        env = _clean_env(self.token)
        env.update(self.env)
        if failpoint:
            env["TENANTD_FAILPOINT"] = failpoint
        stderr = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(TENANTD_BIN), "--port", str(self.port), "--data-dir", str(self.data), "--metrics-port", "0",
             "--fsync", "always", *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env)
        stderr.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                raise AssertionError(f"{self.name} exited before its ready line: {self.tail()}")
            if READY.match(line):
                return self
        raise AssertionError(f"{self.name}: no ready line within {timeout}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_dead(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.wait_dead()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            code = self.wait_dead()
            assert code == 0, f"{self.name} did not exit 0 after SIGTERM: {code}\n{self.tail()}"

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client(self, username: str, password: str, protocol: int = 2, **kw) -> redis.Redis:
        kw.setdefault("decode_responses", True)
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, username=username, password=password,
                           protocol=protocol, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                           **kw)

    def operator(self) -> redis.Redis:
        return self.client("admin", self.token)

    def create_tenant(self, subdomain: str, owner: str = "owner", plan: str = "free") -> dict:
        with self.operator() as op:
            flat = op.execute_command("TENANT", "CREATE", f"Tenant {subdomain}", subdomain, "OWNER", owner,
                                      "PLAN", plan)
        return dict(zip(flat[0::2], flat[1::2]))

    def history(self, tenant_id: str, room: str) -> list:
        with self.operator() as op:
            return read_history(op, tenant_id, room)

    def serves(self, tenant_id: str) -> bool:
        """Whether TENANT GET finds the tenant here (MIGRATED and NOTFOUND: no)."""
        with self.operator() as op:
            try:
                op.execute_command("TENANT", "GET", tenant_id)
                return True
            except redis.ResponseError:
                return False
