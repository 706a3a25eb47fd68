#!/usr/bin/env python3
"""What one request costs each server: rate, CPU time per request, context switches.

Starts Debian's redis-server and each tenantd build given (`BINARY:THREADS[:NAME=VALUE...]`, a
release build, its `--threads` and any settings as environment variables, such as
`TENANTD_MOVE_CONNECTIONS=no`) the way Benchmarks/compare-redis does (its `Redis` and `Tenantd` classes), then,
in every round, runs redis-benchmark (50 connections, one request in flight each, or --pipeline
P) against each server in turn: XADD on Redis and POST on tenantd, or PING on both (--command). For each run it reads the server's CPU time
(user + system, /proc/PID/stat) and its threads' context switches (/proc/PID/task/*/status)
before and after, and prints per server the medians of the rounds: requests per second, its
ratio to Redis's in the same round, microseconds of server CPU per request, the cores the server
used, and voluntary context switches per request. Figures are comparable within one run only.

    Benchmarks/scripts/cpu-per-request.py --tenantd .build/release/tenantd:2 \
        --tenantd OTHER-BUILD:2 --tenantd .build/release/tenantd:1 [--rounds 5] [--requests 200000] \
        [--command post|ping] [--pipeline 16]
"""
import argparse
import glob
import importlib.machinery
import importlib.util
import json
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
loader = importlib.machinery.SourceFileLoader("compare_redis", os.path.join(HERE, "..", "compare-redis"))
compare_redis = importlib.util.module_from_spec(importlib.util.spec_from_loader("compare_redis", loader))
loader.exec_module(compare_redis)

TEXT = "hello from the cpu-per-request harness"


def sample(pid):
    fields = open("/proc/{}/stat".format(pid)).read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    switches = 0
    for status in glob.glob("/proc/{}/task/*/status".format(pid)):
        for line in open(status):
            if line.startswith("voluntary_ctxt_switches"):
                switches += int(line.split()[1])
    return ticks, switches, time.time()


def run(server, command, requests, pipeline):
    before = sample(server.process.pid)
    rate = compare_redis.redis_benchmark(server, command, requests, pipeline=pipeline)
    after = sample(server.process.pid)
    hertz = os.sysconf("SC_CLK_TCK")
    cpu = (after[0] - before[0]) / hertz
    return {"rate": rate, "cpu_us": cpu * 1e6 / requests, "cores": cpu / (after[2] - before[2]),
            "switches": (after[1] - before[1]) / requests}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenantd", action="append", required=True,
                        help="BINARY:THREADS[:NAME=VALUE...], repeatable")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--command", choices=["post", "ping"], default="post")
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--json")
    arguments = parser.parse_args()
    servers = [("redis", compare_redis.Redis())]
    results = {"redis": []}
    try:
        servers[0][1].start()
        for spec in arguments.tenantd:
            binary, threads, *settings = spec.split(":")
            saved = dict(os.environ)
            # Read by tenantd when it starts.
            os.environ["TENANTD_THREADS"] = threads
            for setting in settings:
                name, value = setting.split("=", 1)
                os.environ[name] = value
            server = compare_redis.Tenantd(binary)
            servers.append((spec, server))
            results[spec] = []
            server.start()
            os.environ.clear()
            os.environ.update(saved)
        for _ in range(arguments.rounds):
            for name, server in servers:
                command = server.post() + [TEXT] if arguments.command == "post" else ["PING"]
                results[name].append(run(server, command, arguments.requests, arguments.pipeline))
    finally:
        for _, server in servers:
            server.stop()
    print("| server | req/s | / Redis | server CPU µs per request | cores used | context switches per request |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        ratio = statistics.median(run["rate"] / base["rate"] for run, base in zip(runs, results["redis"]))
        print("| {} | {:,.0f} | {:.2f}x | {:.1f} | {:.2f} | {:.2f} |".format(
            name, statistics.median(r["rate"] for r in runs), ratio, statistics.median(r["cpu_us"] for r in runs),
            statistics.median(r["cores"] for r in runs), statistics.median(r["switches"] for r in runs)))
    if arguments.json:
        with open(arguments.json, "w") as output:
            json.dump(results, output, indent=1)


if __name__ == "__main__":
    main()
