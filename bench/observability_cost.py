"""What per-command statistics cost: the same load against two checkouts, alternated round by round.

Starts ``crossdock serve`` (async + pool, one worker) from a baseline checkout
(e.g. the main worktree, without per-command statistics) and from a candidate
checkout (this one), each with its own ``.venv``, pinned to CPU 0; drives each
with ``crossdock loadtest`` pinned to CPU 1; alternates the two ``--rounds``
times per scenario so drift on a shared machine hits both alike. Prints a
JSON document with every run, the medians, and the median of the per-round
ratios (candidate / baseline), which is the figure to quote. Besides the
rate it records the server's CPU time per reply (``/proc/<pid>/stat``
utime + stime over the run), which a loaded machine disturbs far less than
the rate: time spent descheduled is not in it.

    .venv/bin/python bench/observability_cost.py --baseline /work/main --candidate . --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Seconds a server may take to log "started" (pool pre-warm included).
STARTUP_TIMEOUT = 30.0

#: Seconds any one loadtest run may take before it is abandoned (a healthy run takes --duration plus a second).
RUN_TIMEOUT = 120


def start_server(root: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    command = [
        "taskset", "-c", "0", str(root / ".venv/bin/python"), "-m", "server", "serve",
        "--port", "0", "--workers", "1", "--log-format", "json", "--log-level", "info", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "started":
            # Keep reading its log so a chatty server never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, int(event["port"])
    proc.kill()
    raise RuntimeError(f"server in {root} did not start")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (the server; taskset execs it, so it keeps taskset's pid)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadtest(
    candidate: Path, server_pid: int, port: int, scenario: str, connections: int, duration: float
) -> dict[str, float]:
    cpu_before = cpu_seconds(server_pid)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            "taskset", "-c", "1", str(candidate / ".venv/bin/crossdock"), "loadtest", "-p", str(port),
            "-s", scenario, "-c", str(connections), "-d", str(duration), "--quiet", "--json", out.name,
        ]  # fmt: skip
        subprocess.run(
            command,
            check=True,
            timeout=RUN_TIMEOUT,
            stdout=subprocess.DEVNULL,
        )
        report = json.loads(Path(out.name).read_text())
    cpu_used = cpu_seconds(server_pid) - cpu_before
    latency = report["latency_ms"]
    replies = max(1, report["requests"]["received"])
    return {
        "rps": report["throughput_rps"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "server_cpu_us_per_reply": round(cpu_used / replies * 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--candidate", type=Path, default=Path("."))
    parser.add_argument("--scenarios", default="ping,setget")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--candidate-flags", default="", help="extra serve flags for the candidate only")
    args = parser.parse_args()
    roots = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    flags = {"baseline": [], "candidate": args.candidate_flags.split()}
    result: dict[str, object] = {"rounds": args.rounds, "connections": args.connections, "duration": args.duration}
    for scenario in args.scenarios.split(","):
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        for round_index in range(args.rounds):
            order = ["baseline", "candidate"] if round_index % 2 == 0 else ["candidate", "baseline"]
            this_round: dict[str, dict[str, float]] = {}
            for name in order:
                proc, port = start_server(roots[name], flags[name])
                try:
                    run = loadtest(roots["candidate"], proc.pid, port, scenario, args.connections, args.duration)
                finally:
                    stop_server(proc)
                runs[name].append(run)
                this_round[name] = run
                print(f"{scenario} round {round_index + 1} {name}: {run['rps']:.0f}/s", file=sys.stderr)
            ratios.append(this_round["candidate"]["rps"] / this_round["baseline"]["rps"])
            cpu_ratios.append(
                this_round["candidate"]["server_cpu_us_per_reply"] / this_round["baseline"]["server_cpu_us_per_reply"]
            )
        result[scenario] = {
            "runs": runs,
            "median_rps": {name: statistics.median(r["rps"] for r in rs) for name, rs in runs.items()},
            "median_p99_ms": {name: statistics.median(r["p99_ms"] for r in rs) for name, rs in runs.items()},
            "median_server_cpu_us_per_reply": {
                name: statistics.median(r["server_cpu_us_per_reply"] for r in rs) for name, rs in runs.items()
            },
            "median_ratio": statistics.median(ratios),
            "ratios": ratios,
            "median_cpu_ratio": statistics.median(cpu_ratios),
            "cpu_ratios": cpu_ratios,
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
