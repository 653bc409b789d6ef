"""``crossdock compare --scenario crossover``: at what work size does each concurrency model win?

The question users come with is "threads, processes or asyncio?", and the
answer depends on how much cpu work one request costs. This sweeps it, from
about 1 us to 100 ms of one core, for PRIMES (pure Python: holds the GIL)
and PBKDF2 (hashlib: releases the GIL), against every crossdock mode (and
``async+dask`` when ``--executor dask://HOST:PORT`` is given). The sizes
are calibrated by timing the commands' own functions in-process
(:mod:`loadtest.calibrate`), and the report quotes those measured
microseconds.

At every step each connection keeps one cpu request in flight (closed loop,
two connections per server CPU, so the pool and the threads have work for
every core) and one probe connection sends PING at ``--probe-rate``: the
step's figures are the cpu throughput and the probe's p99. From the sweep
the report states the crossover points: below what size inline out-serves
the pool, from what size the pool does, where the probe is better served
through the pool, and where threads are the fastest mode.

Pinning (default): the server gets every usable CPU (its pool one worker per
CPU), because the pool and the threads can only win with cores to win on; the
generator is pinned to the last CPU and shares it. ``--server-cpus``,
``--generator-cpus`` and ``--no-pin`` override this, as in every compare.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Final

from loadtest.calibrate import COMMANDS, Workload, calibrate
from loadtest.config import MAX_DURATION, LoadConfig, parse_cpus
from loadtest.machine import describe_machine, machine_line
from loadtest.runner import run_loadtest
from loadtest.scenarios import parse_scenario
from loadtest.servers import MODES, RunningServer, start_crossdock

#: Microseconds of work per request the full sweep asks for: half decades from 1 us (a call and a
#: dict lookup) to 100 ms (a request nobody should run on an event loop), 11 steps.
SWEEP_US: Final = (1, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)

#: The --quick sweep: one step on each side of the usual crossover, enough to exercise every path.
QUICK_SWEEP_US: Final = (10, 1_000)

#: Seconds per step (one target at one size): 2 s holds 200 probes at 100/s (so p99 is the third
#: worst, not the worst) and at least 20 requests even of 100 ms on four connections; the full
#: sweep (4 modes x 2 commands x 11 sizes) is then about 3 minutes per round.
DEFAULT_STEP_SECONDS: Final = 2.0

#: Seconds per step with --quick: a smoke test of the harness, the figures mean nothing.
QUICK_STEP_SECONDS: Final = 0.3

#: Seconds each calibration timing runs with --quick (the full sweep uses calibrate's default).
QUICK_TIMING_SECONDS: Final = 0.002

#: cpu connections per server CPU: two keep a request queued behind each running one, so neither
#: the pool's workers nor the threads idle between requests (the targets' scaling row does the same).
CLIENTS_PER_SERVER_CPU: Final = 2

#: Longest planned sweep (targets x sizes x rounds x step seconds): one hour, as for compare.
MAX_TOTAL: Final = 3600.0

#: Most rounds; the table shows each figure's median over them.
MAX_REPEAT: Final = 9

#: The modes compared, as named in the report (MODES of loadtest.servers, plus Dask when given).
DASK_TARGET: Final = "async+dask"


def parse_crossover(text: str) -> tuple[str, ...]:
    """``crossover`` -> both commands; ``crossover:primes`` -> just that one.

    Error handling: raises ValueError naming the known commands.
    """
    _, _, tail = text.strip().lower().partition(":")
    if not tail:
        return tuple(COMMANDS)
    if tail not in COMMANDS:
        raise ValueError(f"crossover:NAME must name one of {', '.join(COMMANDS)}")
    return (tail,)


def plan_pinning(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(server CPUs, generator CPUs, a sentence saying what was done) for the crossover sweep."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return (), (), "not pinned: this platform has no sched_setaffinity"
    if args.no_pin:
        return (), (), f"not pinned (--no-pin); {len(usable)} CPUs shared by server and generator"
    if args.server_cpus is not None or args.generator_cpus is not None:
        server, generator = parse_cpus(args.server_cpus or ""), parse_cpus(args.generator_cpus or "")
        said = f"server pinned to CPUs {list(server)}, generator to CPUs {list(generator)} (as asked)"
        return server, generator, said
    if len(usable) < 2:
        return (), (), "not pinned: only one CPU is usable, server and generator share it"
    return (
        tuple(usable),
        (usable[-1],),
        f"server (front end, pool workers, threads) on every CPU {usable}, so the pool and the threads have "
        f"cores to win on; generator pinned to CPU {usable[-1]}, sharing it (os.sched_setaffinity)",
    )


def _start(target: str, workers: int, cpus: tuple[int, ...], executor: str | None) -> RunningServer:
    if target == DASK_TARGET:
        assert executor is not None
        return start_crossdock("async", "pool", workers, cpus, ("--executor", executor))
    _, mode, cpu = next(entry for entry in MODES if entry[0] == target)
    return start_crossdock(mode, cpu, workers, cpus)


def _step_row(command: str, workload: Workload, target: str, report: dict[str, Any]) -> dict[str, Any]:
    probe = report.get("probe", {})
    return {
        "command": command,
        "target": target,
        "asked_us": workload.asked_us,
        "work": workload.work,
        "work_us": workload.measured_us,
        "throughput_rps": report["throughput_rps"],
        "p99_ms": report["latency_ms"]["p99"],
        "probe_p50_ms": probe.get("p50"),
        "probe_p99_ms": probe.get("p99"),
        "errors": report["requests"]["errors"] + report["connections"]["failed"] + report["requests"]["lost"],
        "ok": report["ok"],
        "problems": report["problems"],
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from its rounds: each figure's median, its min-max, errors summed, ok if all were."""
    row = dict(runs[0])
    row.pop("problems", None)
    for key in ("throughput_rps", "p99_ms", "probe_p50_ms", "probe_p99_ms"):
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        row[key] = statistics.median(values) if values else None
        row[f"{key}_range"] = [min(values), max(values)] if values else None
    row["errors"] = sum(run["errors"] for run in runs)
    row["ok"] = all(run["ok"] for run in runs)
    row["runs"] = len(runs)
    return row


