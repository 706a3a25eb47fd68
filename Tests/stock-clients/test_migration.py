"""TENANT MIGRATE between two real tenantd processes (issue 11, point 3), with redis-py.

Every test starts its own servers (`nodes.Node`). The crash trials kill the source or the
destination with SIGKILL at each step of a migration (`TENANTD_FAILPOINT`), restart it, and check
that the tenant is served by exactly one of the two with every acknowledged message, and that a
migration started again (or the source's own retries) finishes the move.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from nodes import Node
from tlsnames import read_until_closed

MESSAGES = 120


@pytest.fixture
def root():
    path = Path(tempfile.mkdtemp(prefix="tenantd-migrate-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pair(root):
    a = Node(root, "a").start()
    b = Node(root, "b").start()
    yield a, b
    for node in (a, b):
        node.stop()


def migrate(source: Node, tenant_id: str, dest: Node) -> dict:
    with source.operator() as op:
        flat = op.execute_command("TENANT", "MIGRATE", tenant_id, "127.0.0.1", str(dest.port), "AUTH", dest.token)
    return dict(zip(flat[0::2], flat[1::2]))


def populate(node: Node, subdomain: str) -> tuple[dict, str, list]:
    """A tenant with a second user and messages in two rooms (Chinese and Russian text)."""
    tenant = node.create_tenant(subdomain)
    with node.client(f"owner@{subdomain}", tenant["owner_token"]) as owner:
        bob = owner.execute_command("USER", "ADD", "bob", "member")
        acked = []
        for i in range(MESSAGES):
            room = "general" if i % 3 else "random"
            seq = owner.execute_command("POST", room, f"message {i} 你好 привет")
            acked.append((room, int(seq), f"message {i} 你好 привет"))
    return tenant, bob, acked


def assert_all_there(node: Node, tenant_id: str, acked: list) -> None:
    for room in {r for r, _, _ in acked}:
        history = node.history(tenant_id, room)
        seqs = [int(m[0]) for m in history]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), seqs
        texts = {int(m[0]): m[3] for m in history}
        for r, seq, text in acked:
            if r == room:
                assert texts.get(seq) == text, (room, seq)


def test_a_migrated_tenant_is_served_by_the_destination_with_everything(pair):
    a, b = pair
    tenant, bob, acked = populate(a, "acme")
    other, _, other_acked = populate(a, "globex")
    tid = tenant["tenant_id"]
    report = migrate(a, tid, b)
    assert report["tenant_id"] == tid and report["target"] == f"127.0.0.1:{b.port}"
    assert int(report["committed"]) == 1 and int(report["files"]) >= 1 and int(report["bytes_sent"]) > 0
    assert int(report["pause_ms"]) >= 0
    # The destination: same users, tokens, rooms, seqs and texts.
    assert_all_there(b, tid, acked)
    with b.client("bob@acme", bob) as c:
        assert c.execute_command("WHOAMI") == [tid, "bob", "member"]
        assert int(c.execute_command("POST", "general", "after the move")) == max(s for r, s, _ in acked if r == "general") + 1
    with b.client("owner@acme", tenant["owner_token"]) as c:
        assert sorted(u[0] for u in c.execute_command("USER", "LIST")) == ["bob", "owner"]
    # The source: MIGRATED for the tenant's AUTH and commands, never MOVED.
    with pytest.raises(redis.ResponseError, match=rf"^MIGRATED {tid} 127\.0\.0\.1:{b.port}$"):
        a.client("bob@acme", bob).execute_command("PING")
    with a.operator() as op:
        for command in (("TENANT", "GET", tid), ("USE", tid), ("USE", "acme")):
            with pytest.raises(redis.ResponseError) as error:
                op.execute_command(*command)
            assert str(error.value) == f"MIGRATED {tid} 127.0.0.1:{b.port}"
    raw = a.client("bob@acme", bob, protocol=2, decode_responses=False)
    with pytest.raises(redis.ResponseError):
        raw.ping()
    # The other tenant did not notice.
    assert_all_there(a, other["tenant_id"], other_acked)
    # Its subdomain stays its own on the source: the router sends it to the destination.
    with a.operator() as op, pytest.raises(redis.ResponseError, match="^EXISTS subdomain 'acme' is already taken"):
        op.execute_command("TENANT", "CREATE", "Impostor", "acme")
    # The source keeps its copy under .migrated/; a restart still answers MIGRATED.
    kept = list((a.data / ".migrated").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith(f"tenant_{tid}")
    assert not (a.data / f"tenant_{tid}").exists()
    a.stop()
    a.start()
    assert not a.serves(tid)
    with a.operator() as op, pytest.raises(redis.ResponseError, match="127.0.0.1"):
        op.execute_command("TENANT", "GET", tid)
    assert b.serves(tid)
    b.stop()
    b.start()
    assert_all_there(b, tid, acked)
    # And back again: the source serves it once more, with what was written on the destination.
    with b.client("bob@acme", bob) as c:
        seq = int(c.execute_command("POST", "general", "on b"))
    back = migrate(b, tid, a)
    assert int(back["committed"]) == 1
    assert a.serves(tid) and not b.serves(tid)
    assert_all_there(a, tid, acked + [("general", seq, "on b")])
    with a.client("bob@acme", bob) as c:
        assert c.execute_command("WHOAMI")[0] == tid


def test_the_error_code_is_migrated(pair):
    """The wire form: `-MIGRATED <id> <host>:<port>` (redis-py strips the code, so read raw)."""
    a, b = pair
    tenant, bob, _ = populate(a, "initech")
    migrate(a, tenant["tenant_id"], b)
    import socket
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:
        s.sendall(f"AUTH bob@initech {bob}\r\n".encode())
        reply = s.recv(4096).decode()
    assert reply == f"-MIGRATED {tenant['tenant_id']} 127.0.0.1:{b.port}\r\n"


def test_connections_in_the_tenant_are_told_and_closed(pair):
    a, b = pair
    tenant, bob, _ = populate(a, "umbrella")
    import socket
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.sendall(f"AUTH bob@umbrella {bob}\r\n".encode())
    assert s.recv(100) == b"+OK\r\n"
    migrate(a, tenant["tenant_id"], b)
    # Idle, it is told without asking, then closed.
    data = read_until_closed(s)
    s.close()
    assert data == f"-MIGRATED {tenant['tenant_id']} 127.0.0.1:{b.port}\r\n".encode()



def test_the_migrating_operator_in_the_tenant_gets_its_report_first(pair):
    """An operator working in the tenant (USE) who migrates it gets the report as the reply to
    TENANT MIGRATE, and MIGRATED only after it: an error told from outside never takes the place
    of a reply."""
    a, b = pair
    tenant, _, _ = populate(a, "cyberdyne2")
    tid = tenant["tenant_id"]
    import socket
    with socket.create_connection(("127.0.0.1", a.port), timeout=30) as s:
        s.sendall(f"AUTH admin {a.token}\r\nUSE {tid}\r\n".encode())
        got = b""
        while got.count(b"+OK\r\n") < 2:
            got += s.recv(100)
        s.sendall(f"TENANT MIGRATE {tid} 127.0.0.1 {b.port} AUTH {b.token}\r\n".encode())
        data = read_until_closed(s)
    assert data.startswith(b"*16\r\n$9\r\ntenant_id\r\n"), data
    assert data.endswith(f"-MIGRATED {tid} 127.0.0.1:{b.port}\r\n".encode()), data
    assert b.serves(tid)


def test_posting_without_pause_loses_nothing_acknowledged(pair):
    a, b = pair
    tenant, _, _ = populate(a, "hooli")
    tid = tenant["tenant_id"]
    acked: list[tuple[int, float]] = []
    stop = threading.Event()
    errors: list[str] = []

    def poster():
        node = a
        client = node.client("owner@hooli", tenant["owner_token"])
        i = 0
        while not stop.is_set():
            try:
                seq = int(client.execute_command("POST", "live", f"live {i}"))
                acked.append((seq, time.monotonic()))
                i += 1
            except (redis.ResponseError, redis.ConnectionError) as e:
                errors.append(str(e))
                node = b
                client = node.client("owner@hooli", tenant["owner_token"])
                time.sleep(0.01)

    thread = threading.Thread(target=poster, daemon=True)
    thread.start()
    wait_for(lambda: len(acked) >= 20, what="acknowledgements before the move")
    report = migrate(a, tid, b)
    moved_at = len(acked)
    wait_for(lambda: len(acked) >= moved_at + 20, what="acknowledgements from the destination")
    stop.set()
    thread.join(timeout=30)
    history = b.history(tid, "live")
    seqs = [int(m[0]) for m in history]
    assert seqs == list(range(1, len(seqs) + 1))
    assert {s for s, _ in acked} <= set(seqs)
    gaps = [t2 - t1 for (_, t1), (_, t2) in zip(acked, acked[1:])]
    print(f"\nlongest gap between acknowledgements: {max(gaps) * 1000:.0f} ms; pause {report['pause_ms']} ms")


def test_failures_before_the_hand_over_leave_the_tenant_on_the_source(root):
    a = Node(root, "a").start()
    b = Node(root, "b").start()
    try:
        tenant, bob, acked = populate(a, "stark")
        tid = tenant["tenant_id"]
        with a.operator() as op:
            # Nobody listening.
            with pytest.raises(redis.ResponseError, match="cannot reach"):
                op.execute_command("TENANT", "MIGRATE", tid, "127.0.0.1", "1", "AUTH", b.token)
            # The wrong token for the destination.
            with pytest.raises(redis.ResponseError, match="WRONGPASS"):
                op.execute_command("TENANT", "MIGRATE", tid, "127.0.0.1", str(b.port), "AUTH", "x" * 40)
            for bad in (("TENANT", "MIGRATE", tid, "127.0.0.1", "0"), ("TENANT", "MIGRATE", tid, "127.0.0.1", "99999"),
                        ("TENANT", "MIGRATE", tid, "127.0.0.1", "x"), ("TENANT", "MIGRATE", "nobody", "127.0.0.1", "1")):
                with pytest.raises(redis.ResponseError):
                    op.execute_command(*bad)
        # The destination serves the subdomain already: refused at PREPARE, nothing moved.
        b.create_tenant("stark")
        with pytest.raises(redis.ResponseError, match="EXISTS"):
            migrate(a, tid, b)
        assert a.serves(tid)
        assert_all_there(a, tid, acked)
        with a.client("bob@stark", bob) as c:
            assert c.execute_command("WHOAMI")[0] == tid
        # The destination's staging waits, not served.
        assert not b.serves(tid)
    finally:
        a.stop()
        b.stop()


def test_receive_refuses_hostile_input(pair):
    a, b = pair
    tenant = b.create_tenant("wayne")
    mid = secrets.token_hex(8)
    with b.client(f"owner@wayne", tenant["owner_token"]) as user:
        with pytest.raises(redis.ResponseError, match="NOPERM|operator"):
            user.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "BEGIN")
    with b.operator() as op:
        # A tenant served here already.
        with pytest.raises(redis.ResponseError, match="already"):
            op.execute_command("TENANT", "RECEIVE", tenant["tenant_id"], mid, "BEGIN")
        for bad_id in ("../etc", "a/b", "UPPER", ""):
            with pytest.raises(redis.ResponseError):
                op.execute_command("TENANT", "RECEIVE", bad_id, mid, "BEGIN")
        with pytest.raises(redis.ResponseError, match="hex"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", "not-hex!", "BEGIN")
        # A chunk before BEGIN.
        with pytest.raises(redis.ResponseError, match="BEGIN first"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", "wal/x", "0", "0", "")
        assert op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "BEGIN") == []
        data = b"\x00\xffbinary"
        chunk = base64.b64encode(data).decode()
        for path in ("../../etc/passwd", "/abs", "wal/../../x", "a//b", "RECEIVING", "MIGRATED_TO", "x.tmp",
                     "a/b/c/d/e", "wal/\u00e9"):
            with pytest.raises(redis.ResponseError, match="path"):
                op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", path, "0", str(crc32c(data)), chunk)
        with pytest.raises(redis.ResponseError, match="checksum"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", "wal/x", "0", str(crc32c(data) ^ 1), chunk)
        with pytest.raises(redis.ResponseError, match="base64"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", "wal/x", "0", "0", "***")
        for offset in ("-1", "x", str(2**62), "99999999999999999999999"):
            with pytest.raises(redis.ResponseError):
                op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", "wal/x", offset, str(crc32c(data)), chunk)
        assert op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", "wal/x", "0", str(crc32c(data)), chunk) == "OK"
        # No holes: an offset past the end is refused.
        with pytest.raises(redis.ResponseError, match="past the end"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "CHUNK", "wal/x", "100", str(crc32c(data)), chunk)
        assert op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "BEGIN") == [["wal/x", len(data), crc32c(data)]]
        # A manifest that does not match, then a copy that is no tenant: refused, nothing served.
        with pytest.raises(redis.ResponseError, match="manifest"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "PREPARE", "1", "wal/x", "3", str(crc32c(data)))
        with pytest.raises(redis.ResponseError):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "PREPARE", "2", "wal/x")
        with pytest.raises(redis.ResponseError, match="recover|tenant"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "PREPARE", "1", "wal/x", str(len(data)),
                               str(crc32c(data)))
        with pytest.raises(redis.ResponseError, match="not prepared"):
            op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "COMMIT")
        assert op.execute_command("TENANT", "RECEIVE", "abcd1234", mid, "ABORT") == "OK"
        assert not (b.data / ".incoming-abcd1234").exists()
        # Nothing escaped the staging directory, and the server serves on.
        assert not (b.root / "x").exists() and not (b.data / "x").exists()
        assert op.execute_command("PING") in (True, "PONG")
    assert b.serves(tenant["tenant_id"])


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


# Where each step leaves the tenant when the process that reaches it is killed there.
SOURCE_STEPS = [
    ("migrate-after-begin", "source"),
    ("migrate-after-precopy", "source"),
    ("migrate-after-pause", "source"),
    ("migrate-after-final-sync", "source"),
    ("migrate-after-prepare", "source"),
    ("migrate-after-decision", "destination"),
    ("migrate-after-commit", "destination"),
]
DESTINATION_STEPS = [
    ("receive-after-begin", "source"),
    ("receive-after-chunk", "source"),
    ("receive-after-prepare", "source"),
    ("receive-after-commit-rename", "destination"),
    ("receive-after-commit", "destination"),
]


def wait_for(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("step,owner", SOURCE_STEPS + DESTINATION_STEPS, ids=[s for s, _ in SOURCE_STEPS + DESTINATION_STEPS])
def test_kill_9_at_every_step(root, step, owner):
    kill_source = step.startswith("migrate-")
    a = Node(root, "a").start(failpoint=step if kill_source else None)
    b = Node(root, "b").start(failpoint=None if kill_source else step)
    try:
        tenant, bob, acked = populate(a, "cyberdyne")
        tid = tenant["tenant_id"]
        victim = a if kill_source else b
        try:
            migrate(a, tid, b)
        except (redis.ResponseError, redis.ConnectionError):
            pass
        # The armed process died at its step; it comes back without the failpoint.
        assert victim.wait_dead() != 0, f"{victim.name} was not killed at {step}"
        victim.start()
        if owner == "source":
            # Never handed over: the source serves it, the destination does not.
            assert a.serves(tid) and not b.serves(tid)
            assert_all_there(a, tid, acked)
            # Started again, the migration finishes.
            report = migrate(a, tid, b)
            assert int(report["committed"]) == 1
        else:
            # Decided: the source answers MIGRATED; the destination serves it once the source's
            # retries reach it.
            wait_for(lambda: b.serves(tid), what="the destination to serve the tenant")
        assert not a.serves(tid)
        assert_all_there(b, tid, acked)
        with b.client("bob@cyberdyne", bob) as c:
            assert c.execute_command("WHOAMI")[0] == tid
        with pytest.raises(redis.ResponseError, match=f"^MIGRATED {tid} 127.0.0.1:{b.port}$"):
            a.client("bob@cyberdyne", bob).execute_command("PING")
        # The source's copy ends in .migrated/ once the destination confirmed.
        wait_for(lambda: (a.data / ".migrated").exists() and any((a.data / ".migrated").iterdir()),
                 what="the source's copy in .migrated/")
    finally:
        for node in (a, b):
            if node.alive():
                node.stop()


def test_a_tenant_opened_during_the_copy_is_handed_over_with_everything(pair):
    """The tenant is closed when the migration starts (the source restarted); clients log in and
    post while its directory is copied, which opens it again on the source. Everything they were
    acknowledged must reach the destination, and only the destination may serve it."""
    a, b = pair
    tenant = a.create_tenant("soylent", plan="enterprise")
    tid = tenant["tenant_id"]
    with a.client("owner@soylent", tenant["owner_token"]) as owner:
        pipe = owner.pipeline(transaction=False)
        for i in range(20000):
            pipe.execute_command("POST", "bulk", f"{i} " + secrets.token_hex(100))
            if i % 5000 == 4999:
                pipe.execute()
    a.stop()
    a.start()  # the tenant is known, not open
    acked: list[int] = []
    errors: list[str] = []
    started = threading.Event()
    deadline = time.monotonic() + 60

    def poster():
        started.wait()
        while time.monotonic() < deadline:
            try:
                with a.client("owner@soylent", tenant["owner_token"]) as c:
                    while True:
                        acked.append(int(c.execute_command("POST", "live", "during the copy")))
            except (redis.ResponseError, redis.ConnectionError) as error:
                errors.append(str(error))
                if "MIGRATED" in str(error):
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=poster, daemon=True)
    thread.start()
    started.set()
    report = migrate(a, tid, b)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert int(report["committed"]) == 1 and int(report["rounds"]) >= 2
    # The client reached the tenant during the migration (it ends told MIGRATED); whatever it
    # was acknowledged (often nothing: its login opens the tenant, and the pause follows that
    # opening) is on the destination below.
    assert any(e.startswith("MIGRATED ") for e in errors), errors
    seqs = [int(m[0]) for m in b.history(tid, "live")]
    assert seqs == list(range(1, len(seqs) + 1)) and set(acked) <= set(seqs)
    assert len(b.history(tid, "bulk")) == 20000
    assert b.serves(tid) and not a.serves(tid)
    # Restarted, the source still does not serve it.
    a.stop()
    a.start()
    assert not a.serves(tid)


def test_a_directory_handed_over_is_never_attached_or_served_by_mistake(root):
    a = Node(root, "a").start(failpoint="migrate-after-decision")
    b = Node(root, "b").start()
    try:
        tenant, bob, acked = populate(a, "tyrell")
        tid = tenant["tenant_id"]
        with pytest.raises((redis.ResponseError, redis.ConnectionError)):
            migrate(a, tid, b)
        assert a.wait_dead() != 0
        # Decided, the destination away: the source keeps its copy in place, marked, not served.
        b.stop()
        a.start()
        assert (a.data / f"tenant_{tid}" / "MIGRATED_TO").exists()
        with a.operator() as op:
            with pytest.raises(redis.ResponseError, match=rf"^MIGRATED {tid} "):
                op.execute_command("TENANT", "GET", tid)
            with pytest.raises(redis.ResponseError, match="^INVALID .*handed to .*MIGRATED_TO"):
                op.execute_command("TENANT", "ATTACH", tid)
        # The destination back, the source's retries hand the tenant over.
        b.start()
        wait_for(lambda: b.serves(tid), what="the destination to serve the tenant")
        assert_all_there(b, tid, acked)
        assert not a.serves(tid)
        # A marker that cannot be read fails closed: the directory is not served.
        other, _, _ = populate(a, "wallace")
        oid = other["tenant_id"]
        a.stop()
        (a.data / f"tenant_{oid}" / "MIGRATED_TO").write_bytes(b"\xff\x00garbage")
        a.start()
        assert not a.serves(oid)
        assert "migration marker cannot be read" in a.tail(60)
    finally:
        for node in (a, b):
            if node.alive():
                node.stop()
