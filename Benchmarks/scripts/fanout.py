#!/usr/bin/env python3
"""Pub/sub fan-out: pushes delivered per second, this build against another, in rounds.

Each run starts a fresh release tenantd (`--fsync everysec`, `database` strategy) and runs
tenant-bench `--mix subscribers`: S subscribers of one tenant's `general` (RESP2, SUBSCRIBE on
the connection's task, every push written by the server to each), and C connections POSTing to
the tenant's rooms, one request in flight each. Every round runs both builds one after the
other, so the two figures come from one invocation on the same noisy machine. The figure per
run is the pushes delivered per second (each POST to `general` reaches all S subscribers) and
the POSTs per second; the ratio is this build's over the baseline's, per round, and the median.

    Benchmarks/scripts/fanout.py --tenantd .build/release/tenantd --baseline OTHER-BUILD \
        [--subscribers 50] [--connections 10] [--rounds 3] [--seconds 5] [--json FILE]
"""
import argparse
import json
import statistics

from tenantd_run import bench, tenantd

TOKEN = "fanout-operator-token-0123456789abcdef-0123"


def run(binary, subscribers, connections, seconds, threads):
    with tenantd(binary, TOKEN, threads) as (port, directory):
        return bench(port, TOKEN, directory, "--mix", "subscribers", "--subscribers-per-tenant", subscribers,
                     "--connections", connections, "--pipeline", 1, "--seconds", seconds, "--tenants", 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenantd", required=True)
    parser.add_argument("--baseline", required=True, help="another tenantd build, run in the same rounds")
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--threads", type=int, default=0, help="tenantd --threads (0: its default)")
    parser.add_argument("--json")
    arguments = parser.parse_args()
    runs = []
    ratios = []
    for number in range(1, arguments.rounds + 1):
        figures = {}
        for name, binary in (("tenantd", arguments.tenantd), ("baseline", arguments.baseline)):
            result = run(binary, arguments.subscribers, arguments.connections, arguments.seconds,
                         arguments.threads)
            pushes = result["pushes"] / result["seconds"]
            figures[name] = pushes
            runs.append({"round": number, "build": name, "binary": binary, "result": result,
                         "pushes_per_second": pushes})
            print(f"round {number}, {name}: {pushes:,.0f} pushes/s, "
                  f"{result['replies_per_second']:,.0f} POST/s, p99 {result['latency_ms']['p99']:.2f} ms",
                  flush=True)
        ratios.append(figures["tenantd"] / figures["baseline"])
        print(f"round {number}: ratio {ratios[-1]:.2f}", flush=True)
    print(f"median ratio (pushes/s, this build / baseline): {statistics.median(ratios):.2f}")
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump({"subscribers": arguments.subscribers, "connections": arguments.connections,
                       "seconds": arguments.seconds, "threads": arguments.threads, "runs": runs,
                       "ratios": ratios, "median": statistics.median(ratios)}, file, indent=2)


if __name__ == "__main__":
    main()