# -- the crossover points ----------------------------------------------------------------------------


def crossing(xs: list[float], advantage: list[float]) -> dict[str, Any]:
    """Where a candidate starts to win for good: ``advantage[i] > 0`` means it wins at ``xs[i]``.

    Returns ``wins_from_us`` (first size of the last unbroken run of wins up to the largest size;
    None if it does not win at the largest), ``last_loss_us`` (the size just below, None if it wins
    everywhere), ``at_us`` (the crossing interpolated on log scales between those two) and
    ``wins_at_us`` (every size where it won).
    """
    wins = [x for x, a in zip(xs, advantage, strict=True) if a > 0]
    out: dict[str, Any] = {"wins_from_us": None, "last_loss_us": None, "at_us": None, "wins_at_us": wins}
    if not xs or advantage[-1] <= 0:
        return out
    first = len(xs) - 1
    while first > 0 and advantage[first - 1] > 0:
        first -= 1
    out["wins_from_us"] = xs[first]
    if first > 0:
        x0, x1, a0, a1 = xs[first - 1], xs[first], advantage[first - 1], advantage[first]
        out["last_loss_us"] = x0
        share = -a0 / (a1 - a0) if a1 != a0 else 0.5
        out["at_us"] = round(math.exp(math.log(x0) + share * (math.log(x1) - math.log(x0))), 1)
    return out


def _log_ratio(a: float | None, b: float | None) -> float:
    """log(a / b), 0 when either is missing or not positive (no evidence either way)."""
    if not a or not b or a <= 0 or b <= 0:
        return 0.0
    return math.log(a / b)


