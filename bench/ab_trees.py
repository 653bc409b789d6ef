"""Two source trees of crossdock side by side under redis-benchmark, rounds alternating: "no worse than noise?".

    .venv/bin/python bench/ab_trees.py --before /tmp/old-tree --after . [--runs 5] [--json out.json]

``--before`` / ``--after`` are checkouts (``git worktree add --detach /tmp/old-tree REV``); each server runs
``python -m server serve`` with that tree as its working directory, so the tree's own ``server`` package is the
one imported. Both servers, and redis-server as the yardstick, run for the whole measurement, pinned to CPU 0;
redis-benchmark runs pinned to CPU 1. Each round runs every row against the three servers in a rotating order;
printed per row: the median of each side, its ratio to redis-server, and after/before.

``--row responsiveness`` measures issue 7's responsiveness row instead: ``crossdock loadtest -s responsiveness
-c 8 -d 5`` (one PING probe every 10 ms while 7 connections keep a PRIMES 100000 in flight; this tree's
generator for both sides, pinned to CPU 1) against each tree's async+pool server with one pool worker, pinned
to CPU 0 as bench/targets.py pins; the figure is the probe's p99 in ms (lower is better). Both trees run with
``CROSSDOCK_CORE=pure``: an old checkout has no compiled parser core of its own, so both use the pure one.

``--row overhead`` measures issue 12's overhead row at 50 connections the same way: ``crossdock loadtest -s
primes --work 10 -c 50 -d 3`` (pinned to CPU 1) against each tree's async+pool server, requests per second
(higher is better). Both trees run whichever core they find (give the old checkout the compiled core of the
same parser source, or neither).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.servers import RunningServer, start_redis  # noqa: E402

#: (row name, redis-benchmark arguments): issue 7's inline, pipelined and keyspace rows.
ROWS = (
    ("inline ping_mbulk -c 50", ["-t", "ping_mbulk", "-c", "50", "-n", "200000"]),
    ("pipelined ping_mbulk -c 50 -P 16", ["-t", "ping_mbulk", "-c", "50", "-n", "1000000", "-P", "16"]),
    ("set -c 50", ["-t", "set", "-c", "50", "-n", "200000"]),
    ("get -c 50", ["-t", "get", "-c", "50", "-n", "200000"]),
)


#: The responsiveness row's load (bench/targets.py's FULL scale): cpu connections and seconds per run.
RESPONSIVENESS_CONNECTIONS = 8
RESPONSIVENESS_SECONDS = 5.0


def start_tree(name: str, tree: Path) -> RunningServer:
    command = [
        sys.executable, "-m", "server", "serve", "--port", "0", "--workers", "1",
        "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    server = RunningServer(name, command, [0], None)
    return server


#: The overhead row at 50 connections (issue 12's ">= 0.5x inline"): PRIMES 10 through the pool, throughput.
OVERHEAD_ARGS = ["-s", "primes", "--work", "10", "-c", "50", "-d", "3"]


def overhead(port: int) -> float:
    """Requests per second of one ``crossdock loadtest -s primes --work 10 -c 50`` run, pinned to CPU 1."""
    out = subprocess.run(
        [sys.executable, "-m", "server", "loadtest", "-p", str(port), *OVERHEAD_ARGS, "--cpus", "1",
         "--quiet", "--json", "-"],
        capture_output=True, text=True, timeout=300, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout  # fmt: skip
    return float(json.loads(out)["throughput_rps"])


def responsiveness(port: int) -> float:
    """The probe's PING p99 (ms) of one responsiveness run, the generator pinned to CPU 1."""
    out = subprocess.run(
        [sys.executable, "-m", "server", "loadtest", "-p", str(port), "-s", "responsiveness",
         "-c", str(RESPONSIVENESS_CONNECTIONS), "-d", str(RESPONSIVENESS_SECONDS), "--cpus", "1",
         "--quiet", "--json", "-"],
        capture_output=True, text=True, timeout=300, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout  # fmt: skip
    return float(json.loads(out)["probe"]["p99"])


def bench(port: int, args: list[str]) -> float:
    out = subprocess.run(
        ["taskset", "-c", "1", "redis-benchmark", "-p", str(port), "-q", "--csv", *args],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    last = [line for line in out.splitlines() if line.startswith('"')][-1]
    return float(last.split(",")[1].strip('"'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--row", choices=("redis-benchmark", "responsiveness", "overhead"), default="redis-benchmark")
    args = parser.parse_args()
    import os

    probe = args.row in ("responsiveness", "overhead")  # crossdock loadtest rows: no redis-server side
    if args.row == "responsiveness":
        os.environ["CROSSDOCK_CORE"] = "pure"  # the servers inherit it
    servers: dict[str, RunningServer] = {}
    for name, tree in (("before", args.before), ("after", args.after)):
        cwd = os.getcwd()
        os.chdir(tree)
        try:
            servers[name] = start_tree(name, tree)
        finally:
            os.chdir(cwd)
    if not probe:
        servers["redis"] = start_redis(cpus=[0])
    rows = (
        (("responsiveness probe p99 ms", []),)
        if args.row == "responsiveness"
        else (("overhead PRIMES 10 -c 50 req/s", []),)
        if args.row == "overhead"
        else ROWS
    )
    results: dict[str, dict[str, list[float]]] = {row: {side: [] for side in servers} for row, _ in rows}
    try:
        order = list(servers)
        for round_index in range(args.runs):
            for row, bench_args in rows:
                turn = round_index % len(order)
                for side in order[turn:] + order[:turn]:
                    port = servers[side].port
                    measure = {"responsiveness": responsiveness, "overhead": overhead}.get(args.row)
                    results[row][side].append(measure(port) if measure else bench(port, bench_args))
            print(f"round {round_index + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = {}
    for row, sides in results.items():
        med = {side: statistics.median(values) for side, values in sides.items()}
        summary[row] = {
            **{f"{side}_median": round(value, 3) for side, value in med.items()},
            **(
                {}
                if probe
                else {
                    "before_vs_redis": round(med["before"] / med["redis"], 3),
                    "after_vs_redis": round(med["after"] / med["redis"], 3),
                }
            ),
            "after_vs_before": round(med["after"] / med["before"], 3),
        }
        print(row, summary[row], flush=True)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
