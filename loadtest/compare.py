"""``crossdock compare``: the same scenario against every server mode, side by side, as a report.

It starts every target itself (the four crossdock modes, and redis-server
with ``--baseline redis``), each on a free loopback port, then runs the
scenario at each ``--connections`` count against each target in turn with the
ordinary load generator, ``--repeat`` rounds, and reports each figure's
median. Interleaving the targets spreads any drift on the machine over all
of them. It writes into ``--out``:

* ``compare.json`` - every run's full report, the machine and the pinning;
* ``compare.md`` - one markdown table row per (target, connections);
* PNG plots (matplotlib, Agg backend, no display needed): throughput and p99
  against connections; probe latency (responsiveness); memory per idle
  connection (hold); connections per second (storm).

CPU pinning: with two or more usable CPUs, the server (and its pool workers,
which inherit the affinity) gets the first half and the generator the rest
(on 2 CPUs: server on CPU 0, generator on CPU 1), through
``os.sched_setaffinity``. The pool gets one worker per server CPU. With one
CPU, or ``--no-pin``, nothing is pinned. The report states what was done.

Exit status: 0 if every run was clean, 1 if any saw errors, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Final

from loadtest import crossover
from loadtest.config import DEFAULT_PROBE_RATE, MAX_DURATION, LoadConfig, parse_cpus
from loadtest.runner import run_loadtest
from loadtest.scenarios import CPU_COMMANDS, parse_scenario
from loadtest.servers import MODES, RunningServer, redis_available, start_crossdock, start_redis

#: Default connection counts: from "a few clients" to "more than threads like" on a small machine.
DEFAULT_CONNECTIONS: Final = "10,100,1000"

#: Default seconds per point. Short, because compare runs (modes x counts) points; 3 s is enough
#: for a stable median on loopback and keeps a default compare under two minutes.
DEFAULT_DURATION: Final = 3.0

#: Longest total planned time (points x duration) compare accepts, in seconds: one hour.
MAX_TOTAL: Final = 3600.0

#: Most runs per point: a median of 9 is plenty; more is a soak test.
MAX_REPEAT: Final = 9

#: Scenarios redis-server can serve (it has no PRIMES, FACTOR or PBKDF2).
REDIS_COMMANDS: Final = ("ping", "echo", "set", "get")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``crossdock compare`` flags."""
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.add_argument(
        "-s", "--scenario", default="ping",
        help="scenario, as for crossdock loadtest, or crossover[:primes|:pbkdf2] (the work-size sweep)",
    )  # fmt: skip
    parser.add_argument(
        "-c", "--connections", default=None,
        help=f"comma-separated connection counts (default {DEFAULT_CONNECTIONS}; crossover: one count, "
        "default 2 per server CPU)",
    )  # fmt: skip
    parser.add_argument(
        "-d", "--duration", type=float, default=None,
        help=f"seconds per point (default {DEFAULT_DURATION:g}; crossover: per step, default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--modes", default="all",
        help="comma-separated modes (" + ", ".join(name for name, _, _ in MODES) + ") or all",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs per point; the table shows each figure's median")
    parser.add_argument("--baseline", choices=("redis",), help="also run redis-server, where it can serve")
    parser.add_argument("--out", default="report", help="output directory (default ./report)")
    parser.add_argument("--size", type=int, default=16, help="payload bytes for echo and set")
    parser.add_argument("--work", type=int, default=None, help="cpu command size (see crossdock loadtest)")
    parser.add_argument("--pipeline", type=int, default=1, help="closed loop: requests in flight per connection")
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    parser.add_argument("--probe-rate", type=float, default=DEFAULT_PROBE_RATE, help="responsiveness probe rate")
    parser.add_argument(
        "-P", "--processes", type=int, default=None, help="generator processes (default: 1 per generator CPU)"
    )
    parser.add_argument("--workers", type=int, default=None, help="server pool workers (default: 1 per server CPU)")
    parser.add_argument("--server-cpus", default=None, help="CPUs for the server (default: first half)")
    parser.add_argument("--generator-cpus", default=None, help="CPUs for the generator (default: the rest)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    sweep = parser.add_argument_group("crossover (--scenario crossover)")
    sweep.add_argument("--sweep", default=None, help="comma-separated microseconds of work per step")
    sweep.add_argument("--executor", default=None, help="also sweep async+dask with this dask://HOST:PORT executor")
    sweep.add_argument("--quick", action="store_true", help="a short sweep: a smoke test of the harness")


def plan_pinning(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(server CPUs, generator CPUs, a sentence saying what was done)."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity API
        return (), (), "not pinned: this platform has no sched_setaffinity"
    if args.no_pin:
        return (), (), f"not pinned (--no-pin); {len(usable)} CPUs shared by server and generator"
    if args.server_cpus is not None or args.generator_cpus is not None:
        server = parse_cpus(args.server_cpus or "")
        generator = parse_cpus(args.generator_cpus or "")
        return (
            server,
            generator,
            f"server pinned to CPUs {list(server)}, generator to CPUs {list(generator)} (as asked)",
        )
    if len(usable) < 2:
        return (), (), "not pinned: only one CPU is usable, server and generator share it"
    half = len(usable) // 2
    server, generator = tuple(usable[:half]), tuple(usable[half:])
    return (
        server,
        generator,
        f"server (and its pool workers) pinned to CPUs {list(server)}, generator to CPUs {list(generator)} "
        "with os.sched_setaffinity",
    )


def _targets(args: argparse.Namespace, scenario_commands: list[str]) -> tuple[list[str], list[str]]:
    """(targets to run, notes about skipped ones)."""
    names = [name for name, _, _ in MODES]
    wanted = names if args.modes == "all" else [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in names]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}: use {', '.join(names)} or all")
    notes = []
    if args.baseline == "redis":
        if not redis_available():
            notes.append("redis baseline skipped: redis-server is not installed")
        elif any(command not in REDIS_COMMANDS for command in scenario_commands):
            notes.append("redis baseline skipped: redis-server has no " + ", ".join(CPU_COMMANDS))
        else:
            wanted.append("redis")
    return wanted, notes


def _start(target: str, workers: int, cpus: tuple[int, ...]) -> RunningServer:
    if target == "redis":
        return start_redis(cpus)
    _, mode, cpu = next(entry for entry in MODES if entry[0] == target)
    return start_crossdock(mode, cpu, workers, cpus)


def _row(target: str, connections: int, report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one point that the table and plots use."""
    latency = report["latency_ms"]
    row: dict[str, Any] = {
        "target": target,
        "connections": connections,
        "throughput_rps": report["throughput_rps"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "p999_ms": latency["p99.9"],
        "max_ms": latency["max"],
        "errors": report["requests"]["errors"] + report["connections"]["failed"] + report["requests"]["lost"],
        "ok": report["ok"],
    }
    if "probe" in report:
        row["probe_p50_ms"] = report["probe"]["p50"]
        row["probe_p99_ms"] = report["probe"]["p99"]
        row["probe_max_ms"] = report["probe"]["max"]
    if "hold" in report:
        row["bytes_per_connection"] = report["hold"].get("bytes_per_connection")
    if "storm" in report:
        row["connections_per_s"] = report["storm"]["connections_per_s"]
    return row


def median_row(point: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a point: the median of each figure, errors summed, ok if all ok."""
    row = dict(point[0])
    for key, value in point[0].items():
        if key in ("target", "connections", "ok", "errors"):
            continue
        values = [run[key] for run in point if isinstance(run.get(key), int | float)]
        row[key] = statistics.median(values) if values else value
    for key in ("throughput_rps", "probe_p99_ms", "bytes_per_connection", "connections_per_s"):
        values = [run[key] for run in point if isinstance(run.get(key), int | float)]
        if len(values) > 1:  # the spread over the runs, so a reader can judge the noise
            row[f"{key}_range"] = (
                f"{min(values):,.0f}-{max(values):,.0f}"
                if max(values) >= 100
                else (f"{min(values):.2f}-{max(values):.2f}")
            )
    row["errors"] = sum(run["errors"] for run in point)
    row["ok"] = all(run["ok"] for run in point)
    row["runs"] = len(point)
    return row


def _number_cell(key: str, value: float) -> str:
    """Milliseconds with three decimals; counts and rates (replies/s, connections/s) as whole numbers."""
    if key.endswith("_ms") or "_ms_" in key:
        return f"{value:.3f}"
    return f"{value:,.0f}"


def markdown_table(rows: list[dict[str, Any]], kind: str) -> str:
    """One markdown table of the points, with the columns the scenario kind needs."""
    columns = [("target", "target"), ("connections", "connections")]
    if kind == "hold":
        columns += [
            ("bytes_per_connection", "server bytes per idle connection"),
            ("bytes_per_connection_range", "range"),
        ]
    elif kind == "storm":
        columns += [
            ("connections_per_s", "connections/s"),
            ("connections_per_s_range", "range"),
            ("p50_ms", "cycle p50 ms"),
            ("p99_ms", "cycle p99 ms"),
        ]
    else:
        columns += [
            ("throughput_rps", "replies/s"),
            ("throughput_rps_range", "range"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("p999_ms", "p99.9 ms"),
        ]
    if kind == "responsiveness":
        columns += [
            ("probe_p50_ms", "probe p50 ms"),
            ("probe_p99_ms", "probe p99 ms"),
            ("probe_p99_ms_range", "range"),
            ("probe_max_ms", "probe max ms"),
        ]
    columns += [("errors", "errors")]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if isinstance(value, float):
                cells.append(_number_cell(key, value))
            else:
                cells.append("-" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], kind: str, out: Path, title: str) -> list[str]:
    """Write the PNGs for this scenario kind; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    charts: list[tuple[str, str, str]] = []  # (file, row key, y label)
    if kind == "hold":
        charts.append(("memory_per_connection.png", "bytes_per_connection", "server bytes per idle connection"))
    elif kind == "storm":
        charts.append(("connections_per_second.png", "connections_per_s", "connections per second"))
        charts.append(("p99.png", "p99_ms", "p99 connect+PING+close (ms)"))
    else:
        charts.append(("throughput.png", "throughput_rps", "replies per second"))
        charts.append(("p99.png", "p99_ms", "p99 latency (ms)"))
    if kind == "responsiveness":
        charts.append(("probe_latency.png", "probe_p99_ms", "probe PING p99 under cpu load (ms)"))
    written = []
    targets = list(dict.fromkeys(row["target"] for row in rows))
    for filename, key, label in charts:
        figure, axes = plt.subplots(figsize=(7, 4.2))
        for target in targets:
            points = [(r["connections"], r[key]) for r in rows if r["target"] == target and r.get(key) is not None]
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=target)
        axes.set_xscale("log")
        counts = sorted({row["connections"] for row in rows})
        axes.set_xticks(counts)
        axes.xaxis.set_major_formatter(ticker.ScalarFormatter())
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
        if key.endswith("_ms"):
            axes.set_yscale("log")
        axes.set_xlabel("connections")
        axes.set_ylabel(label)
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / filename, dpi=100)
        plt.close(figure)
        written.append(filename)
    return written


def run(args: argparse.Namespace) -> int:
    """Run every (target, connections) point and write the report files."""
    if args.scenario.strip().lower().partition(":")[0] == "crossover":
        return crossover.run(args)
    if args.connections is None:
        args.connections = DEFAULT_CONNECTIONS
    if args.duration is None:
        args.duration = DEFAULT_DURATION
    try:
        scenario = parse_scenario(args.scenario, size=args.size, work=args.work)
        counts = [int(part) for part in args.connections.split(",") if part.strip()]
        if not counts or min(counts) < 1:
            raise ValueError("--connections needs positive counts")
        if not 0 < args.duration <= MAX_DURATION:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:g}]")
        commands = [name for name, _ in scenario.weights]
        targets, notes = _targets(args, commands)
        if not 1 <= args.repeat <= MAX_REPEAT:
            raise ValueError(f"--repeat must be 1..{MAX_REPEAT}")
        if len(targets) * len(counts) * args.duration * args.repeat > MAX_TOTAL:
            raise ValueError(f"planned run time exceeds {MAX_TOTAL:g} s: fewer counts, modes or seconds")
        server_cpus, generator_cpus, pinning = plan_pinning(args)
    except ValueError as exc:
        print(f"crossdock compare: {exc}", file=sys.stderr)
        return 2
    workers = args.workers or max(1, len(server_cpus) or len(os.sched_getaffinity(0)))
    processes = args.processes or max(1, len(generator_cpus) or 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"crossdock compare: {pinning}; pool workers {workers}; generator processes {processes}",
        file=sys.stderr,
    )
    for note in notes:
        print(f"crossdock compare: {note}", file=sys.stderr)

    points: dict[tuple[str, int], list[dict[str, Any]]] = {(t, c): [] for t in targets for c in counts}
    reports: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        # Every server runs for the whole comparison (idle ones cost nothing), and the targets take
        # turns point by point, round by round: drift on the machine (other work, thermal limits)
        # then spreads over all targets instead of landing on whichever ran last.
        servers = {target: stack.enter_context(_start(target, workers, server_cpus)) for target in targets}
        for round_number in range(1, args.repeat + 1):
            for count in counts:
                for target in targets:
                    config = LoadConfig(
                        scenario=scenario,
                        port=servers[target].port,
                        connections=count,
                        processes=min(processes, count),
                        pipeline=args.pipeline,
                        rate=args.rate,
                        duration=args.duration,
                        probe_rate=args.probe_rate,
                        cpus=generator_cpus,
                    )
                    report = run_loadtest(config)
                    report.pop("timeline", None)
                    row = _row(target, count, report)
                    points[(target, count)].append(row)
                    reports.append({"target": target, "connections": count, "round": round_number, "report": report})
                    print(
                        f"  round {round_number} {target:16} {count:6} connections: "
                        f"{row['throughput_rps']:>10,.0f}/s p99 {row['p99_ms']:.3f} ms"
                        + ("" if row["ok"] else f"  PROBLEMS {report['problems']}"),
                        file=sys.stderr,
                    )
    rows = [median_row(points[(target, count)]) for target in targets for count in counts]
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = "crossdock compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "crossdock compare"
    document = {
        "tool": "crossdock compare",
        "date": when,
        "command": command,
        "scenario": scenario.name,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "pinning": pinning,
        "server_cpus": list(server_cpus),
        "generator_cpus": list(generator_cpus),
        "pool_workers": workers,
        "generator_processes": processes,
        "duration_s": args.duration,
        "repeat": args.repeat,
        "notes": notes,
        "rows": rows,
        "runs": reports,
    }
    (out / "compare.json").write_text(json.dumps(document, indent=2) + "\n")
    pinned = f"server CPUs {list(server_cpus)}, generator CPUs {list(generator_cpus)}" if server_cpus else "not pinned"
    title = f"{scenario.name}: {args.duration:g} s per run, median of {args.repeat}; {pinned}"
    images = [] if args.no_plots else plot(rows, scenario.kind, out, title)
    markdown = [
        f"# crossdock compare: {scenario.name}",
        "",
        f"- date: {when}",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- pinning: {pinning}",
        f"- pool workers: {workers}; generator processes: {processes}; {args.duration:g} s per run; "
        f"median of {args.repeat} run(s) per point",
        *(f"- note: {note}" for note in notes),
        "",
        markdown_table(rows, scenario.kind),
        *(f"![{name}]({name})" for name in images),
        "",
    ]
    (out / "compare.md").write_text("\n".join(markdown))
    print(markdown_table(rows, scenario.kind))
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}" + "".join(f", {out / i}" for i in images))
    return 0 if all(row["ok"] for row in rows) else 1
