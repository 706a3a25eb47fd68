"""Stock Redis clients (redis-cli, redis-benchmark, redis-py) against a real tenantd.

Each test checks what /work/shared/PROTOCOL.md promises, seen through an unmodified client.
Every tenant is made fresh for its test, so tests do not depend on each other's data.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from conftest import SUBPROCESS_TIMEOUT, Server

# Texts from real chats: the server must keep UTF-8 byte for byte.
CHINESE = "今晚七点开会，别迟到！"
RUSSIAN = "Привет! Созвон перенесли на 15:00, ссылку скину позже."
MIXED = 'ok 👍 "quoted" \\ back'

WRONGPASS_TEXT = "WRONGPASS invalid username-password pair or user is disabled."
WRONGPASS_MSG = "invalid username-password pair or user is disabled."  # redis-py strips the code


# ---------------------------------------------------------------- helpers


def run(cmd: list[str], stdin: bytes | None = None, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)


def cli(
    server: Server,
    *args: str,
    user: str | None = None,
    password: str | None = None,
    resp3: bool = False,
    raw: bool = True,
    extra: tuple[str, ...] = (),
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess:
    cmd = ["redis-cli", "-h", server.host, "-p", str(server.port), "--no-auth-warning"]
    if user is not None:
        cmd += ["--user", user, "--pass", password]
    if resp3:
        cmd.append("-3")
    cmd.append("--raw" if raw else "--no-raw")
    cmd += list(extra)
    cmd += list(args)
    return run(cmd, stdin=stdin)


def bench(server: Server, *args: str) -> subprocess.CompletedProcess:
    return run(["redis-benchmark", "-h", server.host, "-p", str(server.port), *args])


def cli_repr(s: str) -> str:
    """What redis-cli's formatted (--no-raw) output shows for a bulk string (Redis's sdscatrepr)."""
    out = []
    for b in s.encode():
        c = chr(b)
        if c in '\\"':
            out.append("\\" + c)
        elif c in "\n\r\t\a\b":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\a": "\\a", "\b": "\\b"}[c])
        elif 0x20 <= b <= 0x7E:
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def cli_tty_history(msgs: list) -> str:
    """redis-cli's formatted output for a HISTORY reply (fewer than 10 messages)."""
    lines = []
    for i, (seq, ts, user, text) in enumerate(msgs, 1):
        inner = [f"(integer) {seq}", f"(integer) {ts}", cli_repr(user), cli_repr(text)]
        for j, v in enumerate(inner, 1):
            lines.append((f"{i}) " if j == 1 else "   ") + f"{j}) {v}")
    return "\n".join(lines) + "\n" if lines else "(empty array)\n"


def cli_raw_history(msgs: list) -> str:
    return "".join(f"{seq}\n{ts}\n{user}\n{text}\n" for seq, ts, user, text in msgs)


def resp(*args: str) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def wait_pubsub(p, kind: str, deadline: float) -> dict:
    """The next pub/sub event of type `kind`, waiting at most until `deadline` (monotonic)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no pub/sub {kind!r} event before the deadline")
        msg = p.get_message(timeout=min(remaining, 1.0))
        if msg is None:
            continue
        assert msg["type"] == kind, msg
        return msg


class LineReader:
    """A long-running subprocess (redis-cli SUBSCRIBE) whose stdout lines are read with deadlines."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def next_lines(self, n: int, deadline: float) -> list[str]:
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"redis-cli printed {out!r}, not {n} lines, before the deadline")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"redis-cli exited ({self.proc.wait(timeout=5)}) after printing {out!r}")
            out.append(line)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=SUBPROCESS_TIMEOUT)
        self.proc.stdout.close()


def user_ref(tenant: dict, name: str | None = None, by_id: bool = False) -> str:
    return f"{name or tenant['owner']}@{tenant['tenant_id'] if by_id else tenant['subdomain']}"


PROTOCOLS = pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])


