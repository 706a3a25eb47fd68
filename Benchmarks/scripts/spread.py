#!/usr/bin/env python3
"""10,000 active tenants against one (issue 9 and 21's `--spread` target), in rounds.

Each round runs two fresh release tenantd servers in turn, `--fsync everysec`, `database`
strategy, all id sources (the path form included), on the same machine as the load:

- base: tenant-bench, 50 connections of one tenant's owner, POST, one request in flight each;
- spread: tenant-bench --spread --tenants 10000, 50 operator connections, each POST to the next
  tenant in turn (`/tenant/<id>/general`), so that every tenant is active.

The figure is spread POST/s over base POST/s per round, and the median of the rounds. With
--baseline, another build runs the same two runs in each round, right after, so that the two
builds' ratios come from one invocation on the same noisy machine. Writes the runs as JSON.

    Benchmarks/scripts/spread.py --tenantd .build/release/tenantd --rounds 3 \
        [--baseline OTHER-BUILD] [--seconds 5] [--threads N] [--json Benchmarks/results/spread.json]
"""
import argparse
import json
import statistics

from tenantd_run import bench, tenantd

TOKEN = "spread-operator-token-0123456789abcdef-0123"


def run(binary, threads, seconds, spread, tenants):
    with tenantd(binary, TOKEN, threads, {"TENANT_ID_SOURCE": "subdomain,header,path"}) as (port, directory):
        arguments = ["--mix", "post", "--connections", 50, "--pipeline", 1, "--seconds", seconds,
                     "--tenants", tenants]
        if spread:
            arguments.append("--spread")
        return bench(port, TOKEN, directory, *arguments)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenantd", required=True)
    parser.add_argument("--baseline", help="another tenantd build, run in the same rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--tenants", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=0, help="tenantd --threads (0: its default)")
    parser.add_argument("--json")
    arguments = parser.parse_args()
    builds = [("tenantd", arguments.tenantd)]
    if arguments.baseline:
        builds.append(("baseline", arguments.baseline))
    rounds = []
    for number in range(1, arguments.rounds + 1):
        for name, binary in builds:
            base = run(binary, arguments.threads, arguments.seconds, False, 1)
            other = run(binary, arguments.threads, arguments.seconds, True, arguments.tenants)
            ratio = other["replies_per_second"] / base["replies_per_second"]
            rounds.append({"round": number, "build": name, "binary": binary, "base": base, "other": other,
                           "ratio": ratio})
            print(f"round {number}, {name}: 1 tenant {base['replies_per_second']:,.0f} POST/s, "
                  f"{arguments.tenants:,} tenants {other['replies_per_second']:,.0f} POST/s "
                  f"(errors {other['errors']}, p99 {other['latency_ms']['p99']} ms, "
                  f"p99.9 {other['latency_ms']['p99.9']} ms): ratio {ratio:.2f}", flush=True)
    for name, _ in builds:
        ratios = [r["ratio"] for r in rounds if r["build"] == name]
        print(f"{name}: median ratio {statistics.median(ratios):.2f} of {len(ratios)} rounds")
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump(rounds, file, indent=1)


if __name__ == "__main__":
    main()
