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

The mix sheds: 200 closed-loop connections can each hold a PRIMES in flight, more than the cpu backlog bound
(``--cpu-queue-limit``, 64 waiting per worker by default), so some cpu requests are answered ``-BUSY``. That is
the server doing what it promises (a bounded backlog, docs/robustness.md), not a failure of the run: the figure
is the rate of requests *served* (replies that are not ``-BUSY``), and the ``-BUSY`` replies are counted beside
it (``shed``). Any other error, a lost request or a connection failure still fails the run.

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


#: The error reply kind that is load shedding (the cpu backlog bound), counted and not a failure of the run.
SHED_KIND = "BUSY"


def loadtest(
    port: int, scenario: str, connections: int, duration: float, processes: int, out: Path
) -> tuple[float, int]:
    """(requests served per second, ``-BUSY`` replies) of one run; SystemExit if it had any other problem."""
    done = subprocess.run(
        [sys.executable, "-m", "server", "loadtest", "-p", str(port), "-s", scenario, "-c", str(connections),
         "-d", str(duration), "-P", str(processes), "--quiet", "--json", str(out)],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"loadtest {scenario} exited {done.returncode} without a report: {exc}") from None
    requests = report["requests"]
    errors = dict(requests["errors_by_kind"])
    shed = errors.pop(SHED_KIND, 0)
    other = [p for p in report["problems"] if not p.startswith("error replies: ")]
    if errors or other or (done.returncode != 0 and not shed):
        raise SystemExit(f"loadtest {scenario} failed (exit {done.returncode}): {report['problems']}")
    received = requests["received"]
    served_share = (received - shed) / received if received else 0.0
    return float(report["throughput_rps"]) * served_share, shed


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
    shed: dict[str, dict[int, list[int]]] = {w: {n: [] for n in configs} for w in workloads}
    with tempfile.TemporaryDirectory(prefix="crossdock-reuseport-") as tmp:
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for n in order:
                proc, port = start_server(n, args.workers, Path(tmp) / f"server-{round_index}-{n}.log")
                try:
                    for workload in workloads:
                        out = Path(tmp) / "report.json"
                        busy = 0
                        if workload == "loadtest ping":
                            rate, busy = loadtest(
                                port, "ping", args.connections, args.duration, args.gen_processes, out
                            )
                        elif workload == "loadtest mix":
                            rate, busy = loadtest(
                                port, "mix:ping=90,primes=10", args.connections, args.duration,
                                args.gen_processes, out,
                            )  # fmt: skip
                        else:
                            rate = redis_benchmark(port, args.connections, args.benchmark_requests)
                        results[workload][n].append(rate)
                        shed[workload][n].append(busy)
                        print(
                            f"round {round_index + 1} --reuseport {n} {workload}: {rate:,.0f}/s served, "
                            f"{busy:,} shed (-BUSY)",
                            flush=True,
                        )
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
            "shed": shed[workload],
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