# ---------------------------------------------------------------- redis-cli


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_redis_cli_post_and_history(server, resp3):
    t = server.create_tenant()
    tok = t["owner_token"]
    by_sub, by_id = user_ref(t), user_ref(t, by_id=True)

    p1 = cli(server, "POST", "general", CHINESE, user=by_sub, password=tok, resp3=resp3)
    assert (p1.returncode, p1.stdout, p1.stderr) == (0, b"1\n", b"")
    p2 = cli(server, "POST", "general", RUSSIAN, user=by_id, password=tok, resp3=resp3, raw=False)
    assert (p2.returncode, p2.stdout, p2.stderr) == (0, b"(integer) 2\n", b"")
    p3 = cli(server, "POST", "general", MIXED, user=by_sub, password=tok, resp3=resp3, raw=False)
    assert (p3.returncode, p3.stdout) == (0, b"(integer) 3\n")

    msgs = server.history_all(t["tenant_id"], "general")
    assert [m[0] for m in msgs] == [1, 2, 3]
    assert [m[2] for m in msgs] == ["alice"] * 3
    assert [m[3] for m in msgs] == [CHINESE, RUSSIAN, MIXED]

    raw = cli(server, "HISTORY", "general", user=by_sub, password=tok, resp3=resp3)
    assert raw.returncode == 0
    assert raw.stdout.decode() == cli_raw_history(msgs)

    tty = cli(server, "HISTORY", "general", user=by_id, password=tok, resp3=resp3, raw=False)
    assert tty.returncode == 0
    assert tty.stdout.decode() == cli_tty_history(msgs)
    # redis-cli escapes non-ASCII bytes in this format: the UTF-8 bytes are exactly the text's.
    assert "\\xe4\\xbb\\x8a" in tty.stdout.decode()  # 今

    page = cli(server, "HISTORY", "general", "AFTER", "1", "LIMIT", "1", user=by_sub, password=tok, resp3=resp3, raw=False)
    assert page.stdout.decode() == cli_tty_history(msgs[1:2])
    empty = cli(server, "HISTORY", "nosuchroom", user=by_sub, password=tok, resp3=resp3, raw=False)
    assert empty.stdout == b"(empty array)\n"

    who = cli(server, "WHOAMI", user=by_sub, password=tok, resp3=resp3)
    assert who.stdout.decode() == f"{t['tenant_id']}\nalice\nowner\n"


