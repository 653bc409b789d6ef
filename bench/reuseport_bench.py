"""One front end against N (``crossdock serve --reuseport 1`` vs ``--reuseport N``), same total pool, same load.

    .venv/bin/python bench/reuseport_bench.py --rounds 7          # N = 2: the figures of docs/benchmarks.md
    .venv/bin/python bench/reuseport_bench.py --rounds 9 --duration 15 --json out.json

Each round starts a fresh server for every configuration, in alternating order (1, N then N, 1, ...), so drift
on a shared machine hits both alike, and runs every workload against it:

* ``loadtest ping``: ``crossdock loadtest -s ping -c 200`` (closed loop, pipeline 1, the generator's processes
  as ``--gen-processes``);
* ``loadtest mix``: ``crossdock loadtest -s mix:ping=90,primes=10 -c 200`` (cpu requests on the pool);
* ``redis-benchmark ping``: ``redis-benchmark -t ping_inline -c 200 -P 16``, a C generator that costs the
  machine far less than the Python one, so more of the CPU is left for the server (skipped if not installed).

Both configurations get ``--workers W`` in total (``--reuseport 1``: one child with W workers; ``--reuseport N``:
N children sharing W). Nothing is pinned: on a 2-core machine, pinning the generator to one core would leave the
N front ends one core between them. The medians of the rounds and their ratio are printed (and written with
``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Seconds to wait for the supervisor's "started" line (every child pre-warms its pool first).
START_WAIT = 60.0


def start_server(instances: int, workers: int, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", "0", "--reuseport", str(instances),
             "--workers", str(workers), "--log-format", "json"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "started" and event.get("role") == "supervisor":
                return proc, int(event["port"])
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {log_path.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loadtest(port: int, scenario: str, connections: int, duration: float, processes: int, out: Path) -> float:
    subprocess.run(
        [sys.executable, "-m", "server", "loadtest", "-p", str(port), "-s", scenario, "-c", str(connections),
         "-d", str(duration), "-P", str(processes), "--quiet", "--json", str(out)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return float(json.loads(out.read_text())["throughput_rps"])


def redis_benchmark(port: int, connections: int, requests: int) -> float:
    result = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "ping_inline", "-c", str(connections), "-n", str(requests),
         "-P", "16", "-q"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    match = re.search(r"([\d.]+) requests per second", result.stdout.replace("\r", "\n"))
    if match is None:
        raise SystemExit(f"cannot read redis-benchmark's output: {result.stdout!r}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2, help="N front ends to compare with one (default 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool workers in total")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per loadtest run")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--gen-processes", type=int, default=1, help="crossdock loadtest -P")
    parser.add_argument("--benchmark-requests", type=int, default=1_000_000, help="redis-benchmark -n")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    configs = [1, args.instances]
    workloads = ["loadtest ping", "loadtest mix"]
    if shutil.which("redis-benchmark"):
        workloads.append("redis-benchmark ping")
    results: dict[str, dict[int, list[float]]] = {w: {n: [] for n in configs} for w in workloads}
    with tempfile.TemporaryDirectory(prefix="crossdock-reuseport-") as tmp:
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for n in order:
                proc, port = start_server(n, args.workers, Path(tmp) / f"server-{round_index}-{n}.log")
                try:
                    for workload in workloads:
                        out = Path(tmp) / "report.json"
                        if workload == "loadtest ping":
                            rate = loadtest(port, "ping", args.connections, args.duration, args.gen_processes, out)
                        elif workload == "loadtest mix":
                            rate = loadtest(
                                port, "mix:ping=90,primes=10", args.connections, args.duration,
                                args.gen_processes, out,
                            )  # fmt: skip
                        else:
                            rate = redis_benchmark(port, args.connections, args.benchmark_requests)
                        results[workload][n].append(rate)
                        print(f"round {round_index + 1} --reuseport {n} {workload}: {rate:,.0f}/s", flush=True)
                finally:
                    stop_server(proc)

    n = args.instances
    print(f"\n| workload | --reuseport 1: median (min-max) | --reuseport {n}: median (min-max) | ratio of medians "
          "| median of per-round ratios |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    summary = {}
    for workload in workloads:
        ones, manys = results[workload][1], results[workload][n]
        one, many = statistics.median(ones), statistics.median(manys)
        paired = statistics.median(b / a for a, b in zip(ones, manys, strict=True))
        summary[workload] = {
            "one": one,
            "many": many,
            "ratio": many / one,
            "paired_ratio": paired,
            "runs": results[workload],
        }
        print(
            f"| {workload} | {one:,.0f}/s ({min(ones):,.0f}-{max(ones):,.0f}) "
            f"| {many:,.0f}/s ({min(manys):,.0f}-{max(manys):,.0f}) | {many / one:.2f} | {paired:.2f} |"
        )
    print(f"\nloadavg at the end: {Path('/proc/loadavg').read_text().strip()}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
