#!/usr/bin/env python3
"""A quiet tenant's latency under a neighbour's flood, and what turn shares cost the flood
(issue 21, point 4), in rounds.

The server runs on CPU 0 alone (taskset); every client runs on CPU 1. For each flood size
(connections x requests in flight, tenant-bench --mix post on one tenant) and each --turn-budget
(0 = shares off), a fresh release tenantd:

1. the flood alone for --seconds: its POST/s with no other tenant active (what the shares cost
   the flood at one tenant, where they must cost nothing);
2. the quiet client alone for --seconds: one redis-py POST at a time on a tenant of its own, p99;
3. the flood again, and after 1.5 s the quiet client for --seconds under it, p99.

The quiet client runs at real-time priority (SCHED_FIFO, --quiet-priority fifo, the default)
so that what is measured is the server's wait, not the quiet client's own wait for CPU 1,
which it shares with the flood's client threads: at normal priority that wait alone makes the
p99 under the flood 17-25x the p99 alone for any server (Redis included; docs/benchmarks.md).
Where real-time priority is refused (no CAP_SYS_NICE), the run says so and goes on at normal
priority.

Prints one JSON line per run and the medians per flood and budget; writes the runs to --json.

    Benchmarks/scripts/turn-shares.py --tenantd .build/release/tenantd [--rounds 3] \\
        [--budgets 0,64] [--floods 20x16,200x16] [--seconds 3] [--json FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", ".build", "release", "tenant-bench")
TOKEN = "noisy-neighbour-operator-token-0123456789abcdef"
SERVER_CPU, CLIENT_CPU = 0, 1


def set_priority(fifo):
    """Real-time priority for this process (the quiet client) or back to normal; False when the
    system refuses it."""
    try:
        if fifo:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return True
    except PermissionError:
        return False


def quiet_p99(port, token, seconds, fifo):
    """The p99 in ms of one-at-a-time POSTs for `seconds`, and how many were answered."""
    client = redis.Redis(port=port, username="q@quiet-co", password=token, socket_timeout=60)
    client.ping()  # connected and authenticated before the clock starts
    prioritised = set_priority(True) if fifo else False
    latencies = []
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            start = time.perf_counter()
            client.execute_command("POST", "general", "hello")
            latencies.append(time.perf_counter() - start)
    finally:
        if prioritised:
            set_priority(False)
        client.close()
    latencies.sort()
    return latencies[int(len(latencies) * 0.99)] * 1e3, len(latencies), prioritised


def flood(port, directory, connections, pipeline, seconds):
    """Starts tenant-bench's flood on one tenant of its own (on CPU 1, normal priority)."""
    result = os.path.join(directory, "flood-{}.json".format(time.monotonic_ns()))
    process = subprocess.Popen(
        ["taskset", "-c", str(CLIENT_CPU), BENCH, "--port", str(port), "--token", TOKEN, "--mix", "post",
         "--tenants", "1", "--connections", str(connections), "--pipeline", str(pipeline),
         "--seconds", str(seconds), "--json", result],
        stdout=subprocess.DEVNULL)
    return process, result


def flood_rate(process, result):
    process.wait(timeout=300)
    with open(result) as file:
        return json.load(file)["replies_per_second"]


def one_run(binary, budget, connections, pipeline, seconds, fifo):
    directory = tempfile.mkdtemp(prefix="tenantd-shares-")
    environment = dict(os.environ, TENANT_ADMIN_TOKEN=TOKEN, TENANT_DEFAULT_PLAN="enterprise")
    server = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), binary, "--port", "0", "--data-dir", directory + "/data",
         "--metrics-port", "0", "--fsync", "everysec", "--turn-budget", str(budget)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment)
    try:
        port = int(server.stdout.readline().decode().split("port=")[1].split()[0])
        admin = redis.Redis(port=port, username="admin", password=TOKEN, decode_responses=True)
        reply = admin.execute_command("TENANT", "CREATE", "quiet", "quiet-co", "OWNER", "q")
        fields = dict(zip(reply[::2], reply[1::2])) if isinstance(reply, list) else reply
        token = fields["owner_token"]
        admin.close()
        os.sched_setaffinity(0, {CLIENT_CPU})
        alone_flood = flood_rate(*flood(port, directory, connections, pipeline, seconds))
        alone, answered_alone, prioritised = quiet_p99(port, token, seconds, fifo)
        process, result = flood(port, directory, connections, pipeline, seconds + 3)
        time.sleep(1.5)
        under, answered_under, _ = quiet_p99(port, token, seconds, fifo)
        flooded_rate = flood_rate(process, result)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return {"budget": budget, "flood": "{}x{}".format(connections, pipeline), "quiet_priority":
            "fifo" if prioritised else "normal", "alone_p99_ms": alone, "under_p99_ms": under,
            "ratio": under / alone, "quiet_answered_alone": answered_alone,
            "quiet_answered_under": answered_under, "flood_alone_rps": alone_flood,
            "flood_with_quiet_rps": flooded_rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenantd", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default="0,64")
    parser.add_argument("--floods", default="20x16,200x16")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--quiet-priority", choices=["fifo", "normal"], default="fifo")
    parser.add_argument("--json")
    arguments = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs two CPUs: the server on CPU 0, the clients on CPU 1")
    budgets = [int(budget) for budget in arguments.budgets.split(",")]
    floods = [tuple(int(part) for part in size.split("x")) for size in arguments.floods.split(",")]
    runs = []
    for number in range(1, arguments.rounds + 1):
        for connections, pipeline in floods:
            for budget in budgets:
                run = one_run(arguments.tenantd, budget, connections, pipeline, arguments.seconds,
                              arguments.quiet_priority == "fifo")
                run["round"] = number
                runs.append(run)
                print(json.dumps(run), flush=True)
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump(runs, file, indent=1)
    for connections, pipeline in floods:
        size = "{}x{}".format(connections, pipeline)
        base = [r for r in runs if r["flood"] == size and r["budget"] == budgets[0]]
        for budget in budgets:
            chosen = [r for r in runs if r["flood"] == size and r["budget"] == budget]
            cost = statistics.median(r["flood_alone_rps"] for r in chosen) / statistics.median(
                r["flood_alone_rps"] for r in base)
            print("{} --turn-budget {}: quiet p99 alone {:.2f} ms, under the flood {:.2f} ms, ratio x{:.2f} "
                  "(median of {}); flood alone {:,.0f} POST/s ({:.2f}x budget {})".format(
                      size, budget, statistics.median(r["alone_p99_ms"] for r in chosen),
                      statistics.median(r["under_p99_ms"] for r in chosen),
                      statistics.median(r["ratio"] for r in chosen), len(chosen),
                      statistics.median(r["flood_alone_rps"] for r in chosen), cost, budgets[0]))


if __name__ == "__main__":
    main()