def test_redis_cli_resp3_maps_and_nil(server):
    t = server.create_tenant()
    tok = t["owner_token"]
    assert cli(server, "POST", "general", "hi", user=user_ref(t), password=tok).stdout == b"1\n"

    hello = cli(server, "HELLO", "3", user=user_ref(t), password=tok, resp3=True, raw=False)
    lines = hello.stdout.decode().splitlines()
    assert lines[0] == '1# "server" => "tenantd"'
    assert '3# "proto" => (integer) 3' in lines
    assert [ln.split(" => ")[0].split("# ")[1] for ln in lines] == [
        '"server"', '"version"', '"proto"', '"id"', '"mode"', '"role"', '"modules"'
    ]

    usage = cli(server, "USAGE", user=user_ref(t), password=tok, resp3=True, raw=False)
    lines = usage.stdout.decode().splitlines()
    assert lines[:3] + lines[4:] == [
        '1# "plan" => "free"',
        '2# "users" => (integer) 1',
        '3# "max_users" => (integer) 10',
        '5# "max_storage_bytes" => (integer) 5368709120',
        '6# "messages_today" => (integer) 1',
        '7# "max_messages_per_day" => (integer) 1000',
    ]
    assert re.fullmatch(r'4# "storage_bytes" => \(integer\) [1-9][0-9]*', lines[3]), lines

    # The operator has no tenant: WHOAMI's first element is nil in both protocols.
    for resp3 in (False, True):
        who = cli(server, "WHOAMI", user="admin", password=server.admin_token, resp3=resp3, raw=False)
        assert who.stdout == b'1) (nil)\n2) "admin"\n3) "operator"\n'


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_redis_cli_wrong_token(server, resp3):
    t = server.create_tenant()
    wrong = "0" * 64
    for user in (user_ref(t), user_ref(t, "nobody"), "alice@no-such-tenant"):
        password = wrong if user == user_ref(t) else t["owner_token"]
        out = cli(server, "POST", "general", "must not land", user=user, password=password, resp3=resp3, raw=False)
        # redis-cli prints the AUTH error and then runs the command unauthenticated.
        assert out.stderr.decode().strip() == f"AUTH failed: {WRONGPASS_TEXT}"
        assert out.stdout.decode().startswith("(error) NOAUTH ")
    assert server.history_all(t["tenant_id"], "general") == []


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_redis_cli_subscribe(server, resp3):
    t = server.create_tenant()
    other = server.create_tenant()
    cmd = ["redis-cli", "-h", server.host, "-p", str(server.port), "--no-auth-warning", "--raw"]
    cmd += ["--user", user_ref(t), "--pass", t["owner_token"], *(["-3"] if resp3 else []), "SUBSCRIBE", "general"]
    sub = LineReader(cmd)
    try:
        deadline = time.monotonic() + 15
        assert sub.next_lines(3, deadline) == ["subscribe", "general", "1"]
        with server.client(user_ref(other), other["owner_token"]) as o:
            assert o.execute_command("POST", "general", "other tenant") == 1  # must not reach the subscriber
        with server.client(user_ref(t), t["owner_token"]) as r:
            seqs = [r.execute_command("POST", "general", x) for x in (CHINESE, RUSSIAN)]
            ts = {m[0]: m[1] for m in r.execute_command("HISTORY", "general")}
        assert seqs == [1, 2]
        for seq, text in zip(seqs, (CHINESE, RUSSIAN)):
            kind, room, payload = sub.next_lines(3, deadline)
            assert (kind, room) == ("message", "general")
            assert json.loads(payload) == {"seq": seq, "ts": ts[seq], "user": "alice", "text": text}
    finally:
        sub.stop()


PIPE_N = 200


@pytest.fixture(scope="module")
def pipe_run(server):
    """One `redis-cli --pipe` run of PIPE_N RESP-encoded POSTs, shared by the tests below."""
    t = server.create_tenant()
    texts = [f"{i} {CHINESE if i % 2 else RUSSIAN}" for i in range(1, PIPE_N + 1)]
    payload = b"".join(resp("POST", "piped", x) for x in texts)
    out = cli(
        server, user=user_ref(t), password=t["owner_token"], raw=True, extra=("--pipe", "--pipe-timeout", "3"), stdin=payload
    )
    return t, texts, out


def test_redis_cli_pipe_posts_land(server, pipe_run):
    t, texts, out = pipe_run
    assert b"All data transferred" in out.stdout
    msgs = server.history_all(t["tenant_id"], "piped")
    assert [m[0] for m in msgs] == list(range(1, PIPE_N + 1))
    assert [m[3] for m in msgs] == texts
    assert {m[2] for m in msgs} == {"alice"}


def test_redis_cli_pipe_summary(pipe_run):
    _, _, out = pipe_run
    assert b"Last reply received from server." in out.stdout
    assert f"errors: 0, replies: {PIPE_N}".encode() in out.stdout
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- redis-benchmark


def test_redis_benchmark_post_path_form(server):
    # enterprise: no daily message limit (free allows 1,000 a day, less than n).
    t = server.create_tenant(plan="enterprise")
    tid, n = t["tenant_id"], 2000
    out = bench(server, "-a", server.admin_token, "-n", str(n), "-c", "10", "-P", "16", "-q", "POST", f"/tenant/{tid}/bench", "hi")
    text = out.stdout.decode().replace("\r", "\n")
    assert out.returncode == 0, (text, out.stderr)
    assert b"Error" not in out.stdout + out.stderr
    assert re.search(rf"^POST /tenant/{tid}/bench hi: [0-9.]+ requests per second", text, re.M), text

    msgs = server.history_all(tid, "bench")
    assert [m[0] for m in msgs] == list(range(1, n + 1))
    assert {(m[2], m[3]) for m in msgs} == {("admin", "hi")}
    with server.operator() as op:
        op.execute_command("USE", tid)
        assert op.execute_command("ROOMS") == [["bench", n, n]]


