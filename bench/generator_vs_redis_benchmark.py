"""Is the generator fast enough? Its PING rate next to redis-benchmark's, against the same redis-server.

redis-server is pinned to the first usable CPU, both generators to the second
(when there are two), and the two tools alternate ``--rounds`` times with the
same connection count and request count, so drift on the machine hits both
alike. Prints a JSON document with every round and the medians; the issue's
target is a ratio of at least 0.8.

    .venv/bin/python bench/generator_vs_redis_benchmark.py --connections 50 --requests 300000 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys

from loadtest.redisbench import run_redis_benchmark
from loadtest.servers import start_redis

#: Seconds any one tool run may take before it is abandoned (a healthy run takes a few seconds).
RUN_TIMEOUT = 120


def children_cpu() -> float:
    """CPU seconds (user + sys) used so far by finished child processes and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_benchmark(port: int, connections: int, requests: int, cpus: list[int], pipeline: int) -> float:
    run = run_redis_benchmark(port, ["ping_mbulk"], connections, requests, pipeline, cpus, timeout=RUN_TIMEOUT)
    if not run.ok:
        raise RuntimeError(f"redis-benchmark run failed: {run.problems}: {run.output_tail[-300:]!r}")
    return run.rps["PING_MBULK"]


def crossdock_loadtest(
    port: int, connections: int, requests: int, cpus: list[int], processes: int, pipeline: int
) -> float:
    command = [
        sys.executable, "-m", "server", "loadtest", "-p", str(port), "-c", str(connections),
        "-P", str(processes), "-n", str(requests), "--scenario", "ping", "--quiet", "--json", "-",
        "--pipeline", str(pipeline),
    ]  # fmt: skip
    if cpus:
        command += ["--cpus", ",".join(map(str, cpus))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    report = json.loads(done.stdout)
    if not report["ok"]:
        raise RuntimeError(f"loadtest run had problems: {report['problems']}")
    return float(report["throughput_rps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--pipeline", type=int, default=1)
    args = parser.parse_args()
    usable = sorted(os.sched_getaffinity(0))
    server_cpus, tool_cpus = (usable[:1], usable[1:2]) if len(usable) >= 2 else ([], [])
    rounds = []
    with start_redis(server_cpus) as server:
        for _ in range(args.rounds):
            before = children_cpu()
            theirs = redis_benchmark(server.port, args.connections, args.requests, tool_cpus, args.pipeline)
            middle = children_cpu()
            ours = crossdock_loadtest(
                server.port, args.connections, args.requests, tool_cpus, args.processes, args.pipeline
            )
            after = children_cpu()
            rounds.append(
                {
                    "redis_benchmark_rps": theirs,
                    "crossdock_loadtest_rps": ours,
                    "ratio": ours / theirs,
                    # CPU cost per request of each tool, start-up included (interpreter start and
                    # imports cost crossdock ~0.5 CPU-s per run, i.e. ~1.5 us/request at 300k).
                    "redis_benchmark_cpu_us_per_request": (middle - before) / args.requests * 1e6,
                    "crossdock_loadtest_cpu_us_per_request": (after - middle) / args.requests * 1e6,
                }
            )
            print(json.dumps(rounds[-1]), file=sys.stderr)
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "connections": args.connections,
        "requests_per_run": args.requests,
        "generator_processes": args.processes,
        "pipeline": args.pipeline,
        "redis_server_cpus": server_cpus,
        "tool_cpus": tool_cpus,
        "redis_benchmark": subprocess.run(
            ["redis-benchmark", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "rounds": rounds,
        "median_redis_benchmark_rps": statistics.median(r["redis_benchmark_rps"] for r in rounds),
        "median_crossdock_loadtest_rps": statistics.median(r["crossdock_loadtest_rps"] for r in rounds),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "median_redis_benchmark_cpu_us_per_request": statistics.median(
            r["redis_benchmark_cpu_us_per_request"] for r in rounds
        ),
        "median_crossdock_loadtest_cpu_us_per_request": statistics.median(
            r["crossdock_loadtest_cpu_us_per_request"] for r in rounds
        ),
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
