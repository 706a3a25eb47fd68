#!/usr/bin/env python3
"""A quiet tenant's latency percentiles alone and under redis-benchmark's flood, one run.

A fresh release tenantd on CPU 0 (taskset; `--fsync everysec`, any further arguments passed on,
such as `--turn-budget 0`); two tenants; on CPU 1 the quiet client (redis-py, one POST at a
time, at real-time priority: SCHED_FIFO, so that its own wait for the CPU it shares with the
flood's client is not measured) sends --requests POSTs alone, then again while redis-benchmark
floods the other tenant (20 connections x 16 pipelined POSTs). Prints p50, p90, p99 and p99.9 in
milliseconds for both.

    Benchmarks/scripts/quiet-under-flood.py --tenantd .build/release/tenantd [--requests 5000] \\
        [-- --turn-budget 0]
"""
import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time

import redis

TOKEN = "q" * 40


def percentiles(client, requests):
    prioritised = True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except PermissionError:
        prioritised = False
    latencies = []
    try:
        for _ in range(requests):
            start = time.perf_counter()
            client.execute_command("POST", "general", "hello there")
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        if prioritised:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    latencies.sort()
    return {name: round(latencies[int(len(latencies) * q) - 1], 3)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))}, prioritised


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenantd", required=True)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("server_arguments", nargs="*")
    arguments = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="tenantd-quiet-")
    environment = dict(os.environ, TENANT_ADMIN_TOKEN=TOKEN, TENANT_DEFAULT_PLAN="enterprise")
    server = subprocess.Popen(
        ["taskset", "-c", "0", arguments.tenantd, "--port", "0", "--data-dir", directory + "/data",
         "--metrics-port", "0", "--fsync", "everysec", *arguments.server_arguments],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment)
    flood = None
    try:
        port = int(re.search(r"port=(\d+)", server.stdout.readline().decode()).group(1))
        os.sched_setaffinity(0, {1})
        admin = redis.Redis(port=port, username="admin", password=TOKEN, decode_responses=True)
        tokens = []
        for name in ("flood-co", "quiet-co"):
            reply = admin.execute_command("TENANT", "CREATE", name, name, "OWNER", "alice")
            fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
            tokens.append(fields["owner_token"])
        quiet = redis.Redis(port=port, username="alice@quiet-co", password=tokens[1])
        quiet.ping()
        alone, prioritised = percentiles(quiet, arguments.requests)
        flood = subprocess.Popen(
            ["redis-benchmark", "-p", str(port), "-c", "20", "-P", "16", "-n", "100000000", "-q",
             "--user", "alice@flood-co", "-a", tokens[0], "POST", "general", "hello flood"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        under, _ = percentiles(quiet, arguments.requests)
        print("quiet client at {} priority".format("real-time" if prioritised else "normal"))
        print("alone (ms):           ", alone)
        print("under the flood (ms): ", under)
    finally:
        if flood:
            flood.kill()
            flood.wait()
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