def test_redis_benchmark_ping(server):
    out = bench(server, "-n", "2000", "-c", "10", "-q", "-t", "ping")
    text = out.stdout.decode().replace("\r", "\n")
    assert out.returncode == 0, (text, out.stderr)
    assert re.search(r"^PING_INLINE: [0-9.]+ requests per second", text, re.M), text
    assert re.search(r"^PING_MBULK: [0-9.]+ requests per second", text, re.M), text


def test_redis_benchmark_as_tenant_user(server):
    t = server.create_tenant(plan="enterprise")
    n = 512
    out = bench(server, "--user", user_ref(t), "-a", t["owner_token"], "-n", str(n), "-c", "4", "-P", "8", "-q", "POST", "general", "hi")
    assert out.returncode == 0, (out.stdout, out.stderr)
    msgs = server.history_all(t["tenant_id"], "general")
    assert [m[0] for m in msgs] == list(range(1, n + 1))
    assert {m[2] for m in msgs} == {"alice"}


# ---------------------------------------------------------------- redis-py


@PROTOCOLS
def test_redis_py_auth_whoami_usage(server, clients, protocol):
    t = server.create_tenant()
    bob_token = server.add_user(t, "bob")
    alice = server.client(user_ref(t), t["owner_token"], protocol=protocol)
    bob = server.client(user_ref(t, "bob", by_id=True), bob_token, protocol=protocol)
    op = server.operator(protocol=protocol)
    clients += [alice, bob, op]

    assert alice.execute_command("WHOAMI") == [t["tenant_id"], "alice", "owner"]
    assert bob.execute_command("WHOAMI") == [t["tenant_id"], "bob", "member"]
    assert op.execute_command("WHOAMI") == [None, "admin", "operator"]
    assert alice.ping() is True

    usage = alice.execute_command("USAGE")
    keys = ["plan", "users", "max_users", "storage_bytes", "max_storage_bytes", "messages_today", "max_messages_per_day"]
    if protocol == 3:  # a map under RESP3
        assert isinstance(usage, dict) and list(usage) == keys
    else:  # flat field/value pairs under RESP2
        assert isinstance(usage, list) and usage[0::2] == keys
        usage = dict(zip(usage[0::2], usage[1::2]))
    assert (usage["plan"], usage["users"], usage["max_users"], usage["messages_today"]) == ("free", 2, 10, 0)


@PROTOCOLS
def test_redis_py_post_history(server, clients, protocol):
    t = server.create_tenant()
    r = server.client(user_ref(t), t["owner_token"], protocol=protocol)
    clients.append(r)

    before = int(time.time() * 1000)
    seqs = [r.execute_command("POST", "general", x) for x in (CHINESE, RUSSIAN, MIXED)]
    after = int(time.time() * 1000)
    assert seqs == [1, 2, 3] and all(type(s) is int for s in seqs)

    hist = r.execute_command("HISTORY", "general")
    assert [[m[0], m[2], m[3]] for m in hist] == [[1, "alice", CHINESE], [2, "alice", RUSSIAN], [3, "alice", MIXED]]
    ts = [m[1] for m in hist]
    assert all(type(x) is int for x in ts) and ts == sorted(ts)
    assert before - 60_000 <= ts[0] and ts[-1] <= after + 60_000  # milliseconds since the epoch

    assert r.execute_command("HISTORY", "general", "LIMIT", "2") == hist[1:]
    assert r.execute_command("HISTORY", "general", "AFTER", "1", "LIMIT", "1") == hist[1:2]
    assert r.execute_command("HISTORY", "general", "BEFORE", "3") == hist[:2]
    assert r.execute_command("HISTORY", "general", "LIMIT", "0") == []
    assert r.execute_command("HISTORY", "nosuchroom") == []
    assert r.execute_command("ROOMS") == [["general", 3, 3]]

    # Bytes in, bytes out: the stored text is the exact UTF-8 sent.
    rb = server.client(user_ref(t), t["owner_token"], protocol=protocol, decode_responses=False)
    clients.append(rb)
    assert rb.execute_command("HISTORY", "general", "LIMIT", "1")[0][3] == MIXED.encode()


