"""Three tenantd servers behind one HAProxy (issue 11, point 4): the repository's own
`deploy/haproxy/haproxy.cfg` and `deploy/haproxy/move-tenant`, Debian's `haproxy`.

HAProxy listens on a loopback port in TCP mode and routes each TLS connection by its server name
(`<subdomain>.chat.test`) through `tenants.map` to the server that holds the tenant, TLS passed
through to tenantd (`--tls-port`, `TENANT_DOMAIN=chat.test`). Clients are redis-py with
`ssl=True` (the host it connects to is the server name it sends) and redis-cli with `--sni`.

The main trial moves a tenant from one server to another with `move-tenant` while a client posts
to it through HAProxy without pause, and clients of other tenants, on the source and elsewhere,
post too: every message acknowledged to the moved tenant's client is on the destination in seq
order, the other tenants' clients see no error at all, and the longest gap between two
acknowledgements is reported.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import REPO, SOCKET_TIMEOUT, SUBPROCESS_TIMEOUT
from nodes import Node, free_port
from tlsnames import DOMAIN, make_certificate, resolve_chat_test  # noqa: F401 (a fixture)

DEPLOY = REPO / "deploy" / "haproxy"


class HAProxy:
    def __init__(self, root: Path, backends: dict[str, int], placement: dict[str, str]):
        self.root = root
        self.port = free_port()
        self.socket = root / "admin.sock"
        # The repository's files, unchanged, next to a map made for this trial.
        shutil.copy(DEPLOY / "haproxy.cfg", root / "haproxy.cfg")
        (root / "tenants.map").write_text("".join(f"{sub} {be}\n" for sub, be in placement.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTD_", "HAPROXY_"))}
        env.update({
            "HAPROXY_BIND": f"127.0.0.1:{self.port}",
            "HAPROXY_MAXCONN": "1000",
            "HAPROXY_RUNTIME_SOCKET": str(self.socket),
            "HAPROXY_TENANTS_MAP": str(root / "tenants.map"),
            "TENANT_DOMAIN": DOMAIN,
            **{f"TENANTD_S{i}": f"127.0.0.1:{port}" for i, port in backends.items()},
        })
        check = subprocess.run(["haproxy", "-c", "-f", str(root / "haproxy.cfg")], env=env, capture_output=True,
                               text=True, timeout=SUBPROCESS_TIMEOUT)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(root / "haproxy.log", "wb")
        # -db: in the foreground, not a daemon.
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(root / "haproxy.cfg")], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (root / "haproxy.log").read_text()
            if self.socket.exists():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError("HAProxy did not start: " + (root / "haproxy.log").read_text())

    def runtime(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def map_entry(self, key: str) -> str:
        """The backend the loaded map gives `key` (`get map` on the one map file)."""
        listing = self.runtime("show map")
        ids = [line.split()[0] for line in listing.splitlines() if line.split() and line.split()[0].lstrip("-").isdigit()]
        assert len(ids) == 1, listing
        answer = self.runtime(f"get map #{ids[0]} {key}")
        return answer.split('value="', 1)[1].split('"', 1)[0] if 'value="' in answer else ""

    def servers_up(self) -> dict[str, bool]:
        """`backend/server` -> whether its health check says UP (`show servers state`, srv_op_state 2)."""
        states = {}
        for line in self.runtime("show servers state").splitlines():
            fields = line.split()
            if len(fields) > 6 and fields[0].isdigit():
                states[f"{fields[1]}/{fields[3]}"] = fields[5] == "2"
        return states

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def fleet():
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (apt-get install haproxy)")
    root = Path(tempfile.mkdtemp(prefix="tenantd-haproxy-"))
    make_certificate(root)
    nodes: dict[int, Node] = {}
    proxy = None
    try:
        for i in (1, 2, 3):
            tls_port = free_port()
            node = Node(root, f"s{i}", env={"TENANT_DOMAIN": DOMAIN},
                        extra=["--tls-port", str(tls_port), "--tls-cert-file", str(root / "cert.pem"),
                               "--tls-key-file", str(root / "key.pem")])
            node.tls_port = tls_port
            nodes[i] = node.start()
        tenants = {
            "acme": (1, nodes[1].create_tenant("acme", plan="enterprise")),      # moved from s1 to s2
            "globex": (1, nodes[1].create_tenant("globex", plan="enterprise")),  # stays on the source
            "initech": (2, nodes[2].create_tenant("initech", plan="enterprise")),  # already on the destination
            "hooli": (3, nodes[3].create_tenant("hooli", plan="enterprise")),    # elsewhere
        }
        proxy = HAProxy(root, {i: n.tls_port for i, n in nodes.items()},
                        {sub: f"be_s{server}" for sub, (server, _) in tenants.items()})
        yield {"root": root, "nodes": nodes, "tenants": tenants, "proxy": proxy}
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes.values():
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _through_haproxy(fleet, subdomain: str, token: str) -> redis.Redis:
    """A plain user name: the tenant is the one the server name names."""
    return redis.Redis(host=f"{subdomain}.{DOMAIN}", port=fleet["proxy"].port, username="owner", password=token,
                       protocol=3, ssl=True, ssl_ca_certs=str(fleet["root"] / "cert.pem"), decode_responses=True,
                       socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                       retry=Retry(NoBackoff(), 0))


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _wait_all_up(proxy: HAProxy) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = proxy.servers_up()
        if states and all(states.values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"health checks never marked every server up: {proxy.servers_up()}")


class Poster(threading.Thread):
    """Posts to one room through HAProxy without pause; on an error (the move), reconnects at once."""

    def __init__(self, fleet, subdomain: str, token: str):
        super().__init__(daemon=True)
        self.fleet, self.subdomain, self.token = fleet, subdomain, token
        self.acked: list[tuple[int, str, float]] = []
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        client = _through_haproxy(self.fleet, self.subdomain, self.token)
        i = 0
        while not self.done.is_set():
            text = f"{self.subdomain} {i} 你好"
            try:
                seq = int(client.execute_command("POST", "live", text))
                self.acked.append((seq, text, time.monotonic()))
                i += 1
            except (redis.ResponseError, redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                try:
                    client.close()
                except Exception:
                    pass
                client = _through_haproxy(self.fleet, self.subdomain, self.token)
                time.sleep(0.005)
        client.close()

    def longest_gap_ms(self) -> float:
        times = [t for _, _, t in self.acked]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0) * 1000


def test_health_checks_and_routing_by_server_name(fleet):
    proxy, tenants = fleet["proxy"], fleet["tenants"]
    _wait_all_up(proxy)
    # Each tenant lands on its own server, logged in by a plain user name.
    for sub, (server, tenant) in tenants.items():
        with _through_haproxy(fleet, sub, tenant["owner_token"]) as c:
            assert c.execute_command("WHOAMI") == [tenant["tenant_id"], "owner", "owner"]
            c.execute_command("POST", "general", f"hello {sub}")
        assert fleet["nodes"][server].serves(tenant["tenant_id"])
    # Another tenant's credential under this server name: WRONGPASS, wherever it routes.
    with pytest.raises(redis.AuthenticationError):
        _through_haproxy(fleet, "acme", tenants["globex"][1]["owner_token"]).ping()
    with pytest.raises(redis.AuthenticationError):
        _through_haproxy(fleet, "nosuchtenant", tenants["acme"][1]["owner_token"]).ping()
    # redis-cli with --sni through HAProxy.
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(proxy.port), "--tls", "--cacert", str(fleet["root"] / "cert.pem"),
         "--sni", f"hooli.{DOMAIN}", "--user", "owner", "--pass", tenants["hooli"][1]["owner_token"],
         "--no-auth-warning", "WHOAMI"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0 and done.stdout.split() == [tenants["hooli"][1]["tenant_id"], "owner", "owner"], done
    # Not TLS: dropped by HAProxy, never read as a command.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"PING\r\n")
        s.settimeout(10)
        assert s.recv(100) == b""
    # A server down is seen by its health check.
    fleet["nodes"][3].kill()
    deadline = time.monotonic() + 30
    while proxy.servers_up().get("be_s3/s3", True) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proxy.servers_up()["be_s3/s3"] is False
    fleet["nodes"][3].start()
    _wait_all_up(proxy)


def test_a_tenant_moves_behind_haproxy_while_its_client_posts(fleet):
    proxy, nodes, tenants = fleet["proxy"], fleet["nodes"], fleet["tenants"]
    _wait_all_up(proxy)
    acme = tenants["acme"][1]
    tid = acme["tenant_id"]
    # Some history first, so that there is a directory worth copying.
    with _through_haproxy(fleet, "acme", acme["owner_token"]) as c:
        pipe = c.pipeline(transaction=False)
        for i in range(2000):
            pipe.execute_command("POST", "general", f"history {i} привет")
        pipe.execute()

    posters = {sub: Poster(fleet, sub, t["owner_token"]) for sub, (_, t) in tenants.items()}
    for p in posters.values():
        p.start()
    _wait_for(lambda: all(len(p.acked) >= 50 for p in posters.values()), "every client's first acknowledgements")
    env = dict(os.environ, TENANTD_SOURCE_TOKEN=nodes[1].token, TENANTD_DEST_TOKEN=nodes[2].token)
    moved = subprocess.run(
        [str(DEPLOY / "move-tenant"), "acme", "--source", f"127.0.0.1:{nodes[1].port}",
         "--dest", f"127.0.0.1:{nodes[2].port}", "--backend", "be_s2", "--haproxy-socket", str(proxy.socket),
         "--map-file", str(fleet["root"] / "tenants.map")],
        env=env, capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    counts = {sub: len(p.acked) for sub, p in posters.items()}
    # Every client goes on after the move, the moved one through HAProxy to the destination.
    _wait_for(lambda: all(len(p.acked) >= counts[sub] + 50 for sub, p in posters.items()),
              "acknowledgements after the move")
    for p in posters.values():
        p.done.set()
    for p in posters.values():
        p.join(timeout=30)
        assert not p.is_alive()

    mover = posters["acme"]
    # Every acknowledged message is on the destination, in seq order, and nowhere else.
    assert nodes[2].serves(tid) and not nodes[1].serves(tid)
    history = nodes[2].history(tid, "live")
    seqs = [int(m[0]) for m in history]
    assert seqs == list(range(1, len(seqs) + 1))
    texts = {int(m[0]): m[3] for m in history}
    for seq, text, _ in mover.acked:
        assert texts.get(seq) == text, (seq, text)
    assert [s for s, _, _ in mover.acked] == sorted(s for s, _, _ in mover.acked)
    assert len(nodes[2].history(tid, "general")) == 2000
    # What the moved client saw: MIGRATED (or its connection closed), never MOVED.
    assert all("MOVED" not in e for e in mover.errors), mover.errors
    # The other tenants never noticed: not one error, and all they were told is there.
    for sub in ("globex", "initech", "hooli"):
        p = posters[sub]
        assert p.errors == [], (sub, p.errors)
        server, tenant = tenants[sub]
        stored = {int(m[0]): m[3] for m in nodes[server].history(tenant["tenant_id"], "live")}
        assert all(stored.get(seq) == text for seq, text, _ in p.acked)
    # HAProxy now sends acme to s2, and the map file says so for the next reload.
    assert proxy.map_entry("acme") == "be_s2" and proxy.map_entry("globex") == "be_s1"
    assert "acme be_s2" in (fleet["root"] / "tenants.map").read_text().splitlines()
    with _through_haproxy(fleet, "acme", acme["owner_token"]) as c:
        assert c.execute_command("WHOAMI")[0] == tid
    # Run again, the move only checks the map: idempotent.
    again = subprocess.run(
        [str(DEPLOY / "move-tenant"), "acme", "--source", f"127.0.0.1:{nodes[1].port}",
         "--dest", f"127.0.0.1:{nodes[2].port}", "--backend", "be_s2", "--haproxy-socket", str(proxy.socket)],
        env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "committed=already" in again.stdout, again.stdout + again.stderr

    gaps = {sub: p.longest_gap_ms() for sub, p in posters.items()}
    print(f"\nmove: {moved.stdout.strip()}")
    print(f"acknowledged: { {sub: len(p.acked) for sub, p in posters.items()} }; "
          f"the moved client's errors: {len(mover.errors)} ({mover.errors[:2]})")
    print(f"longest gap between two acknowledgements (ms): {', '.join(f'{s} {g:.0f}' for s, g in gaps.items())}")
    # A hang would show here; the figure itself is reported, not judged (shared, noisy machines).
    assert gaps["acme"] < 30_000
