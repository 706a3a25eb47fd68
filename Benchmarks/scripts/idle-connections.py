#!/usr/bin/env python3
"""Holds N idle connections to a fresh tenantd and reports its memory per idle connection.

    Benchmarks/scripts/idle-connections.py [--connections 10000] [--binary .build/release/tenantd]

Each connection authenticates as a tenant's user (what a chat front end holds open) and sends one
PING; the server's resident memory (VmRSS) is read before and after, and once more after they
close. Prints one JSON document. Loopback only; bounded in count and time.
"""
import argparse, json, os, resource, secrets, shutil, socket, subprocess, sys, tempfile, time


def rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def call(sock, *words):
    payload = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in (x.encode() for x in words))
    sock.sendall(payload)
    data = b""
    while not data.endswith(b"\r\n") or (data.startswith(b"*") and data.count(b"\r\n") < 2):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
        if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
            break
        if data.startswith(b"*") and len(data) > 4096:
            break
    return data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--binary", default=".build/release/tenantd")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1024), hard))
    data = tempfile.mkdtemp(prefix="tenantd-idle-")
    token = secrets.token_hex(32)
    server = subprocess.Popen(
        [args.binary, "--port", "0", "--data-dir", data, "--metrics-port", "0",
         "--maxclients", str(args.connections + 10)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "TENANT_ADMIN_TOKEN": token})
    try:
        line = server.stdout.readline().decode()
        port = int(line.split("port=")[1].split()[0])
        admin = socket.create_connection(("127.0.0.1", port), timeout=20)
        call(admin, "AUTH", "admin", token)
        reply = call(admin, "TENANT", "CREATE", "Idle", "idle", "PLAN", "enterprise", "OWNER", "alice")
        fields = reply.split(b"\r\n")
        owner = fields[fields.index(b"owner_token") + 2].decode()
        time.sleep(0.5)
        before = rss(server.pid)
        started = time.time()
        held = []
        for index in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            if call(sock, "AUTH", "alice@idle", owner) != b"+OK\r\n":
                raise RuntimeError(f"AUTH failed on connection {index}")
            held.append(sock)
        for sock in held:
            if call(sock, "PING") != b"+PONG\r\n":
                raise RuntimeError("PING failed")
        opened = time.time() - started
        time.sleep(1)
        during = rss(server.pid)
        for sock in held:
            sock.close()
        time.sleep(2)
        after = rss(server.pid)
        print(json.dumps({
            "connections": args.connections,
            "rss_before_bytes": before,
            "rss_with_connections_bytes": during,
            "rss_after_close_bytes": after,
            "bytes_per_idle_connection": round((during - before) / args.connections),
            "open_and_auth_seconds": round(opened, 2),
        }, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