@PROTOCOLS
def test_redis_py_pipeline(server, clients, protocol):
    t = server.create_tenant()
    r = server.client(user_ref(t), t["owner_token"], protocol=protocol)
    clients.append(r)
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.execute_command("POST", "pipelined", f"msg {i} {CHINESE}")
    pipe.execute_command("HISTORY", "pipelined", "AFTER", "0", "LIMIT", "1000")
    res = pipe.execute()
    assert res[:100] == list(range(1, 101))  # in request order, strictly increasing, contiguous
    assert [(m[0], m[3]) for m in res[100]] == [(i + 1, f"msg {i} {CHINESE}") for i in range(100)]


@PROTOCOLS
def test_redis_py_concurrent_pipelines(server, clients, protocol):
    """Two connections pipelining into one room: each sees increasing seqs, together 1..200."""
    t = server.create_tenant()
    conns = [server.client(user_ref(t), t["owner_token"], protocol=protocol) for _ in range(2)]
    clients += conns
    results: dict[int, list] = {}

    def work(k: int) -> None:
        pipe = conns[k].pipeline(transaction=False)
        for i in range(100):
            pipe.execute_command("POST", "shared", f"{k}:{i}")
        results[k] = pipe.execute()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
        assert not th.is_alive(), "pipeline did not finish in 30 s"
    for k in range(2):
        assert all(a < b for a, b in zip(results[k], results[k][1:])), results[k]
    assert sorted(results[0] + results[1]) == list(range(1, 201))
    msgs = server.history_all(t["tenant_id"], "shared")
    by_seq = {m[0]: m[3] for m in msgs}
    for k in range(2):
        assert [by_seq[s] for s in results[k]] == [f"{k}:{i}" for i in range(100)]


@PROTOCOLS
def test_redis_py_pubsub(server, clients, protocol):
    a = server.create_tenant()
    b = server.create_tenant()
    bob_token = server.add_user(a, "bob")
    sub = server.client(user_ref(a), a["owner_token"], protocol=protocol)
    poster = server.client(user_ref(a, "bob"), bob_token, protocol=protocol)
    other_tenant = server.client(user_ref(b), b["owner_token"], protocol=protocol)
    p = sub.pubsub()
    clients += [sub, poster, other_tenant, p]
    deadline = time.monotonic() + 15

    p.subscribe("general")
    assert wait_pubsub(p, "subscribe", deadline) == {"type": "subscribe", "pattern": None, "channel": "general", "data": 1}

    # Neither another tenant's "general" nor another room of this tenant may reach the subscriber:
    # they are posted first, so a leak would arrive before the expected messages.
    assert other_tenant.execute_command("POST", "general", "secret of tenant B") == 1
    assert poster.execute_command("POST", "random", "not subscribed") == 1
    texts = [CHINESE, RUSSIAN, MIXED]
    seqs = [poster.execute_command("POST", "general", x) for x in texts]
    assert seqs == [1, 2, 3]
    ts = {m[0]: m[1] for m in poster.execute_command("HISTORY", "general")}

    for seq, text in zip(seqs, texts):
        msg = wait_pubsub(p, "message", deadline)
        assert msg["channel"] == "general"
        payload = json.loads(msg["data"])
        assert payload == {"seq": seq, "ts": ts[seq], "user": "bob", "text": text}

    p.unsubscribe("general")
    assert wait_pubsub(p, "unsubscribe", deadline)["data"] == 0