def crossovers(rows: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The crossover points of one command's sweep (see :func:`crossing`), and where each mode is fastest."""
    mine = [row for row in rows if row["command"] == command]
    targets = list(dict.fromkeys(row["target"] for row in mine))
    sizes = sorted({row["work"] for row in mine})
    table = {(row["target"], row["work"]): row for row in mine}
    xs = [statistics.median(table[(t, w)]["work_us"] for t in targets if (t, w) in table) for w in sizes]

    def series(target: str, key: str) -> list[float | None]:
        return [table[(target, w)].get(key) if (target, w) in table else None for w in sizes]

    out: dict[str, Any] = {"work_us": xs}
    pool, inline = series("async+pool", "throughput_rps"), series("async+inline", "throughput_rps")
    threads = series("threaded+inline", "throughput_rps")
    if "async+pool" in targets and "async+inline" in targets:
        out["pool_over_inline_throughput"] = crossing(xs, [_log_ratio(p, i) for p, i in zip(pool, inline, strict=True)])
        pool_p99, inline_p99 = series("async+pool", "probe_p99_ms"), series("async+inline", "probe_p99_ms")
        out["pool_over_inline_probe_p99"] = crossing(
            xs, [_log_ratio(i, p) for p, i in zip(pool_p99, inline_p99, strict=True)]
        )
    if "threaded+inline" in targets and "async+pool" in targets:
        out["threads_over_pool_throughput"] = crossing(
            xs, [_log_ratio(t, p) for t, p in zip(threads, pool, strict=True)]
        )
    if "threaded+inline" in targets and "async+inline" in targets:
        out["threads_over_inline_throughput"] = crossing(
            xs, [_log_ratio(t, i) for t, i in zip(threads, inline, strict=True)]
        )
    if DASK_TARGET in targets and "async+pool" in targets:
        dask = series(DASK_TARGET, "throughput_rps")
        out["dask_over_pool_throughput"] = crossing(xs, [_log_ratio(d, p) for d, p in zip(dask, pool, strict=True)])
    fastest: dict[str, list[float]] = {}
    for x, w in zip(xs, sizes, strict=True):
        measured = [(table[(t, w)]["throughput_rps"], t) for t in targets if (t, w) in table]
        measured = [(rps, t) for rps, t in measured if rps]
        if measured:
            fastest.setdefault(max(measured)[1], []).append(x)
    out["fastest_at_us"] = fastest
    return out


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} us" if value >= 10 else f"{value:.1f} us"


def _crossing_text(result: dict[str, Any] | None, winner: str, loser: str, what: str, largest: float) -> str:
    if result is None:
        return ""
    if result["wins_from_us"] is None:
        won = ", ".join(_us(x) for x in result["wins_at_us"]) or "no size"
        return f"{what}: {winner} does not beat {loser} at the largest size ({_us(largest)}); it won at {won}."
    if result["last_loss_us"] is None:
        return f"{what}: {winner} beats {loser} at every size of the sweep (from {_us(result['wins_from_us'])})."
    return (
        f"{what}: {loser} wins up to {_us(result['last_loss_us'])} of work, {winner} from "
        f"{_us(result['wins_from_us'])} on (the curves cross near **{_us(result['at_us'])}**)."
    )


def statements(points: dict[str, Any], command: str) -> list[str]:
    """The crossover points of one command as sentences for the report."""
    largest = max(points["work_us"]) if points["work_us"] else 0.0
    lines = [
        _crossing_text(points.get("pool_over_inline_throughput"), "async+pool", "async+inline", "throughput", largest),
        _crossing_text(
            points.get("pool_over_inline_probe_p99"), "async+pool", "async+inline", "probe PING p99", largest
        ),
        _crossing_text(
            points.get("threads_over_pool_throughput"), "threaded+inline", "async+pool", "threads vs pool", largest
        ),
        _crossing_text(
            points.get("threads_over_inline_throughput"),
            "threaded+inline",
            "async+inline",
            "threads vs event loop",
            largest,
        ),
        _crossing_text(
            points.get("dask_over_pool_throughput"), DASK_TARGET, "async+pool", "Dask vs local pool", largest
        ),
    ]
    fastest = points.get("fastest_at_us", {})
    if fastest:
        lines.append(
            "fastest mode by size: "
            + "; ".join(f"{target} at {', '.join(_us(x) for x in xs)}" for target, xs in fastest.items())
            + "."
        )
    return [f"{command.upper()}: {line}" for line in lines if line]


