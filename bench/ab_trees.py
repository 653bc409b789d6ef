"""Two source trees of crossdock side by side under redis-benchmark, rounds alternating: "no worse than noise?".

    .venv/bin/python bench/ab_trees.py --before /tmp/old-tree --after . [--runs 5] [--json out.json]

``--before`` / ``--after`` are checkouts (``git worktree add --detach /tmp/old-tree REV``); each server runs
``python -m server serve`` with that tree as its working directory, so the tree's own ``server`` package is the
one imported. Both servers, and redis-server as the yardstick, run for the whole measurement, pinned to CPU 0;
redis-benchmark runs pinned to CPU 1. Each round runs every row against the three servers in a rotating order;
printed per row: the median of each side, its ratio to redis-server, and after/before.
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


def start_tree(name: str, tree: Path) -> RunningServer:
    command = [
        sys.executable, "-m", "server", "serve", "--port", "0", "--workers", "1",
        "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    server = RunningServer(name, command, [0], None)
    return server


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
    args = parser.parse_args()
    import os

    servers: dict[str, RunningServer] = {}
    for name, tree in (("before", args.before), ("after", args.after)):
        cwd = os.getcwd()
        os.chdir(tree)
        try:
            servers[name] = start_tree(name, tree)
        finally:
            os.chdir(cwd)
    servers["redis"] = start_redis(cpus=[0])
    results: dict[str, dict[str, list[float]]] = {row: {side: [] for side in servers} for row, _ in ROWS}
    try:
        order = list(servers)
        for round_index in range(args.runs):
            for row, bench_args in ROWS:
                for side in order[round_index % 3 :] + order[: round_index % 3]:
                    results[row][side].append(bench(servers[side].port, bench_args))
            print(f"round {round_index + 1}/{args.runs} done", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = {}
    for row, sides in results.items():
        med = {side: statistics.median(values) for side, values in sides.items()}
        summary[row] = {
            **{f"{side}_median": round(value) for side, value in med.items()},
            "before_vs_redis": round(med["before"] / med["redis"], 3),
            "after_vs_redis": round(med["after"] / med["redis"], 3),
            "after_vs_before": round(med["after"] / med["before"], 3),
        }
        print(row, summary[row], flush=True)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