@PROTOCOLS
def test_redis_py_errors(server, clients, protocol):
    a = server.create_tenant()
    b = server.create_tenant()
    member_token = server.add_user(a, "carol")

    # WRONGPASS, the same message for a wrong token, an unknown user and an unknown tenant.
    for user, pw in (
        (user_ref(a), "f" * 64),
        (user_ref(a, "nobody"), a["owner_token"]),
        ("alice@no-such-tenant", a["owner_token"]),
        ("admin", "f" * 64),
    ):
        bad = server.client(user, pw, protocol=protocol)
        clients.append(bad)
        with pytest.raises(AuthenticationError) as e:
            bad.ping()
        assert str(e.value) == WRONGPASS_MSG

    anon = server.client(protocol=protocol)
    clients.append(anon)
    with pytest.raises(AuthenticationError):  # NOAUTH
        anon.execute_command("POST", "general", "x")
    assert anon.ping() is True  # PING needs no authentication

    r = server.client(user_ref(a), a["owner_token"], protocol=protocol, single_connection_client=True)
    member = server.client(user_ref(a, "carol"), member_token, protocol=protocol)
    clients += [r, member]
    conn_id = r.execute_command("CLIENT", "ID")
    assert r.execute_command("POST", "general", "first") == 1

    for room in (f"/tenant/{b['tenant_id']}/general", "/tenant/0badf00d/general"):
        with pytest.raises(NoPermissionError):
            r.execute_command("HISTORY", room)
    with pytest.raises(NoPermissionError):
        r.execute_command("USE", b["subdomain"])
    with pytest.raises(NoPermissionError):
        r.execute_command("TENANT", "LIST")
    with pytest.raises(NoPermissionError):
        member.execute_command("USER", "ADD", "mallory")
    with pytest.raises(ResponseError, match=r"^unknown command"):
        r.execute_command("NOSUCHCOMMAND", "x")
    with pytest.raises(ResponseError, match=r"^INVALID "):
        r.execute_command("POST", "bad room!", "x")
    with pytest.raises(ResponseError, match=r"^TOOBIG "):
        r.execute_command("POST", "general", "x" * 65537)
    with pytest.raises(ResponseError):
        r.execute_command("HISTORY", "general", "AFTER", "1", "BEFORE", "2")

    # Every one of those errors left the connection usable (same connection, not a reconnect).
    assert r.execute_command("CLIENT", "ID") == conn_id
    assert r.execute_command("POST", "general", "second") == 2
    assert [m[3] for m in r.execute_command("HISTORY", "general")] == ["first", "second"]


# ---------------------------------------------------------------- cross-tenant