# -- report ------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict[str, Any]], command: str) -> str:
    """One table per command: a line per (size, target)."""
    lines = [
        "| work (us, measured) | size | target | cpu replies/s | range | probe p50 ms | probe p99 ms | range "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted((r for r in rows if r["command"] == command), key=lambda r: (r["work"], r["target"])):
        tp_range, p99_range = row.get("throughput_rps_range"), row.get("probe_p99_ms_range")
        lines.append(
            f"| {row['work_us']:,.1f} | {row['work']:,} | {row['target']} | {row['throughput_rps']:,.0f} | "
            + (f"{tp_range[0]:,.0f}-{tp_range[1]:,.0f}" if tp_range and row["runs"] > 1 else "-")
            + f" | {_ms(row['probe_p50_ms'])} | {_ms(row['probe_p99_ms'])} | "
            + (f"{_ms(p99_range[0])}-{_ms(p99_range[1])}" if p99_range and row["runs"] > 1 else "-")
            + f" | {row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(rows: list[dict[str, Any]], command: str, points: dict[str, Any], out: Path, title: str) -> str:
    """One PNG per command: throughput, throughput relative to async+inline, probe p99, against work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    mine = [row for row in rows if row["command"] == command]
    targets = list(dict.fromkeys(row["target"] for row in mine))
    inline = {row["work"]: row["throughput_rps"] for row in mine if row["target"] == "async+inline"}
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    for target in targets:
        series = sorted((row["work_us"], row) for row in mine if row["target"] == target)
        xs = [x for x, _ in series]
        top.plot(xs, [row["throughput_rps"] for _, row in series], marker="o", label=target)
        relative = [(x, row["throughput_rps"] / inline[row["work"]]) for x, row in series if inline.get(row["work"])]
        if relative:
            middle.plot([x for x, _ in relative], [r for _, r in relative], marker="o", label=target)
        probe = [(x, row["probe_p99_ms"]) for x, row in series if row["probe_p99_ms"]]
        bottom.plot([x for x, _ in probe], [p for _, p in probe], marker="o", label=target)
    crossing_at = (points.get("pool_over_inline_throughput") or {}).get("at_us")
    for axes in (top, middle, bottom):
        axes.set_xscale("log")
        axes.grid(True, which="both", alpha=0.3)
        if crossing_at:
            axes.axvline(crossing_at, color="grey", linestyle="--", linewidth=1)
    top.set_yscale("log")
    top.set_ylabel("cpu replies per second")
    middle.set_ylabel("throughput / async+inline")
    middle.axhline(1.0, color="black", linewidth=0.8)
    bottom.set_yscale("log")
    for axes in (top, bottom):
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.set_ylabel("probe PING p99 (ms)")
    bottom.set_xlabel(f"work per request ({command.upper()}, microseconds of one core, measured in-process)")
    top.set_title(title, fontsize=9)
    top.legend(fontsize=8)
    if crossing_at:
        middle.annotate(
            f"pool = inline near {_us(crossing_at)}", (crossing_at, 1.0), textcoords="offset points",
            xytext=(-5, 8), ha="right", fontsize=8,
        )  # fmt: skip
    figure.tight_layout()
    name = f"crossover_{command}.png"
    figure.savefig(out / name, dpi=100)
    plt.close(figure)
    return name


def run(args: argparse.Namespace) -> int:
    """The sweep: calibrate, start every target, run every (size, target) step, write the report."""
    quick = bool(getattr(args, "quick", False))
    try:
        commands = parse_crossover(args.scenario)
        asked = (
            tuple(float(part) for part in args.sweep.split(",") if part.strip())
            if getattr(args, "sweep", None)
            else (QUICK_SWEEP_US if quick else SWEEP_US)
        )
        if not asked or min(asked) <= 0:
            raise ValueError("--sweep needs positive microsecond figures")
        step = args.duration if args.duration is not None else (QUICK_STEP_SECONDS if quick else DEFAULT_STEP_SECONDS)
        if not 0 < step <= MAX_DURATION:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:g}]")
        if not 1 <= args.repeat <= MAX_REPEAT:
            raise ValueError(f"--repeat must be 1..{MAX_REPEAT}")
        targets = [name for name, _, _ in MODES] + ([DASK_TARGET] if getattr(args, "executor", None) else [])
        if args.modes != "all":
            wanted = [m.strip() for m in args.modes.split(",") if m.strip()]
            unknown = [m for m in wanted if m not in targets]
            if unknown:
                raise ValueError(f"unknown mode(s) {unknown}: use {', '.join(targets)} or all")
            targets = wanted
        planned = len(targets) * len(commands) * len(asked) * args.repeat * step
        if planned > MAX_TOTAL:
            raise ValueError(f"planned sweep of {planned:g} s exceeds {MAX_TOTAL:g} s: fewer sizes, modes or seconds")
        server_cpus, generator_cpus, pinning = plan_pinning(args)
    except ValueError as exc:
        print(f"crossdock compare: {exc}", file=sys.stderr)
        return 2
    usable = len(os.sched_getaffinity(0))
    workers = args.workers or max(1, len(server_cpus) or usable)
    connections = (
        int(args.connections) if args.connections not in (None, "") else CLIENTS_PER_SERVER_CPU * max(1, workers)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    print(f"crossdock compare crossover: {pinning}; pool workers {workers}; {connections} cpu connections",
          file=sys.stderr)  # fmt: skip

    # Calibrate on one of the server's CPUs (all are alike here), before any server runs.
    previous = os.sched_getaffinity(0)
    if server_cpus:
        os.sched_setaffinity(0, {server_cpus[0]})
    try:
        timing = {} if not quick else {"min_seconds": QUICK_TIMING_SECONDS}
        workloads = {command: calibrate(command, asked, **timing) for command in commands}
    finally:
        os.sched_setaffinity(0, previous)
    for command, steps in workloads.items():
        print(f"  calibrated {command}: " + ", ".join(f"{w.work} = {w.measured_us:g} us" for w in steps),
              file=sys.stderr)  # fmt: skip

    points: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        executor = getattr(args, "executor", None)
        servers = {t: stack.enter_context(_start(t, workers, server_cpus, executor)) for t in targets}
        for round_number in range(1, args.repeat + 1):
            for command in commands:
                for workload in workloads[command]:
                    for target in targets:  # interleaved, so drift on the machine hits every target alike
                        config = LoadConfig(
                            scenario=parse_scenario(f"responsiveness:{command}", work=workload.work),
                            port=servers[target].port,
                            connections=connections,
                            processes=1,
                            duration=step,
                            probe_rate=args.probe_rate,
                            cpus=generator_cpus,
                        )
                        report = run_loadtest(config)
                        report.pop("timeline", None)
                        row = _step_row(command, workload, target, report)
                        points.setdefault((command, workload.work, target), []).append(row)
                        runs.append({"round": round_number, **row, "report": report})
                        print(
                            f"  round {round_number} {command} {workload.measured_us:>10,.1f} us {target:16} "
                            f"{row['throughput_rps']:>10,.1f}/s probe p99 {_ms(row['probe_p99_ms'])} ms"
                            + ("" if row["ok"] else f"  PROBLEMS {row['problems']}"),
                            file=sys.stderr,
                        )
    rows = [median_row(point) for point in points.values()]
    found = {command: crossovers(rows, command) for command in commands}
    said = [line for command in commands for line in statements(found[command], command)]
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command_line = "crossdock compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "crossdock compare"
    document = {
        "tool": "crossdock compare",
        "scenario": "crossover",
        "date": when,
        "command": command_line,
        "quick": quick,
        "machine": machine,
        "pinning": pinning,
        "server_cpus": list(server_cpus),
        "generator_cpus": list(generator_cpus),
        "pool_workers": workers,
        "cpu_connections": connections,
        "probe_rate": args.probe_rate,
        "step_s": step,
        "repeat": args.repeat,
        "targets": targets,
        "calibration": {command: [w.as_dict() for w in steps] for command, steps in workloads.items()},
        "rows": rows,
        "crossovers": found,
        "statements": said,
        "runs": runs,
    }
    (out / "compare.json").write_text(json.dumps(document, indent=2) + "\n")
    pinned = f"server CPUs {list(server_cpus)}, generator CPUs {list(generator_cpus)}" if server_cpus else "not pinned"
    images = (
        []
        if args.no_plots
        else [
            plot(rows, command, found[command], out, f"{command.upper()}: {step:g} s per step, median of "
                 f"{args.repeat}; {connections} cpu connections + probe at {args.probe_rate:g}/s; {pinned}")
            for command in commands
        ]
    )  # fmt: skip
    (out / "compare.md").write_text(render_markdown(document, images))
    print("\n".join(said))
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}" + "".join(f", {out / i}" for i in images))
    return 0 if all(row["ok"] for row in rows) else 1


def render_markdown(document: dict[str, Any], images: list[str]) -> str:
    """compare.md of a crossover sweep: the setting, the crossover statements, the plots, the tables."""
    lines = [
        "# crossdock compare: crossover",
        "",
        *(["**--quick: a smoke test of the harness; the figures mean nothing.**", ""] if document["quick"] else []),
        f"- date: {document['date']}",
        f"- command: `{document['command']}`",
        f"- machine: {machine_line(document['machine'])}",
        f"- pinning: {document['pinning']}",
        f"- pool workers: {document['pool_workers']}; {document['cpu_connections']} cpu connections (closed "
        f"loop, one request in flight each) and one probe connection sending PING at {document['probe_rate']:g}/s; "
        f"{document['step_s']:g} s per step; median of {document['repeat']} round(s), targets interleaved",
        "- work per request: microseconds of one core that the command's own function took in-process "
        "(loadtest/calibrate.py), measured before the servers started",
        "",
        "Crossover points:",
        "",
        *(f"- {line}" for line in document["statements"]),
        "",
        *(f"![{name}]({name})" for name in images),
        "",
    ]
    for command in document["calibration"]:
        lines += [f"## {command.upper()}", "", markdown_table(document["rows"], command)]
    return "\n".join(lines)
