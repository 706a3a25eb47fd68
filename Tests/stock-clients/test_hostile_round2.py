"""Hostile clients, second round (issue 25): end-to-end reproducers against the real tenantd.

Each test drives real servers (`nodes.Node`, loopback only) the way the audit did and asserts what
the fixed server promises, so that it fails while its finding is open:

- finding 1: a failed AUTH opens no tenant (no activation, no descriptor); credentials acknowledged
  (USER ADD, USER TOKEN) survive kill -9;
- finding 2: `/metrics` pipelined by clients that never read stays bounded, an idle metrics
  connection is closed, and the Kubernetes manifest keeps the listener on loopback;
- finding 3: a symbolic link in a tenant directory never reaches another tenant, for DELETE,
  MOVE, SNAPSHOT, ATTACH, MIGRATE, a scheduled backup, `tenantctl restore` and `tenantctl import`;
- finding 4: ids and subdomains are one namespace (auto-provisioning, ATTACH of an import,
  start-up discovery, RECEIVE PREPARE);
- finding 6: USER LIST is paged like ROOMS;
- finding 7: TENANT RECEIVE staging is bounded (`--migrate-staging-limit`, migrations in flight)
  and abandoned staging is removed at start;
- finding 8: a cold chunk whose bytes changed is an IOERR, never altered text.

The server is `$TENANTD_BIN` (default `.build/debug/tenantd`), tenantctl the one beside it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
import yaml

from conftest import REPO, SUBPROCESS_TIMEOUT, TENANTD_BIN
from nodes import READY, Node, free_port
from test_migration import crc32c, migrate, root  # noqa: F401 (root: the fixture)

TENANTCTL = TENANTD_BIN.parent / "tenantctl"
WRONGPASS = b"-WRONGPASS"
# An error reply: redis-py raises LOADING as BusyLoadingError, which is no ResponseError.
REFUSED = (redis.ResponseError, redis.exceptions.BusyLoadingError)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------



@pytest.fixture
def nodes():
    """Collects the nodes a test starts; whatever is still running at the end is killed."""
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def start(nodes: list, node: Node) -> Node:
    nodes.append(node)
    return node.start()


def restart_after_kill(node: Node) -> Node:
    node.kill()
    return node.start()


def server_help() -> str:
    return subprocess.run([str(TENANTD_BIN), "--help"], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT).stdout


def tenantctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TENANTCTL), *args], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


def tenant_dir(node: Node, tenant_id: str) -> Path:
    return node.data / f"tenant_{tenant_id}"


def operator_info(node: Node, section: str) -> dict:
    with node.operator() as op:
        return op.info(section)


def tenants_active(node: Node) -> int:
    return int(operator_info(node, "tenants")["tenants_active"])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def poll(predicate, timeout: float, interval: float = 0.1) -> bool:
    """True as soon as `predicate()` is; False once `timeout` seconds passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def resp(*args: str | bytes) -> bytes:
    """One request as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RawConn:
    """A plain socket speaking RESP2, to see replies exactly as the server writes them."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes | None:
        """The next reply line without its CRLF; None when the server closed the connection."""
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self):
        """The next reply: bytes for simple and bulk strings, int, list, or RespError."""
        line = self.line()
        if line is None:
            raise ConnectionError("closed by the server")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise ConnectionError("closed by the server")
            data, self.buf = self.buf[:size], self.buf[size + 2:]
            return data
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        # RESP3, after HELLO 3.
        if kind == b">":
            return Push(self.reply() for _ in range(int(rest)))
        if kind == b"%":
            return {self.reply(): self.reply() for _ in range(int(rest))}
        if kind == b"_":
            return None
        raise AssertionError(f"unexpected reply line {line!r}")

    def command(self, *args: str | bytes):
        self.sock.sendall(resp(*args))
        return self.reply()


class Push(list):
    """A RESP3 push (`>`): pub/sub messages and confirmations."""


class RespError(str):
    """An error reply, its code first (`IOERR …`)."""

    @property
    def code(self) -> str:
        return self.split(" ", 1)[0]


def auth_works(node: Node, user: str, token: str) -> bool:
    """AUTH on a new connection: True for +OK, False for -WRONGPASS, anything else fails."""
    conn = RawConn(node.port)
    try:
        reply = conn.command("AUTH", user, token)
    finally:
        conn.close()
    if reply == b"OK":
        return True
    assert isinstance(reply, RespError) and reply.code == "WRONGPASS", reply
    return False


def whoami(node: Node, user: str, token: str) -> str:
    """The tenant id a credential logs into."""
    with node.client(user, token) as c:
        return str(c.execute_command("WHOAMI")[0])


def tree_listing(path: Path) -> dict:
    """Every entry under `path`, not following links: relative path to ("file", size, sha256),
    ("dir",) or ("link", target)."""
    out: dict = {}
    if not path.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            st = os.lstat(entry)
            rel = str(entry.relative_to(path))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(entry))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", st.st_size, hashlib.sha256(entry.read_bytes()).hexdigest())
    return out


def assert_no_link_and_no_victim_files(copy: Path, victim_before: dict) -> None:
    """A copy the server or tenantctl made holds no symbolic link and none of the victim's files."""
    victim_hashes = {v[2] for v in victim_before.values() if v[0] == "file" and v[1] > 0}
    listing = tree_listing(copy)
    links = sorted(k for k, v in listing.items() if v[0] == "link")
    leaked = sorted(k for k, v in listing.items() if v[0] == "file" and v[1] > 0 and v[2] in victim_hashes)
    assert not links, f"symbolic links in the copy {copy}: {links}"
    assert not leaked, f"the victim's files were copied into {copy}: {leaked}"


def post_messages(node: Node, tenant: dict, room: str, count: int, owner: str = "owner") -> list:
    """Posts `count` messages as the owner; returns the acknowledged (seq, text)."""
    acked = []
    with node.client(f"{owner}@{tenant['subdomain']}", tenant["owner_token"]) as c:
        for i in range(count):
            text = f"{room} {i} {secrets.token_hex(8)} 你好"
            acked.append((int(c.execute_command("POST", room, text)), text))
    return acked


def assert_history(node: Node, tenant_id: str, room: str, acked: list) -> None:
    try:
        history = {int(m[0]): m[3] for m in node.history(tenant_id, room)}
    except REFUSED as error:
        raise AssertionError(f"tenant {tenant_id} is not served: {error}") from error
    missing = [(seq, text) for seq, text in acked if history.get(seq) != text]
    assert not missing, f"{len(missing)} acknowledged messages of {tenant_id}/{room} lost or altered: {missing[:3]}"


# --------------------------------------------------------------------------------------------
# Finding 1: a failed AUTH opens no tenant
# --------------------------------------------------------------------------------------------