def test_cross_tenant_isolation(server, clients):
    """Tenant A's user (same name as B's owner) can never read or write B's rooms."""
    a = server.create_tenant(owner="alice")
    b = server.create_tenant(owner="alice")
    a_tok, b_tok = a["owner_token"], b["owner_token"]
    b_path = f"/tenant/{b['tenant_id']}/general"
    secret = "B-only: пароль от сервера 密码"
    with server.client(user_ref(b), b_tok, protocol=2) as rb:
        assert rb.execute_command("POST", "general", secret) == 1
        assert rb.execute_command("POST", "private", secret) == 1
    with server.client(user_ref(a), a_tok, protocol=2) as ra:
        assert ra.execute_command("POST", "general", "A's own") == 1
    b_before = server.history_all(b["tenant_id"], "general")

    # redis-py, both protocols
    for protocol in (2, 3):
        r = server.client(user_ref(a), a_tok, protocol=protocol, single_connection_client=True)
        clients.append(r)
        assert [m[3] for m in r.execute_command("HISTORY", "general")] == ["A's own"]
        assert r.execute_command("ROOMS") == [["general", 1, 1]]
        assert r.execute_command("HISTORY", "private") == []
        for cmd in (("HISTORY", b_path), ("POST", b_path, "intrusion"), ("USE", b["subdomain"]), ("USE", b["tenant_id"])):
            with pytest.raises(NoPermissionError):
                r.execute_command(*cmd)
        # AUTH into B with A's token (same user name) fails and leaves the connection as A.
        for ref in (b["subdomain"], b["tenant_id"]):
            with pytest.raises(AuthenticationError):
                r.execute_command("AUTH", f"alice@{ref}", a_tok)
        assert r.execute_command("WHOAMI") == [a["tenant_id"], "alice", "owner"]
        p = r.pubsub()
        clients.append(p)
        p.subscribe(b_path)
        with pytest.raises(NoPermissionError):
            wait_pubsub(p, "subscribe", time.monotonic() + 10)

        cross = server.client(f"alice@{b['subdomain']}", a_tok, protocol=protocol)
        clients.append(cross)
        with pytest.raises(AuthenticationError):
            cross.execute_command("HISTORY", "general")

    # redis-cli, both protocols
    for resp3 in (False, True):
        out = cli(server, "HISTORY", b_path, user=user_ref(a), password=a_tok, resp3=resp3)
        assert out.stdout.decode().startswith("NOPERM "), out
        out = cli(server, "SUBSCRIBE", b_path, user=user_ref(a), password=a_tok, resp3=resp3)
        assert out.stdout.decode().startswith("NOPERM "), out
        out = cli(server, "HISTORY", "general", user=f"alice@{b['subdomain']}", password=a_tok, resp3=resp3)
        assert WRONGPASS_TEXT in out.stderr.decode() and out.stdout.decode().startswith("NOAUTH "), out
        for o in (out.stdout, out.stderr):
            assert secret.encode() not in o

    # redis-benchmark as A's user, aimed at B's room
    for cmd in (("HISTORY", b_path), ("POST", b_path, "intrusion")):
        out = bench(server, "--user", user_ref(a), "-a", a_tok, "-n", "10", "-c", "1", "-q", *cmd)
        assert out.returncode != 0
        assert b"Error from server: NOPERM" in out.stdout + out.stderr
        assert secret.encode() not in out.stdout + out.stderr

    assert server.history_all(b["tenant_id"], "general") == b_before
    assert [m[3] for m in b_before] == [secret]


def _share_holds_under_two_floods(extra_args):
    """Runs a tenantd of its own (one event loop, `extra_args`), floods it from two tenants at
    once (three connections each, pipelines of 400 POSTs) and returns INFO's lane_share_holds,
    after checking every POST was answered, in order."""
    import tempfile
    import threading

    import redis

    from conftest import TENANTD_BIN, _clean_env

    token = "s" * 40
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [str(TENANTD_BIN), "--port", "0", "--metrics-port", "0", "--data-dir", data, "--threads", "1",
             *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_clean_env(token),
        )
        try:
            port = int(re.search(r"port=(\d+)", proc.stdout.readline().decode()).group(1))
            operator = redis.Redis(port=port, username="admin", password=token, decode_responses=True)
            logins = []
            for name in ("floods", "posts"):
                flat = operator.execute_command("TENANT", "CREATE", name, name, "OWNER", "o", "PLAN", "enterprise")
                fields = flat if isinstance(flat, dict) else dict(zip(flat[0::2], flat[1::2]))
                logins.append((f"o@{name}", fields["owner_token"]))
            failures = []

            def flood(user, password, room):
                try:
                    client = redis.Redis(port=port, username=user, password=password, single_connection_client=True,
                                         socket_timeout=SUBPROCESS_TIMEOUT)
                    for round_ in range(6):
                        pipe = client.pipeline(transaction=False)
                        for index in range(400):
                            pipe.execute_command("POST", room, f"m{index}")
                        replies = pipe.execute()
                        first = round_ * 400 + 1
                        if replies != list(range(first, first + 400)):
                            failures.append((room, replies[:3]))
                    client.close()
                except Exception as error:  # reported by the test below
                    failures.append((room, repr(error)))

            threads = [threading.Thread(target=flood, args=(*logins[t], f"r{c}")) for t in range(2) for c in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=SUBPROCESS_TIMEOUT)
            assert not [thread for thread in threads if thread.is_alive()], "a flood's connection never finished"
            assert not failures, failures
            holds = operator.info("stats")["lane_share_holds"]
            operator.close()
        finally:
            proc.terminate()
            code = proc.wait(timeout=SUBPROCESS_TIMEOUT)
        assert code == 0, code
        return holds


def test_turn_budget_is_range_checked_and_its_holds_are_in_info():
    """`--turn-budget` outside 0-1000000 stops tenantd with a clear message before it listens.
    The turn shares are on by default: two tenants flooding one event loop at once are held to
    their shares (INFO's lane_share_holds counts it), every POST still answered in order; with
    `--turn-budget 0` nobody is held."""
    import tempfile

    from conftest import TENANTD_BIN, _clean_env

    for bad in ("-1", "1000001", "x"):
        with tempfile.TemporaryDirectory() as data:
            refused = subprocess.run(
                [str(TENANTD_BIN), "--port", "0", "--metrics-port", "0", "--data-dir", data, "--turn-budget", bad],
                capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=_clean_env("t" * 40),
            )
            assert refused.returncode != 0, refused.stdout
            assert "ready" not in refused.stdout
            assert "turn-budget" in refused.stderr, refused.stderr
    assert _share_holds_under_two_floods([]) > 0
    assert _share_holds_under_two_floods(["--turn-budget", "0"]) == 0


def test_connections_move_to_their_tenants_loop_unseen_by_redis_py():
    """With two event loops, redis-py connections (HELLO 3 AUTH ... SETNAME) accepted on the
    tenant's other loop move to the tenant's: INFO counts the moves, and to the clients nothing
    changed (id, name, RESP3, contiguous seqs); the connection counts are not inflated by moves.
    `--move-connections` takes only yes or no."""
    import tempfile

    import redis

    from conftest import TENANTD_BIN, _clean_env

    token = "m" * 40
    with tempfile.TemporaryDirectory() as data:
        refused = subprocess.run(
            [str(TENANTD_BIN), "--port", "0", "--metrics-port", "0", "--data-dir", data, "--move-connections", "maybe"],
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=_clean_env(token),
        )
        assert refused.returncode != 0 and "ready" not in refused.stdout
        assert "move-connections" in refused.stderr, refused.stderr
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [str(TENANTD_BIN), "--port", "0", "--metrics-port", "0", "--data-dir", data, "--threads", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_clean_env(token),
        )
        try:
            line = proc.stdout.readline().decode()
            port = int(re.search(r"port=(\d+)", line).group(1))
            operator = redis.Redis(port=port, username="admin", password=token, decode_responses=True)
            flat = operator.execute_command("TENANT", "CREATE", "Movers", "movers", "OWNER", "alice")
            tenant = flat if isinstance(flat, dict) else dict(zip(flat[0::2], flat[1::2]))
            clients = [
                redis.Redis(port=port, username="alice@movers", password=tenant["owner_token"], protocol=3,
                            client_name=f"mover-{i}", decode_responses=True, single_connection_client=True)
                for i in range(8)
            ]
            ids = [c.client_id() for c in clients]
            seqs = [c.execute_command("POST", "general", f"from {i}") for i, c in enumerate(clients)]
            assert sorted(seqs) == list(range(1, 9)), seqs
            for i, c in enumerate(clients):
                assert c.client_getname() == f"mover-{i}"
                assert c.client_id() == ids[i]
                assert c.execute_command("HELLO")["proto"] == 3
            stats = operator.info("stats")
            assert stats["connection_moves"] >= 1, stats
            assert stats["total_connections_received"] == 1 + len(clients), stats
            assert operator.info("clients")["connected_clients"] == 1 + len(clients)
            for c in clients:
                c.close()
            operator.close()
        finally:
            proc.terminate()
            assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == 0