AUTH_TENANTS = 60
AUTHS_PER_CONNECTION = 5  # under the 8 failures that close a connection
# One loopback source address per connection's AUTHs: the server slows failures per address
# after 10 of them; 127.0.0.0/8 is all loopback on Linux, so no alias is needed.
AUTH_SOURCES = [f"127.0.0.{10 + i}" for i in range(AUTH_TENANTS // AUTHS_PER_CONNECTION)]


def failed_auth_flood(node: Node, subdomains: list[str]) -> list:
    """`AUTH nobody@<sub> <wrong>` and `AUTH owner@<sub> <wrong token>` for every subdomain, from
    several connections and source addresses at once; returns (user, reply line or None)."""
    results: list = []
    lock = threading.Lock()

    def run(source: str, batch: list[str]) -> None:
        conn = RawConn(node.port, source=source)
        try:
            for i, sub in enumerate(batch):
                user = f"nobody@{sub}" if i % 2 == 0 else f"owner@{sub}"
                try:
                    conn.sock.sendall(f"AUTH {user} {secrets.token_hex(32)}\r\n".encode())
                    line = conn.line()
                except (ConnectionResetError, BrokenPipeError):
                    line = None
                with lock:
                    results.append((user, line))
                if line is None:
                    return
        finally:
            conn.close()

    batches = [subdomains[i:i + AUTHS_PER_CONNECTION] for i in range(0, len(subdomains), AUTHS_PER_CONNECTION)]
    threads = [threading.Thread(target=run, args=(AUTH_SOURCES[i], batch)) for i, batch in enumerate(batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "failed AUTHs still running after 60 s"
    return results


def test_failed_auth_opens_no_tenant_and_credentials_survive_a_crash(root, nodes):
    node = start(nodes, Node(root, "auth", extra=["--maxmemory", "32mb"]))
    tenants = [node.create_tenant(f"open{i:03d}-{secrets.token_hex(2)}") for i in range(AUTH_TENANTS)]
    # Restarted, every tenant is known and closed.
    node.stop()
    node.start()
    assert poll(lambda: tenants_active(node) == 0, 10), "tenants still active after a restart"
    pid = node.proc.pid
    fds_before = fd_count(pid)

    results = failed_auth_flood(node, [t["subdomain"] for t in tenants])
    assert len(results) >= AUTH_TENANTS // 2, results
    bad = [(user, line) for user, line in results if line is not None and not line.startswith(WRONGPASS)]
    assert not bad, f"failed AUTHs not answered WRONGPASS: {bad[:5]}"
    assert sum(1 for _, line in results if line is not None) >= AUTH_TENANTS // 2, "most AUTHs got no reply"

    active = tenants_active(node)
    assert active == 0, f"{active} tenants opened by failed AUTHs"
    # The other forms of a tenant reference, and HELLO 3 AUTH as redis-py 8 opens: none opens it.
    second = tenants[1]
    conn = RawConn(node.port, source="127.0.0.99")
    try:
        for user in (f"owner@{second['tenant_id']}", f"owner@{second['subdomain']}.chat.example.com",
                     f"owner@{second['subdomain'].upper()}", f"nobody@{second['tenant_id']}"):
            reply = conn.command("AUTH", user, secrets.token_hex(32))
            assert isinstance(reply, RespError) and reply.code == "WRONGPASS", (user, reply)
        conn.sock.sendall(resp("HELLO", "3", "AUTH", f"owner@{second['subdomain']}", secrets.token_hex(32)))
        reply = conn.reply()
        assert isinstance(reply, RespError) and reply.code == "WRONGPASS", reply
    finally:
        conn.close()
    assert tenants_active(node) == 0, "another form of AUTH opened a tenant"
    # Descriptors: the flood's connections are closing; none may stay for the tenants.
    poll(lambda: fd_count(pid) <= fds_before + 4, 5)
    fds_after = fd_count(pid)
    assert fds_after <= fds_before + 4, f"descriptors {fds_before} -> {fds_after} after failed AUTHs"

    # A right credential still works, and that one opens its tenant.
    first = tenants[0]
    owner = f"owner@{first['subdomain']}"
    with node.client(owner, first["owner_token"]) as c:
        seq = int(c.execute_command("POST", "general", "after the flood"))
        assert [m[3] for m in c.execute_command("HISTORY", "general")] == ["after the flood"]
    assert seq == 1
    assert tenants_active(node) == 1

    # Credentials acknowledged survive kill -9: a new user, then a rotated token.
    with node.client(owner, first["owner_token"]) as c:
        bob = c.execute_command("USER", "ADD", "bob", "member")
    restart_after_kill(node)
    assert auth_works(node, f"bob@{first['subdomain']}", bob), "a user added before kill -9 cannot log in"
    with node.client(owner, first["owner_token"]) as c:
        rotated = c.execute_command("USER", "TOKEN", "bob")
    assert rotated != bob
    assert not auth_works(node, f"bob@{first['subdomain']}", bob), "the old token works after USER TOKEN"
    assert auth_works(node, f"bob@{first['subdomain']}", rotated)
    restart_after_kill(node)
    assert not auth_works(node, f"bob@{first['subdomain']}", bob), "the old token works again after kill -9"
    assert auth_works(node, f"bob@{first['subdomain']}", rotated), "the rotated token is lost by kill -9"
    assert auth_works(node, owner, first["owner_token"])


# --------------------------------------------------------------------------------------------
# Finding 2: /metrics bounded, idle connections closed, loopback in the manifests
# --------------------------------------------------------------------------------------------

METRICS_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
METRICS_PIPELINED = 20_000
METRICS_CONNECTIONS = 3
METRICS_RSS_GROWTH = 100 << 20
METRICS_IDLE_CLOSE = 40.0  # the fix's idle timeout is at most 30 s


def flood_without_reading(port: int, connections: int, requests: int, deadline: float = 10.0,
                          blocked_for: float = 2.0) -> tuple[list[socket.socket], int]:
    """Pipelines `requests` GET /metrics on each connection, never reading, as fast as the sockets
    take them; a connection stops when its send would block for `blocked_for` seconds."""
    payload = METRICS_REQUEST * requests
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    sent = [0] * connections
    last_progress = [time.monotonic()] * connections
    done = [False] * connections
    end = time.monotonic() + deadline
    while not all(done) and time.monotonic() < end:
        progressed = False
        for i, s in enumerate(socks):
            if done[i]:
                continue
            try:
                n = s.send(payload[sent[i]:sent[i] + 262144])
            except BlockingIOError:
                n = 0
            except (BrokenPipeError, ConnectionResetError):
                done[i] = True
                continue
            if n:
                sent[i] += n
                last_progress[i] = time.monotonic()
                progressed = True
            if sent[i] >= len(payload) or time.monotonic() - last_progress[i] > blocked_for:
                done[i] = True
        if not progressed:
            time.sleep(0.01)
    return socks, sum(sent)


def test_metrics_connections_trickling_a_request_do_not_block_scraping(root, nodes):
    """64 connections (the cap) each start a request and send a byte every 2 s, never finishing
    it: each is closed 30 s after its accept all the same, and a scrape then gets through."""
    metrics_port = free_port()
    node = start(nodes, Node(root, "metrics", extra=["--metrics-port", str(metrics_port)]))
    socks = [socket.create_connection(("127.0.0.1", metrics_port), timeout=5) for _ in range(64)]
    opened = time.monotonic()
    scraped_after = None
    try:
        for s in socks:
            s.sendall(b"GET /metr")
        while time.monotonic() - opened < 45:
            for s in socks:
                try:
                    s.send(b"i")
                except OSError:
                    pass
            try:
                conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=2)
                conn.request("GET", "/metrics")
                if conn.getresponse().status == 200:
                    scraped_after = time.monotonic() - opened
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(2)
    finally:
        for s in socks:
            s.close()
    assert scraped_after is not None, "64 trickling connections kept every scrape out for 45 s"
    assert scraped_after < 40


def test_metrics_pipelined_by_non_readers_stays_bounded(root, nodes):
    metrics_port = free_port()
    node = start(nodes, Node(root, "metrics", extra=["--metrics-port", str(metrics_port)]))
    # Tenants with series of their own make every reply a few tens of KB.
    for i in range(20):
        tenant = node.create_tenant(f"m{i:02d}-{secrets.token_hex(2)}")
        post_messages(node, tenant, "general", 1)
    # An idle connection, opened first: the server must close it on its own.
    idle = socket.create_connection(("127.0.0.1", metrics_port), timeout=5)
    idle_opened = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    warm = conn.getresponse()
    reply_size = len(warm.read())
    conn.close()
    assert warm.status == 200 and reply_size > 0
    pid = node.proc.pid
    rss_before = rss_bytes(pid)

    socks, sent = flood_without_reading(metrics_port, METRICS_CONNECTIONS, METRICS_PIPELINED)
    try:
        # The server works through what it read for a while: watch its memory.
        peak = rss_before
        end = time.monotonic() + 8
        while time.monotonic() < end and peak - rss_before < METRICS_RSS_GROWTH:
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.2)
        assert peak - rss_before < METRICS_RSS_GROWTH, (
            f"RSS grew {(peak - rss_before) >> 20} MB under {sent} bytes of pipelined GET /metrics "
            f"(replies of {reply_size} bytes) that nobody read")
    finally:
        for s in socks:
            s.close()

    # An ordinary scrape still works.
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain")
    assert "# TYPE tenantd_connections_open gauge" in body

    # The idle connection is closed within the bound.
    remaining = METRICS_IDLE_CLOSE - (time.monotonic() - idle_opened)
    closed = False
    if remaining > 0:
        idle.settimeout(remaining)
        try:
            closed = idle.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            closed = False
    idle.close()
    assert closed, f"an idle /metrics connection is still open after {METRICS_IDLE_CLOSE:.0f} s"


MANIFEST = REPO / "deploy" / "kubernetes" / "tenantd.yaml"


def manifest_tenantd_container() -> dict:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "StatefulSet":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "tenantd":
                    return container
    raise AssertionError("no tenantd container in deploy/kubernetes/tenantd.yaml")


def listening_addresses(pid: int, port: int) -> list[str]:
    """The local addresses of the process's network namespace that listen on `port`."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                if name == "tcp":
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_kubernetes_manifest_keeps_metrics_on_loopback(root):
    """Runs tenantd with the manifest's own arguments and literal environment (TLS files and the
    data directory aside) in a network namespace of its own, and reads where /metrics listens."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("needs unshare(1) and ip(8) (util-linux, iproute2)")
    # A network namespace of its own: as root, or in a user namespace of its own otherwise.
    for unshare in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*unshare, "true"], capture_output=True).returncode == 0:
            break
    else:
        pytest.fail("unshare cannot make a network namespace here (needs root or user namespaces)")
    container = manifest_tenantd_container()
    dropped = ("--tls-port", "--tls-cert-file", "--tls-key-file", "--data-dir")
    args = [a for a in container.get("args", []) if not a.split("=", 1)[0] in dropped]
    assert not any(a in dropped for a in args), f"use --flag=value in the manifest: {args}"
    metrics_ports = [int(a.split("=", 1)[1]) for a in args if a.startswith("--metrics-port=")]
    assert metrics_ports and metrics_ports[0] > 0, f"the manifest has no metrics port: {args}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTD_", "TENANT_", "MULTI_TENANCY"))}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    env["TENANT_ADMIN_TOKEN"] = secrets.token_hex(32)
    data = root / "data"
    command = 'ip link set lo up && exec "$0" "$@"'
    with open(root / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen([*unshare, "sh", "-c", command, str(TENANTD_BIN), *args, f"--data-dir={data}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            ready = READY.match(line) is not None
        assert ready, f"tenantd with the manifest's arguments did not start: {(root / 'stderr.log').read_text()[-2000:]}"
        poll(lambda: bool(listening_addresses(proc.pid, metrics_ports[0])), 5)
        addresses = listening_addresses(proc.pid, metrics_ports[0])
        assert addresses, f"nothing listens on the metrics port {metrics_ports[0]}"
        exposed = [a for a in addresses if not (a.startswith("127.") or a == "::1")]
        assert not exposed, (f"with deploy/kubernetes/tenantd.yaml the metrics listener binds {exposed}: "
                             f"reachable from outside the pod, unauthenticated")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


# --------------------------------------------------------------------------------------------
# Finding 3: a symbolic link in a tenant directory never reaches another tenant
# --------------------------------------------------------------------------------------------

LINK_OPERATIONS = ["delete", "move", "snapshot", "attach", "migrate", "backup", "restore", "import"]


def plant_links(directory: Path, victim: Path) -> None:
    """Links to the victim's log and to its whole directory, by absolute path (they still point
    there once the directory is renamed into the trash or copied elsewhere)."""
    os.symlink(victim / "wal", directory / "notes")
    os.symlink(victim, directory / "shared")


def attach_then_delete(node: Node, tenant_id: str) -> None:
    """TENANT ATTACH (refusing is allowed) and, when it was attached, TENANT DELETE: the audit's
    route from a crafted directory to another tenant's log."""
    with node.operator() as op:
        try:
            op.execute_command("TENANT", "ATTACH", tenant_id)
        except REFUSED:
            return
        try:
            op.execute_command("TENANT", "DELETE", tenant_id, tenant_id)
        except REFUSED:
            pass  # refusing is allowed: the victim is checked either way


def detach_and_set_aside(node: Node, tenant_id: str, aside: Path) -> None:
    with node.operator() as op:
        assert op.execute_command("TENANT", "DETACH", tenant_id) == "OK"
    shutil.move(str(tenant_dir(node, tenant_id)), str(aside))


@pytest.mark.parametrize("operation", LINK_OPERATIONS)
def test_a_symbolic_link_never_reaches_another_tenant(root, nodes, operation):
    regions = root / "eu"
    regions.mkdir()
    backups = root / "backups"
    extra = {"move": ["--region", f"eu={regions}"], "backup": ["--backup-dir", str(backups)]}.get(operation, [])
    node = start(nodes, Node(root, "a", extra=extra))
    victim = node.create_tenant(f"victim-{secrets.token_hex(2)}")
    attacker = node.create_tenant(f"attacker-{secrets.token_hex(2)}")
    vid, aid = victim["tenant_id"], attacker["tenant_id"]
    acked = post_messages(node, victim, "general", 30)
    post_messages(node, attacker, "general", 5)
    victim_dir = tenant_dir(node, vid)
    before = tree_listing(victim_dir)
    assert any(v[0] == "file" and v[1] > 0 for v in before.values()), before
    copies: list[Path] = []

    if operation == "delete":
        plant_links(tenant_dir(node, aid), victim_dir)
        with node.operator() as op:
            try:
                op.execute_command("TENANT", "DELETE", aid, aid)
            except REFUSED:
                pass
    elif operation == "move":
        plant_links(tenant_dir(node, aid), victim_dir)
        with node.operator() as op:
            try:
                op.execute_command("TENANT", "MOVE", aid, "REGION", "eu")
            except REFUSED:
                pass
        copies.append(regions)
    elif operation == "snapshot":
        plant_links(tenant_dir(node, aid), victim_dir)
        snapshots = root / "snapshots"
        snapshots.mkdir()
        with node.operator() as op:
            try:
                op.execute_command("TENANT", "SNAPSHOT", aid, str(snapshots))
            except REFUSED:
                pass
        copies.append(snapshots)
    elif operation == "attach":
        with node.operator() as op:
            assert op.execute_command("TENANT", "DETACH", aid) == "OK"
        plant_links(tenant_dir(node, aid), victim_dir)
        attach_then_delete(node, aid)
    elif operation == "migrate":
        b = start(nodes, Node(root, "b"))
        plant_links(tenant_dir(node, aid), victim_dir)
        try:
            migrate(node, aid, b)
        except REFUSED:
            pass
        copies.append(b.data)
    elif operation == "backup":
        plant_links(tenant_dir(node, aid), victim_dir)
        with node.operator() as op:
            op.execute_command("TENANT", "UPDATE", aid, "settings.backup_interval", "1s", "settings.backup_keep", "1")

        def outcomes() -> list[str]:
            whole = [p.name for p in (backups / aid).iterdir() if not p.name.endswith(".partial")] \
                if (backups / aid).is_dir() else []
            failed = re.search(rf"event=backup_failed .*tenant_id={aid}\b", node.tail(200)) is not None
            return whole + (["failed"] if failed else [])

        # A backup written (then a second one, which rotates the first out), or refused.
        assert poll(lambda: len(outcomes()) >= 1, 15), "no backup written or refused within 15 s"
        first = outcomes()
        if "failed" not in first:
            poll(lambda: outcomes() != first, 5)
        with node.operator() as op:
            op.execute_command("TENANT", "UPDATE", aid, "settings.backup_interval", "")
        assert poll(lambda: not list(backups.rglob("*.partial")), 10), "a backup still being written"
        copies.append(backups)
    elif operation == "restore":
        snapshots = root / "snapshots"
        snapshots.mkdir()
        with node.operator() as op:
            op.execute_command("TENANT", "SNAPSHOT", aid, str(snapshots))
        snapshot = snapshots / f"tenant_{aid}"
        plant_links(snapshot, victim_dir)
        detach_and_set_aside(node, aid, root / "aside")
        tenantctl("restore", str(snapshot), str(node.data))  # refusing (exit 1) is allowed
        copies.append(tenant_dir(node, aid))
        assert_no_link_and_no_victim_files(tenant_dir(node, aid), before)
        attach_then_delete(node, aid)
    elif operation == "import":
        snapshots = root / "snapshots"
        snapshots.mkdir()
        with node.operator() as op:
            op.execute_command("TENANT", "SNAPSHOT", aid, str(snapshots))
        export = tenantctl("export", str(snapshots / f"tenant_{aid}"))
        assert export.returncode == 0, export.stderr
        (root / "attacker.jsonl").write_text(export.stdout)
        detach_and_set_aside(node, aid, root / "aside")
        imported = tenantctl("import", str(root / "attacker.jsonl"), str(node.data))
        assert imported.returncode == 0, imported.stderr
        plant_links(tenant_dir(node, aid), victim_dir)
        attach_then_delete(node, aid)
    else:
        raise AssertionError(operation)

    # The trash is emptied in the background after DELETE and MOVE: let it finish.
    poll(lambda: not any(list(t.iterdir()) for t in (node.data / ".trash", regions / ".trash") if t.is_dir()), 10)
    # The victim's files, byte for byte, while the server runs.
    after = tree_listing(victim_dir)
    assert after == before, (f"{operation} through a link changed the victim's files: "
                             f"gone {sorted(set(before) - set(after))}, "
                             f"changed {sorted(k for k in before if k in after and after[k] != before[k])}")
    for copy in copies:
        assert_no_link_and_no_victim_files(copy, before)
    # And after kill -9, every acknowledged message.
    restart_after_kill(node)
    assert_history(node, vid, "general", acked)


# --------------------------------------------------------------------------------------------
# Finding 4: ids and subdomains, one namespace
# --------------------------------------------------------------------------------------------

VICTIM_SUB = "victimco"


def make_victim(node: Node) -> tuple[dict, str]:
    """The tenant `victimco` whose owner is alice; returns it and alice's token."""
    victim = node.create_tenant(VICTIM_SUB, owner="alice")
    assert victim["subdomain"] == VICTIM_SUB, victim
    return victim, victim["owner_token"]


def assert_victim_wins(node: Node, victim: dict, alice_token: str, impostor_token: str | None = None) -> None:
    assert auth_works(node, f"alice@{VICTIM_SUB}", alice_token), "the real alice@victimco gets WRONGPASS"
    assert whoami(node, f"alice@{VICTIM_SUB}", alice_token) == victim["tenant_id"], "alice@victimco is in another tenant"
    if impostor_token is not None:
        assert not auth_works(node, f"alice@{VICTIM_SUB}", impostor_token), "alice@victimco logs into the impostor"
    with node.operator() as op:
        fields = op.execute_command("TENANT", "GET", VICTIM_SUB)
    got = dict(zip(fields[0::2], fields[1::2]))
    assert str(got["tenant_id"]) == victim["tenant_id"], f"TENANT GET victimco names {got['tenant_id']}"


def impostor_export(node: Node, scratch: Path) -> Path:
    """An export of a real tenant (users alice and owner, messages) whose tenant_id is edited to
    `victimco`, another tenant's subdomain, and whose own subdomain is made fresh."""
    impostor = node.create_tenant(f"imp-{secrets.token_hex(3)}")
    with node.client(f"owner@{impostor['subdomain']}", impostor["owner_token"]) as c:
        c.execute_command("USER", "ADD", "alice", "owner")
        c.execute_command("POST", "general", "I am victimco now")
    snapshots = scratch / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    with node.operator() as op:
        op.execute_command("TENANT", "SNAPSHOT", impostor["tenant_id"], str(snapshots))
    export = tenantctl("export", str(snapshots / f"tenant_{impostor['tenant_id']}"))
    assert export.returncode == 0, export.stderr
    lines = export.stdout.splitlines()
    head = json.loads(lines[0])
    assert head["type"] == "tenant" and head["tenant_id"] == impostor["tenant_id"], head
    head["tenant_id"] = VICTIM_SUB
    head["subdomain"] = f"shadow-{secrets.token_hex(3)}"
    path = scratch / "impostor.jsonl"
    path.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    return path


def import_impostor(export: Path, data_dir: Path, victims_data_dir: bool = True) -> str:
    """tenantctl import into the victim's data directory is refused (its catalog names
    `victimco` already); imported into an empty directory instead and moved into place by hand,
    as an operator copying directories would. Returns the new token of the impostor's alice."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if victims_data_dir:
        refused = tenantctl("import", str(export), str(data_dir), "--json")
        assert refused.returncode != 0, refused.stdout
        said = refused.stdout + refused.stderr
        assert VICTIM_SUB in said and "names tenant" in said, said
        assert not (data_dir / f"tenant_{VICTIM_SUB}").exists()
    elsewhere = data_dir.parent / f"import-{secrets.token_hex(3)}"
    elsewhere.mkdir()
    imported = tenantctl("import", str(export), str(elsewhere), "--json")
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert report["tenant_id"] == VICTIM_SUB, report
    shutil.move(str(elsewhere / f"tenant_{VICTIM_SUB}"), str(data_dir / f"tenant_{VICTIM_SUB}"))
    return next(u["token"] for u in report["users"] if u["name"] == "alice")


def test_a_new_tenant_id_never_equals_another_tenants_subdomain(root, nodes):
    """TENANT CREATE has no id option; the operator's auto-provisioning creates a tenant from an
    id (`/tenant/<id>/<room>`, USE): naming `victimco` must not make a tenant of that id."""
    node = start(nodes, Node(root, "a", env={"TENANT_AUTO_PROVISION": "true"}))
    victim, alice = make_victim(node)
    with node.operator() as op:
        # A subdomain equal to another tenant's id.
        with pytest.raises(redis.ResponseError, match="^EXISTS"):
            op.execute_command("TENANT", "CREATE", "Impostor", victim["tenant_id"])
        # An explicit id, in case CREATE grows one: refused, or at least not shadowing (below).
        try:
            op.execute_command("TENANT", "CREATE", "Impostor", f"imp-{secrets.token_hex(2)}", "ID", VICTIM_SUB)
        except REFUSED:
            pass
        # Auto-provisioning through the path form: the victim's, or refused; never a new tenant.
        try:
            op.execute_command("POST", f"/tenant/{VICTIM_SUB}/general", "provisioned?")
        except REFUSED:
            pass
        ids = {str(t[t.index("tenant_id") + 1]) for t in op.execute_command("TENANT", "LIST")}
    assert VICTIM_SUB not in ids, "a tenant whose id is another tenant's subdomain was created"
    assert_victim_wins(node, victim, alice)


def test_an_imported_tenant_named_like_a_subdomain_is_not_attached(root, nodes):
    node = start(nodes, Node(root, "a"))
    victim, alice = make_victim(node)
    acked = post_messages(node, victim, "general", 3, owner="alice")
    impostor_alice = import_impostor(impostor_export(node, root / "scratch"), node.data)
    with node.operator() as op:
        with pytest.raises(redis.ResponseError, match="^EXISTS"):
            op.execute_command("TENANT", "ATTACH", VICTIM_SUB)
    assert_victim_wins(node, victim, alice, impostor_alice)
    assert_history(node, victim["tenant_id"], "general", acked)


def test_a_directory_named_like_a_subdomain_does_not_shadow_it_at_start(root, nodes):
    node = start(nodes, Node(root, "a"))
    victim, alice = make_victim(node)
    export = impostor_export(node, root / "scratch")
    node.stop()
    impostor_alice = import_impostor(export, node.data)
    node.start()
    assert_victim_wins(node, victim, alice, impostor_alice)


def send_and_prepare(op, tenant_id: str, mid: str, directory: Path) -> None:
    """TENANT RECEIVE BEGIN, every file of `directory` in CHUNKs, then PREPARE, as a source would."""
    assert op.execute_command("TENANT", "RECEIVE", tenant_id, mid, "BEGIN") == []
    manifest = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = str(path.relative_to(directory))
        data = path.read_bytes()
        for offset in range(0, max(len(data), 1), 256 << 10):
            piece = data[offset:offset + (256 << 10)]
            assert op.execute_command("TENANT", "RECEIVE", tenant_id, mid, "CHUNK", rel, str(offset),
                                      str(crc32c(piece)), base64.b64encode(piece).decode()) == "OK"
        manifest += [rel, str(len(data)), str(crc32c(data))]
    op.execute_command("TENANT", "RECEIVE", tenant_id, mid, "PREPARE", str(len(manifest) // 3), *manifest)


def receive_directory(node: Node, tenant_id: str, directory: Path) -> str | None:
    """Sends `directory` as the source of a migration would (TENANT RECEIVE BEGIN, CHUNK, PREPARE,
    COMMIT) as tenant `tenant_id`. A refusal at any step ends it with ABORT and is returned (its
    text); None when the tenant was received."""
    mid = secrets.token_hex(8)
    with node.operator() as op:
        try:
            send_and_prepare(op, tenant_id, mid, directory)
            op.execute_command("TENANT", "RECEIVE", tenant_id, mid, "COMMIT")
            return None
        except REFUSED as refusal:
            try:
                op.execute_command("TENANT", "RECEIVE", tenant_id, mid, "ABORT")
            except REFUSED:
                pass  # nothing was begun
            return str(refusal)


def test_receive_refuses_an_id_equal_to_a_subdomain(root, nodes):
    """A migration arriving as tenant `victimco` (an id equal to a subdomain served here) is
    refused at BEGIN, CHUNK, PREPARE or COMMIT; the real victimco keeps its name."""
    node = start(nodes, Node(root, "a"))
    victim, alice = make_victim(node)
    scratch = root / "scratch"
    impostor_alice = import_impostor(impostor_export(node, scratch), scratch / "imported", victims_data_dir=False)
    refusal = receive_directory(node, VICTIM_SUB, scratch / "imported" / f"tenant_{VICTIM_SUB}")
    assert refusal is not None and refusal.startswith("EXISTS") and VICTIM_SUB in refusal, refusal
    assert_victim_wins(node, victim, alice, impostor_alice)
    # The control: the same sending of another tenant, whose names are free here, is received.
    other = start(nodes, Node(root, "other"))
    free = other.create_tenant(f"free-{secrets.token_hex(2)}")
    snapshots = root / "free-snapshots"
    snapshots.mkdir()
    with other.operator() as op:
        op.execute_command("TENANT", "SNAPSHOT", free["tenant_id"], str(snapshots))
    assert receive_directory(node, free["tenant_id"], snapshots / f"tenant_{free['tenant_id']}") is None
    assert whoami(node, f"owner@{free['subdomain']}", free["owner_token"]) == free["tenant_id"]


# --------------------------------------------------------------------------------------------
# Finding 6: USER LIST paged like ROOMS
# --------------------------------------------------------------------------------------------

def test_user_list_is_paged_like_rooms(root, nodes):
    """`USER LIST [AFTER name] [LIMIT n]`, sorted by name, at most 10,000 a reply. Its LIMIT edge
    cases (0, past 10,000) must answer as ROOMS answers them; malformed ones are ERR or INVALID."""
    node = start(nodes, Node(root, "a"))
    tenant = node.create_tenant(f"users-{secrets.token_hex(2)}", plan="pro")
    names = sorted(["owner"] + [f"user{i:02d}-{secrets.token_hex(2)}" for i in range(25)])
    rooms = ["general", "random"]
    conn = RawConn(node.port)
    try:
        assert conn.command("AUTH", f"owner@{tenant['subdomain']}", tenant["owner_token"]) == b"OK"
        for name in names:
            if name != "owner":
                assert isinstance(conn.command("USER", "ADD", name, "member"), bytes)
        for room in rooms:
            assert conn.command("POST", room, "hi") == 1
        everyone = conn.command("USER", "LIST")
        assert [u[0].decode() for u in everyone] == names

        pages, after = [], None
        while True:
            page = conn.command("USER", "LIST", *(["AFTER", after] if after else []), "LIMIT", "10")
            assert isinstance(page, list), f"USER LIST AFTER/LIMIT refused: {page}"
            assert len(page) <= 10
            pages.append([u[0].decode() for u in page])
            if len(page) < 10:
                break
            after = pages[-1][-1]
            assert len(pages) < 10, pages
        seen = [name for page in pages for name in page]
        assert seen == names, f"paging returned {seen}"
        assert [len(p) for p in pages] == [10, 10, 6]
        rest = conn.command("USER", "LIST", "AFTER", names[4])
        assert isinstance(rest, list) and [u[0].decode() for u in rest] == names[5:], rest

        # The edges, as ROOMS answers them (an empty page or an error; a limit past 10,000 as
        # 10,000 or an error).
        for limit, total_rooms, total_users in (("0", 0, 0), ("10001", len(rooms), len(names))):
            rooms_reply = conn.command("ROOMS", "LIMIT", limit)
            users_reply = conn.command("USER", "LIST", "LIMIT", limit)
            if isinstance(rooms_reply, RespError):
                assert isinstance(users_reply, RespError) and users_reply.code in ("ERR", "INVALID"), (
                    limit, rooms_reply, users_reply)
            else:
                assert len(rooms_reply) == total_rooms, (limit, rooms_reply)
                assert isinstance(users_reply, list) and len(users_reply) == total_users, (
                    f"ROOMS LIMIT {limit} answers {len(rooms_reply)} rooms, USER LIST LIMIT {limit}: {users_reply}")
        for bad in (["LIMIT", "x"], ["LIMIT", "-1"], ["LIMIT", "99999999999999999999999"], ["AFTER"], ["LIMIT"],
                    ["LIMIT", "10", "LIMIT", "10"], ["BEFORE", "x"]):
            reply = conn.command("USER", "LIST", *bad)
            assert isinstance(reply, RespError) and reply.code in ("ERR", "INVALID"), (bad, reply)
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# Finding 7: TENANT RECEIVE staging bounded
# --------------------------------------------------------------------------------------------

STAGING_LIMIT = 1 << 20
RECEIVES_IN_FLIGHT = 4


def staging_node(root: Path, nodes: list) -> Node:
    known = "--migrate-staging-limit" in server_help()
    # Without the flag (the finding open) the server runs with its defaults and the assertions
    # below show what it keeps.
    extra = ["--migrate-staging-limit", "1mb"] if known else []
    return start(nodes, Node(root, "dest", extra=extra))


def operator_conn(node: Node) -> RawConn:
    conn = RawConn(node.port)
    assert conn.command("AUTH", "admin", node.token) == b"OK"
    return conn


def staging_bytes(node: Node) -> int:
    """What the staging directories take on disk: every file's and directory's blocks."""
    return sum(p.stat().st_blocks * 512 for d in node.data.glob(".incoming-*") for p in d.rglob("*"))


def begin_receives(conn: RawConn, count: int) -> list:
    """TENANT RECEIVE BEGIN for `count` new tenants; returns (tenant id, migration id, reply)."""
    out = []
    for i in range(count):
        tid, mid = f"feed{i:04d}", secrets.token_hex(8)
        out.append((tid, mid, conn.command("TENANT", "RECEIVE", tid, mid, "BEGIN")))
    return out


def test_receive_refuses_more_migrations_in_flight_than_its_cap(root, nodes):
    node = staging_node(root, nodes)
    conn = operator_conn(node)
    try:
        replies = [reply for _, _, reply in begin_receives(conn, RECEIVES_IN_FLIGHT + 4)]
    finally:
        conn.close()
    accepted = [r == [] for r in replies]
    refused = [r for r in replies if isinstance(r, RespError)]
    assert all(r == [] or isinstance(r, RespError) for r in replies), replies
    assert accepted[0], f"the first RECEIVE BEGIN is refused: {replies[0]}"
    assert accepted == sorted(accepted, reverse=True), f"a BEGIN accepted after one was refused: {replies}"
    assert sum(accepted) == RECEIVES_IN_FLIGHT, (
        f"{sum(accepted)} RECEIVE BEGINs in flight accepted, the cap is {RECEIVES_IN_FLIGHT}")
    assert refused and all(r.code == "LOADING" for r in refused), replies
    assert len(list(node.data.glob(".incoming-*"))) <= sum(accepted)


def test_receive_chunks_past_the_staging_limit_are_refused(root, nodes):
    node = staging_node(root, nodes)
    chunk = os.urandom(256 << 10)
    crc, encoded = str(crc32c(chunk)), base64.b64encode(chunk).decode()
    conn = operator_conn(node)
    try:
        migrations = [(tid, mid) for tid, mid, reply in begin_receives(conn, 4) if reply == []]
        assert migrations, "no RECEIVE BEGIN accepted"
        # 2 MiB in all, round-robin over the migrations, each file growing, against a 1 MiB budget.
        accepted_bytes, refused, offsets = 0, [], {tid: 0 for tid, _ in migrations}
        for i in range(8):
            tid, mid = migrations[i % len(migrations)]
            reply = conn.command("TENANT", "RECEIVE", tid, mid, "CHUNK", "wal/00000000000000000001.wal",
                                 str(offsets[tid]), crc, encoded)
            if isinstance(reply, RespError):
                refused.append(reply)
            else:
                assert reply == b"OK", reply
                accepted_bytes += len(chunk)
                offsets[tid] += len(chunk)
    finally:
        conn.close()
    on_disk = staging_bytes(node)
    assert refused, f"all {accepted_bytes} bytes of CHUNKs were staged, past a limit of {STAGING_LIMIT}"
    assert accepted_bytes <= STAGING_LIMIT, f"{accepted_bytes} bytes accepted past {STAGING_LIMIT}"
    assert on_disk <= STAGING_LIMIT + (64 << 10), f"{on_disk} bytes staged on disk past {STAGING_LIMIT}"


def test_receive_paths_under_a_marker_name_are_refused(root, nodes):
    """A CHUNK to `PREPARED/x` would make the staging look prepared (kept across restarts, never
    dropped) and the next BEGIN fail: refused, and BEGIN again works."""
    node = staging_node(root, nodes)
    empty_crc = str(crc32c(b""))
    conn = operator_conn(node)
    try:
        (tid, mid, reply), = begin_receives(conn, 1)
        assert reply == [], reply
        for path in ("PREPARED/x", "RECEIVING/x", "MIGRATED_TO/y", "PREPARED", "MIGRATED_IN/a/b"):
            reply = conn.command("TENANT", "RECEIVE", tid, mid, "CHUNK", path, "0", empty_crc, "")
            assert isinstance(reply, RespError) and reply.code == "INVALID", (path, reply)
        assert conn.command("TENANT", "RECEIVE", tid, secrets.token_hex(8), "BEGIN") == []
    finally:
        conn.close()
    restart_after_kill(node)
    assert poll(lambda: not list(node.data.glob(".incoming-*")), 10), "the staging survived the restart"


def test_empty_chunks_count_against_the_staging_limit(root, nodes):
    """Empty CHUNKs make files and directories: each counts as a block, and a migration sends at
    most 100,000 files, so 2,000 of them against a 1 MiB limit are refused once it is reached."""
    node = staging_node(root, nodes)
    empty_crc = str(crc32c(b""))
    conn = operator_conn(node)
    try:
        (tid, mid, reply), = begin_receives(conn, 1)
        assert reply == [], reply
        batch = b"".join(resp("TENANT", "RECEIVE", tid, mid, "CHUNK", f"d{i}/e/f/g", "0", empty_crc, "")
                         for i in range(2000))
        conn.sock.sendall(batch)
        replies = [conn.reply() for _ in range(2000)]
    finally:
        conn.close()
    accepted = sum(1 for r in replies if r == b"OK")
    refused = [r for r in replies if isinstance(r, RespError)]
    assert refused and all(r.code == "QUOTA" for r in refused), refused[:3]
    # Four blocks each (a file and three directories): at most the limit's worth.
    assert accepted <= STAGING_LIMIT // (4 * 4096), accepted
    assert staging_bytes(node) <= 2 * STAGING_LIMIT, staging_bytes(node)


def test_a_prepared_migration_still_counts_after_a_restart(root, nodes):
    """A migration PREPAREd before a restart keeps its staging (its source may have decided) and
    keeps counting against the limit: another migration cannot stage past it."""
    node = staging_node(root, nodes)
    chunk = os.urandom(200 << 10)
    crc, encoded = str(crc32c(chunk)), base64.b64encode(chunk).decode()
    source = start(nodes, Node(root, "src"))
    tenant = source.create_tenant(f"prep-{secrets.token_hex(2)}")
    post_messages(source, tenant, "general", 3)
    snapshots = root / "prep-snapshots"
    snapshots.mkdir()
    with source.operator() as op:
        op.execute_command("TENANT", "SNAPSHOT", tenant["tenant_id"], str(snapshots))
    directory = snapshots / f"tenant_{tenant['tenant_id']}"
    # Padding: a file the verification ignores, so that the prepared staging holds ~800 KB.
    (directory / "padding").write_bytes(os.urandom(800 << 10))
    with node.operator() as op:
        send_and_prepare(op, tenant["tenant_id"], secrets.token_hex(8), directory)
    restart_after_kill(node)
    assert list(node.data.glob(f".incoming-{tenant['tenant_id']}")), "the prepared staging was removed"
    conn = operator_conn(node)
    try:
        (tid, mid2, reply), = begin_receives(conn, 1)
        assert reply == [], reply
        replies = [conn.command("TENANT", "RECEIVE", tid, mid2, "CHUNK", "wal/x", str(i * len(chunk)), crc, encoded)
                   for i in range(3)]
    finally:
        conn.close()
    refused = [r for r in replies if isinstance(r, RespError)]
    assert refused and refused[0].code == "QUOTA", replies


def test_staging_left_by_a_crash_is_removed_at_start(root, nodes):
    node = staging_node(root, nodes)
    chunk = os.urandom(4096)
    conn = operator_conn(node)
    try:
        begun = [(tid, mid) for tid, mid, reply in begin_receives(conn, 3) if reply == []]
        assert len(begun) >= 1, "no RECEIVE BEGIN accepted"
        for tid, mid in begun:
            assert conn.command("TENANT", "RECEIVE", tid, mid, "CHUNK", "wal/x", "0", str(crc32c(chunk)),
                                base64.b64encode(chunk).decode()) == b"OK"
    finally:
        conn.close()
    assert len(list(node.data.glob(".incoming-*"))) == len(begun)
    restart_after_kill(node)
    gone = poll(lambda: not list(node.data.glob(".incoming-*")), 10)
    assert gone, f"staging left by kill -9 survives the restart: {[p.name for p in node.data.glob('.incoming-*')]}"


# --------------------------------------------------------------------------------------------
# Finding 8: cold chunks checksummed
# --------------------------------------------------------------------------------------------

COLD_MESSAGES = 6000
COLD_TEXT_BYTES = 4000


def cold_file_descriptors(pid: int) -> list[tuple[str, str]]:
    """(fd, target) of the process's cold files: `.cold-*`, unlinked once open."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "/.cold-" in target:
            found.append((fd, target))
    return found


def test_altered_cold_chunks_are_an_ioerr_never_altered_text(root, nodes):
    """Under --maxmemory 32mb the oldest messages go to the tenant's cold file. The file is
    unlinked as soon as it is open and built again at every start (docs/operations.md, Memory), so
    its bytes are changed while the server runs, through /proc/<pid>/fd."""
    node = start(nodes, Node(root, "a", extra=["--maxmemory", "32mb"]))
    tenant = node.create_tenant(f"cold-{secrets.token_hex(2)}", plan="enterprise")
    texts: dict[int, str] = {}
    with node.client(f"owner@{tenant['subdomain']}", tenant["owner_token"]) as c:
        for start_at in range(0, COLD_MESSAGES, 500):
            batch = [base64.b64encode(os.urandom(COLD_TEXT_BYTES * 3 // 4)).decode() for _ in range(500)]
            pipe = c.pipeline(transaction=False)
            for text in batch:
                pipe.execute_command("POST", "big", text)
            for seq, text in zip(pipe.execute(), batch):
                texts[int(seq)] = text
    assert sorted(texts) == list(range(1, COLD_MESSAGES + 1))
    pid = node.proc.pid
    cold = cold_file_descriptors(pid)
    assert cold, "no cold file: nothing moved out of memory"
    # The texts are random base64, which lz4 leaves as literals: find some of them in the cold
    # file and change one character of each (to another base64 character, so the text stays
    # valid UTF-8 of the same length). Unchecked, HISTORY then returns them altered.
    changed: list[int] = []
    for fd, _ in cold:
        with open(f"/proc/{pid}/fd/{fd}", "r+b", buffering=0) as f:
            content = f.read()
            for seq in range(1, COLD_MESSAGES + 1, 97):
                probe = texts[seq][1000:1032].encode()
                offset = content.find(probe)
                if offset < 0:
                    continue
                f.seek(offset + 16)
                f.write(b"A" if probe[16] != ord("A") else b"B")
                changed.append(seq)
                if len(changed) >= 8:
                    break
    assert changed, f"no message text found in the cold files {cold} ({sum(len(t) for t in texts.values())} bytes posted)"

    altered, errors, seen = [], [], 0
    conn = RawConn(node.port, timeout=30)
    try:
        assert conn.command("AUTH", f"owner@{tenant['subdomain']}", tenant["owner_token"]) == b"OK"
        after = 0
        while after < COLD_MESSAGES:
            page = conn.command("HISTORY", "big", "AFTER", str(after), "LIMIT", "50")
            if isinstance(page, RespError):
                assert page.code == "IOERR", f"HISTORY AFTER {after}: {page}"
                errors.append(after)
                after += 50
                continue
            assert page, f"HISTORY AFTER {after} is empty"
            for seq, _, _, text in page:
                seen += 1
                if text != texts[seq].encode():
                    altered.append(seq)
            after = page[-1][0]
    finally:
        conn.close()
    assert not altered, (f"{len(altered)} messages came back with altered text (seqs {altered[:10]}) after one "
                         f"byte of the texts of seqs {changed} was changed in the cold file; IOERR pages: {errors}")
    assert seen + 50 * len(errors) >= COLD_MESSAGES
    # The changed chunks were read (not served from the cache) and refused.
    assert errors, "no page was refused although texts were changed in the cold file"


# --------------------------------------------------------------------------------------------
# Finding 9 and the server-wide guard: replies held by clients that never read, AUTH guesses
# from one address over many connections, AUTH to a tenant that moved away
# --------------------------------------------------------------------------------------------

def test_replies_held_by_clients_that_never_read_are_bounded_server_wide(root, nodes):
    """60 connections each pipeline HISTORY pages of 4 MB and read nothing: without a bound each
    holds its window and a page or two (about 18 MB, 1 GB in all); `--maxmemory-clients 16mb`
    closes the biggest holders, and a client that reads is served all along."""
    node = start(nodes, Node(root, "a", extra=["--maxmemory-clients", "16mb"]))
    tenant = node.create_tenant(f"hist-{secrets.token_hex(2)}")
    with node.client(f"owner@{tenant['subdomain']}", tenant["owner_token"]) as c:
        pipe = c.pipeline(transaction=False)
        for i in range(1000):
            pipe.execute_command("POST", "general", f"{i:04d} " + "x" * 4000)
        pipe.execute()
    base = rss_bytes(node.proc.pid)
    peak = base
    auth = resp("AUTH", f"owner@{tenant['subdomain']}", tenant["owner_token"])
    burst = resp("HISTORY", "general", "LIMIT", "1000") * 20
    socks = []
    # What each socket sent of its current burst: a partial send goes on where it stopped, so
    # every request reaches the server whole.
    offsets: dict = {}
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", node.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(auth)
            s.setblocking(False)
            socks.append(s)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for s in socks:
                try:
                    sent = s.send(burst[offsets.get(s, 0):])
                    offsets[s] = (offsets.get(s, 0) + sent) % len(burst)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
                    pass
            peak = max(peak, rss_bytes(node.proc.pid))
            time.sleep(0.02)
        # A client that reads is served meanwhile.
        with node.client(f"owner@{tenant['subdomain']}", tenant["owner_token"]) as c:
            assert len(c.execute_command("HISTORY", "general", "LIMIT", "10")) == 10
        evicted = node.tail(100000).count("client_evicted")
    finally:
        for s in socks:
            s.close()
    growth = peak - base
    assert evicted > 0, "no connection was closed for holding replies"
    # INFO tells them, in Redis's names, and once the sockets are gone nothing stays counted.
    assert int(operator_info(node, "stats")["evicted_clients"]) >= evicted
    assert poll(lambda: int(operator_info(node, "persistence")["mem_clients_normal"]) < (1 << 20), 10), (
        operator_info(node, "persistence"))
    # At most one 4 MB page per connection is built before it is counted, plus the bound.
    assert growth < 60 * (4 << 20) + (128 << 20), f"the server grew by {growth >> 20} MiB"


def test_many_connections_from_one_address_get_no_more_auth_guesses(root, nodes):
    """Past its free failures, an address's wrong tokens are answered after 3 s each, at most 16
    at a time however many connections it opens (before: every connection waited on its own, so
    500 connections made 166 guesses a second). A right token from the same address is answered
    at once all along, and another address is not held up."""
    node = start(nodes, Node(root, "a"))
    tenant = node.create_tenant(f"guess-{secrets.token_hex(2)}")
    user = f"owner@{tenant['subdomain']}"
    source = "127.0.0.77"

    def wrong_auth(answered: list, conn: RawConn) -> None:
        try:
            reply = conn.command("AUTH", user, secrets.token_hex(32))
            assert isinstance(reply, RespError) and reply.code == "WRONGPASS", reply
            answered.append(time.monotonic())
        except (ConnectionError, OSError):
            pass

    def flood(count: int) -> tuple[list, list, list]:
        answered: list = []
        conns = [RawConn(node.port, source=source, timeout=30) for _ in range(count)]
        threads = [threading.Thread(target=wrong_auth, args=(answered, conn)) for conn in conns]
        for thread in threads:
            thread.start()
        return answered, threads, conns

    # Past the address's free failures (10): 24 wrong tokens at once.
    answered, threads, conns = flood(24)
    for thread in threads:
        thread.join(60)
    for conn in conns:
        conn.close()
    assert len(answered) == 24

    # 64 connections at once now: each wrong token waits 3 s, 16 at a time.
    started = time.monotonic()
    answered, threads, conns = flood(64)
    try:
        # The right token, from the same address, meanwhile: answered at once.
        right = RawConn(node.port, source=source, timeout=30)
        try:
            asked = time.monotonic()
            assert right.command("AUTH", user, tenant["owner_token"]) == b"OK"
            assert time.monotonic() - asked < 2.0, "a right token waited behind the guesses"
        finally:
            right.close()
        other = RawConn(node.port, source="127.0.0.78")
        try:
            assert other.command("AUTH", user, tenant["owner_token"]) == b"OK"
        finally:
            other.close()
        time.sleep(max(0.0, started + 4.5 - time.monotonic()))
        early = len([t for t in answered if t - started <= 4.5])
        # One round of 16 slots in the first 4.5 s (a few more for slack), never all 64.
        assert early <= 24, f"{early} wrong tokens answered in 4.5 s from one address"
        for thread in threads:
            thread.join(60)
        assert len(answered) == 64, "every guess is answered in the end"
    finally:
        for conn in conns:
            conn.close()


def test_auth_to_a_migrated_tenant_tells_only_its_own_users_where_it_went(root, nodes):
    """After TENANT MIGRATE the source answers a right token `-MIGRATED <id> <host>:<port>`; a
    wrong token, an unknown user or a user of no tenant get WRONGPASS (counted as failures), so an
    anonymous client learns neither the id nor the internal address."""
    a = start(nodes, Node(root, "a"))
    b = start(nodes, Node(root, "b"))
    tenant = a.create_tenant(f"moved-{secrets.token_hex(2)}")
    migrate(a, tenant["tenant_id"], b)
    sub = tenant["subdomain"]
    for user, token in [(f"owner@{sub}", tenant["owner_token"]), (f"owner@{tenant['tenant_id']}", tenant["owner_token"])]:
        conn = RawConn(a.port)
        try:
            reply = conn.command("AUTH", user, token)
        finally:
            conn.close()
        assert isinstance(reply, RespError) and reply == f"MIGRATED {tenant['tenant_id']} 127.0.0.1:{b.port}", reply
    for user, token in [(f"owner@{sub}", "wrong"), (f"nobody@{sub}", tenant["owner_token"]),
                        (f"owner@{tenant['tenant_id']}", secrets.token_hex(32))]:
        conn = RawConn(a.port)
        try:
            reply = conn.command("AUTH", user, token)
        finally:
            conn.close()
        assert isinstance(reply, RespError) and reply.code == "WRONGPASS", reply
        assert tenant["tenant_id"] not in reply and str(b.port) not in reply, reply
    # Counted as failed AUTHs (logged with event=auth_failed).
    assert a.tail(100000).count("auth_failed") >= 3
    # The source restarted: the keys come back from the MIGRATED_TO marker.
    a.stop()
    a.start()
    conn = RawConn(a.port)
    try:
        assert conn.command("AUTH", f"owner@{sub}", "wrong").code == "WRONGPASS"
        reply = conn.command("AUTH", f"owner@{sub}", tenant["owner_token"])
    finally:
        conn.close()
    assert reply == f"MIGRATED {tenant['tenant_id']} 127.0.0.1:{b.port}", reply


# --------------------------------------------------------------------------------------------
# Pub/sub pushes written by the connection's handler (issue 21): the protocol a push is encoded
# in follows HELLO's reply, and what subscribers that never read hold counts in maxmemory-clients
# --------------------------------------------------------------------------------------------

def test_hello_2_reply_comes_before_any_push_in_resp2(root, nodes):
    """A RESP3 subscriber switches to RESP2 with HELLO 2 while its room is flooded from another
    connection: every push before HELLO's reply is RESP3 (`>`), and HELLO's reply is the first
    RESP2 frame; a push encoded in RESP2 ahead of it would be taken for HELLO's reply."""
    node = start(nodes, Node(root, "a", extra=["--threads", "2"]))
    tenant = node.create_tenant(f"hello-{secrets.token_hex(2)}", plan="enterprise")
    user = f"owner@{tenant['subdomain']}"
    stop = threading.Event()

    def flood():
        with node.client(user, tenant["owner_token"]) as poster:
            while not stop.is_set():
                pipe = poster.pipeline(transaction=False)
                for i in range(50):
                    pipe.execute_command("POST", "r", f"m{i}")
                pipe.execute()

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        for trial in range(20):
            conn = RawConn(node.port)
            try:
                hello = conn.command("HELLO", "3", "AUTH", user, tenant["owner_token"])
                assert isinstance(hello, dict) and hello[b"proto"] == 3, hello
                conn.sock.sendall(resp("SUBSCRIBE", "r"))
                assert conn.reply() == Push([b"subscribe", b"r", 1])
                conn.sock.sendall(resp("HELLO", "2"))
                while True:
                    frame = conn.reply()
                    if isinstance(frame, Push):
                        assert frame[0] == b"message", frame
                        continue
                    break
                assert isinstance(frame, list) and frame[:2] == [b"server", b"tenantd"], (trial, frame)
                assert frame[frame.index(b"proto") + 1] == 2
                # From here on the pushes are RESP2 arrays.
                message = conn.reply()
                assert isinstance(message, list) and not isinstance(message, Push) and message[0] == b"message"
            finally:
                conn.close()
    finally:
        stop.set()
        flooder.join()


def test_pushes_held_for_subscribers_that_never_read_count_in_maxmemory_clients(root, nodes):
    """Subscribers that never read, with a pub/sub limit too high to cut them off: their pushes
    wait in the server, and `--maxmemory-clients 8mb` closes the biggest holders; a subscriber
    that reads gets every message all along, and once the sockets are gone nothing stays counted."""
    node = start(nodes, Node(root, "a", extra=[
        "--maxmemory-clients", "8mb", "--client-output-buffer-limit-pubsub", "512mb 0 0"]))
    tenant = node.create_tenant(f"sleep-{secrets.token_hex(2)}", plan="enterprise")
    user = f"owner@{tenant['subdomain']}"
    sleepers = []
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", node.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(resp("AUTH", user, tenant["owner_token"]) + resp("SUBSCRIBE", "flood"))
        sleepers.append(s)
    reader = RawConn(node.port)
    assert reader.command("AUTH", user, tenant["owner_token"]) == b"OK"
    reader.sock.sendall(resp("SUBSCRIBE", "flood"))
    assert reader.reply() == [b"subscribe", b"flood", 1]
    time.sleep(0.5)
    text = "z" * 60_000
    try:
        # 6 MB of pushes per sleeper in all: 36 MB held without the bound.
        with node.client(user, tenant["owner_token"]) as poster:
            for batch in range(10):
                pipe = poster.pipeline(transaction=False)
                for _ in range(10):
                    pipe.execute_command("POST", "flood", text)
                assert all(isinstance(r, int) for r in pipe.execute())
                for _ in range(10):
                    assert reader.reply()[0] == b"message"
        assert poll(lambda: node.tail(100000).count("client_evicted") > 0, 10), node.tail(40)
    finally:
        for s in sleepers:
            s.close()
        reader.close()
    assert int(operator_info(node, "stats")["evicted_clients"]) > 0
    assert poll(lambda: int(operator_info(node, "persistence")["mem_clients_normal"]) < (1 << 20), 10), (
        operator_info(node, "persistence"))
