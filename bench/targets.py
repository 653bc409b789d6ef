"""Issue 7's performance targets, every row measured side by side: crossdock against its baseline.

    .venv/bin/python bench/targets.py [--runs 5] [--rows inline,pipelined,...] [--quick]
                                      [--json out.json] [--markdown out.md]

Rows (the names --rows takes), as the issue states them:

==============  ===========================================================  ==========================
row             how it is measured                                           target
==============  ===========================================================  ==========================
inline          redis-benchmark -t ping_mbulk -c 50, async+pool vs redis     >= 0.8x redis-server
pipelined       the same with -P 16                                          >= 0.6x
keyspace        redis-benchmark -t set,get -c 50 (one figure per test)       >= 0.75x
connections     redis-benchmark -t ping_mbulk -c 5000                        >= 0.7x, no errors
memory          10,000 idle connections (crossdock loadtest -s hold),        <= 4 KiB per connection
                server RSS growth per connection, vs redis-server
scaling         PRIMES throughput, async+pool vs async+inline, two clients   >= 0.9 x workers that
                per worker                                                   have a free core
responsiveness  PING probe p99 while PRIMES saturate the pool,               <= 2 ms and <= 0.2x
                async+pool vs threaded+inline                                threaded+inline's p99
overhead        PRIMES 10 through the pool vs inline, 1 and 50 connections   1: stated in microseconds;
                                                                             50: >= 0.5x inline (issue 12)
roundtrip       PRIMES 10 through the pool at 1 connection (median round     <= 1.1x the bare executor's
                trip) vs a bare ProcessPoolExecutor submit+result and a raw  (issue 12); the pipe's is
                multiprocessing pipe round trip (bench/stdlib_roundtrip.py)  stated
startup         ``crossdock serve --port 0`` spawned until the first PING    < 1 s
                is answered (pool pre-warmed), vs redis-server
pipelined-      redis-benchmark -t set,get -c 50 -P 16 (issue 14)            >= 0.5x
keyspace
keyspace-p5     redis-benchmark -t set,get -c 50 -P 5 (issue 14; pydis's     >= 0.65x
                setting)
generator-      crossdock loadtest -s ping -c 50 --pipeline 16 against       >= 0.8x redis-benchmark's
pipelined       redis-server vs redis-benchmark -t ping_mbulk -c 50 -P 16    rate
                against the same redis-server (issue 14)
==============  ===========================================================  ==========================

How: each row starts its two sides (crossdock in the row's mode, and the
baseline), then runs them alternately round by round, ``--runs`` rounds (the
side that goes first swaps every round), so drift on the machine hits both
alike. Each figure reports both sides' median and min-max and the ratio of
the medians (crossdock / baseline). Servers live for the whole row, except
for the memory and start-up rows, which start fresh servers every run
(memory freed by an earlier run would hide growth; start-up is the thing
measured).

Pinning (with two or more usable CPUs; the plan is ``crossdock compare``'s):
the server, and its pool workers, on the first half of the CPUs (CPU 0 here),
the generator (redis-benchmark under ``taskset``, or ``crossdock loadtest``
pinned with sched_setaffinity) and this script on the rest (CPU 1), with one
pool worker per server CPU. The scaling row is the exception, because its
workers need cores of their own: the pool has one worker per usable CPU,
worker *i* pinned to CPU *i*; the front end stays on the server CPU and the
generator on its CPU, each sharing a core with a worker (both are nearly idle
at a few hundred sieves a second; the row reports the share of a core each
used). "Workers that have a free core" is the number of distinct CPUs the
workers are pinned to, so the target is computed, not written down.

The counts (requests, connections, seconds) are constants below with their
reasons. ``--quick`` shrinks them to a smoke test of the harness (seconds per
row): its figures mean nothing and the output says so.

Error handling: a run that fails (a server that does not start, a
redis-benchmark error or non-zero exit, a load test with errors or lost
requests) is recorded against its figure, the other runs go on, and the exit
status is 1. A missed target is a measurement, not a failure: exit status 0.
Bad arguments: exit status 2. If the open-file hard limit is too low for a
row's connections, the row is skipped, the reason is printed, and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from loadtest import machine
from loadtest.compare import plan_pinning
from loadtest.config import FD_MARGIN, LoadConfig, ensure_open_files
from loadtest.redisbench import label_of, run_redis_benchmark
from loadtest.runner import run_loadtest
from loadtest.scenarios import PING, parse_scenario
from loadtest.servers import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    RunningServer,
    free_port,
    pin_to,
    redis_command,
    start_crossdock,
    start_redis,
)

ROOT: Final = Path(__file__).resolve().parent.parent

#: Row names in the order of the issue's table.
ROWS: Final = (
    "inline",
    "pipelined",
    "keyspace",
    "connections",
    "memory",
    "scaling",
    "responsiveness",
    "overhead",
    "roundtrip",
    "startup",
    # Issue 14's rows beyond issue 7's table.
    "pipelined-keyspace",
    "keyspace-p5",
    "generator-pipelined",
)

#: The issue asks for medians of at least 5 runs.
DEFAULT_RUNS: Final = 5

#: Most rounds per row: a median of 15 is plenty; more is a soak test.
MAX_RUNS: Final = 15

#: Clients per pool worker in the scaling row: two keep a request queued behind every running
#: one, so no worker idles for a round trip between requests ("enough clients to fill the pool").
SCALING_CLIENTS_PER_WORKER: Final = 2

#: Issue 12's target for PRIMES 10 through the pool where requests can be batched (50 connections):
#: at least half the inline throughput. With one connection nothing can be batched: stated only.
OVERHEAD_BATCH_RATIO: Final = 0.5
OVERHEAD_BATCHABLE_CONNECTIONS: Final = 50

#: Share of the ideal speed-up the scaling row asks for (the issue's 0.9 x workers).
SCALING_EFFICIENCY: Final = 0.9

#: Extra --maxclients headroom for the memory row: the idle connections plus the INFO probes that
#: read the server's memory must all be admitted.
MAXCLIENTS_HEADROOM: Final = 100

#: Seconds between connection attempts while timing start-up: fine enough that the poll adds
#: little to a start-up of ~1 s (and to redis-server's few milliseconds).
STARTUP_POLL: Final = 0.002

#: Seconds one PING may take while timing start-up before the attempt is retried.
STARTUP_PING_TIMEOUT: Final = 2.0

#: crossdock's version of the same command, for the reproduction column and the server logs.
CROSSDOCK_SERVE: Final = "crossdock serve"


@dataclass(frozen=True)
class Scale:
    """The sizes of every row: the issue's (:data:`FULL`) or a smoke test's (:data:`QUICK`)."""

    quick: bool
    #: redis-benchmark -n for the inline row: ~2 s of crossdock at ~100k PING/s.
    inline_requests: int
    #: -n for -P 16: ~3 s of crossdock, ~1 s of redis-server.
    pipelined_requests: int
    #: -n per test (SET, then GET) for the keyspace row.
    keyspace_requests: int
    #: The many-connections row's -c (the issue's 5000) ...
    many_connections: int
    #: ... and its -n: 60 requests per connection, so the run is not all connection set-up.
    many_requests: int
    #: Idle connections held for the memory row (the issue's 10,000).
    idle_connections: int
    #: Seconds the idle connections are held after every one answered (memory is read before).
    hold_seconds: float
    #: Seconds per scaling run, and PRIMES n: ~20 ms of one core, so a request's round trip and
    #: pickling are ~1 % of it and the row measures the workers, not the plumbing.
    scaling_seconds: float
    scaling_work: int
    #: Seconds per responsiveness run and cpu connections: 8, as in docs/benchmarks.md section 3,
    #: where threaded+inline's probe already suffers and async+pool's worker is always busy.
    responsiveness_seconds: float
    responsiveness_connections: int
    #: Seconds per pool-overhead run (each of 1 and 50 connections).
    overhead_seconds: float
    #: Connection counts of the pool-overhead row (the brief's 1 and 50).
    overhead_connections: tuple[int, ...]
    #: Calls timed per run of each stdlib round trip in the round-trip row (bench/stdlib_roundtrip.py).
    roundtrip_calls: int


FULL: Final = Scale(
    quick=False,
    inline_requests=200_000,
    pipelined_requests=1_000_000,
    keyspace_requests=200_000,
    many_connections=5_000,
    many_requests=300_000,
    idle_connections=10_000,
    hold_seconds=1.0,
    scaling_seconds=5.0,
    scaling_work=200_000,
    responsiveness_seconds=5.0,
    responsiveness_connections=8,
    overhead_seconds=3.0,
    overhead_connections=(1, 50),
    roundtrip_calls=2000,
)

#: Tiny counts: every code path runs in a few seconds per row. Not the issue's settings.
QUICK: Final = Scale(
    quick=True,
    inline_requests=5_000,
    pipelined_requests=20_000,
    keyspace_requests=5_000,
    many_connections=200,
    many_requests=5_000,
    idle_connections=200,
    hold_seconds=0.2,
    scaling_seconds=1.0,
    scaling_work=20_000,
    responsiveness_seconds=1.0,
    responsiveness_connections=4,
    overhead_seconds=0.5,
    overhead_connections=(1, 50),
    roundtrip_calls=200,
)


# -- targets and figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A row's target as the issue words it, and the checks it implies (none: the figure is reported)."""

    text: str
    ratio_at_least: float | None = None
    ratio_at_most: float | None = None
    value_at_most: float | None = None

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        """True/False against the checks, None when the target only asks for the figure to be stated."""
        checks = []
        if self.ratio_at_least is not None:
            checks.append(ratio is not None and ratio >= self.ratio_at_least)
        if self.ratio_at_most is not None:
            checks.append(ratio is not None and ratio <= self.ratio_at_most)
        if self.value_at_most is not None:
            checks.append(value is not None and value <= self.value_at_most)
        return all(checks) if checks else None


@dataclass
class Sample:
    """One side's result for one figure in one run."""

    key: str
    value: float | None
    raw: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Figure:
    """One line of the table: both sides' runs, their medians, the ratio and the verdict."""

    key: str
    row: str
    title: str
    command: str
    unit: str
    crossdock_side: str
    baseline_side: str
    target: Target
    note: str = ""
    crossdock: list[Sample] = field(default_factory=list)
    baseline: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, side: int, round_number: int, sample: Sample) -> None:
        (self.crossdock if side == 0 else self.baseline).append(sample)
        name = self.crossdock_side if side == 0 else self.baseline_side
        self.problems.extend(f"round {round_number} {name}: {problem}" for problem in sample.problems)
        self.runs.append(
            {
                "round": round_number,
                "side": "crossdock" if side == 0 else "baseline",
                "server": name,
                "value": sample.value,
                "problems": sample.problems,
                "extra": sample.extra,
                "raw": sample.raw,
            }
        )

    @staticmethod
    def _values(samples: list[Sample]) -> list[float]:
        return [s.value for s in samples if s.value is not None and not s.problems]

    def stats(self, side: int) -> dict[str, Any]:
        values = self._values(self.crossdock if side == 0 else self.baseline)
        if not values:
            return {"values": [], "median": None, "min": None, "max": None}
        return {"values": values, "median": statistics.median(values), "min": min(values), "max": max(values)}

    def extra_median(self, side: int, name: str) -> float | None:
        values = [s.extra[name] for s in (self.crossdock if side == 0 else self.baseline) if name in s.extra]
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        ours, theirs = self.stats(0)["median"], self.stats(1)["median"]
        if ours is None or not theirs:
            return None
        return float(ours / theirs)

    @property
    def met(self) -> bool | None:
        if self.problems:
            return False
        return self.target.met(self.stats(0)["median"], self.ratio)

    def derived(self) -> dict[str, float]:
        """Figures computed from both sides beyond the ratio (the pool overhead's microseconds)."""
        out: dict[str, float] = {}
        ours, theirs = self.extra_median(0, "mean_latency_us"), self.extra_median(1, "mean_latency_us")
        if ours is not None and theirs is not None:
            out["round_trip_us"] = round(ours - theirs, 1)
        ours_rps, theirs_rps = self.stats(0)["median"], self.stats(1)["median"]
        if self.unit == "/s" and ours_rps and theirs_rps and "round_trip_us" in out:
            out["server_us_per_request"] = round(1e6 / ours_rps - 1e6 / theirs_rps, 1)
        for name in ("frontend_core_share", "generator_core_share"):
            value = self.extra_median(0, name)
            if value is not None:
                out[name] = round(value, 3)
        return out

    def verdict(self) -> str:
        if self.problems:
            return "no (failed runs)"
        met = self.met
        if met is None:
            derived = self.derived()
            parts = []
            if "round_trip_us" in derived:
                parts.append(f"mean latency {derived['round_trip_us']:+.1f} us")
            if "server_us_per_request" in derived:
                parts.append(f"server time per request {derived['server_us_per_request']:+.1f} us")
            return "stated: " + "; ".join(parts) if parts else "stated"
        return "yes" if met else "**no**"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "row": self.row,
            "title": self.title,
            "command": self.command,
            "unit": self.unit,
            "crossdock_side": self.crossdock_side,
            "baseline_side": self.baseline_side,
            "target": asdict(self.target),
            "note": self.note,
            "crossdock": self.stats(0),
            "baseline": self.stats(1),
            "ratio": self.ratio,
            "met": self.met,
            "verdict": self.verdict(),
            "derived": self.derived(),
            "problems": self.problems,
            "runs": self.runs,
        }


# -- sides and rows --------------------------------------------------------------------------------


@dataclass
class Side:
    """One side of a row: how to start its server and how to measure it once."""

    name: str
    start: Callable[[], contextlib.AbstractContextManager[RunningServer | None]]
    measure: Callable[[RunningServer | None], list[Sample]]
    fresh: bool = False


@dataclass
class Row:
    name: str
    figures: list[Figure]
    sides: tuple[Side, Side]


@dataclass(frozen=True)
class Context:
    """What every row needs: sizes, rounds, the CPU plan and where progress goes."""

    scale: Scale
    runs: int
    server_cpus: tuple[int, ...]
    generator_cpus: tuple[int, ...]
    usable_cpus: tuple[int, ...]
    pinning: str

    @property
    def workers(self) -> int:
        """Pool workers outside the scaling row: one per server CPU."""
        return max(1, len(self.server_cpus))

    @property
    def processes(self) -> int:
        """crossdock loadtest processes: one per generator CPU."""
        return max(1, len(self.generator_cpus))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _crossdock(ctx: Context, mode: str, cpu: str, workers: int | None = None, extra: Sequence[str] = ()) -> Side:
    name = f"{mode}+{cpu}"
    return Side(name, lambda: start_crossdock(mode, cpu, workers or ctx.workers, ctx.server_cpus, extra), _no_measure)


def _redis(ctx: Context) -> Side:
    return Side("redis-server", lambda: start_redis(ctx.server_cpus), _no_measure)


def _no_measure(server: RunningServer | None) -> list[Sample]:
    raise AssertionError("every side gets its measure before the row runs")


# -- redis-benchmark rows --------------------------------------------------------------------------


def _benchmark_measure(
    ctx: Context, tests: Sequence[str], connections: int, requests: int, pipeline: int, keys: dict[str, str]
) -> Callable[[RunningServer | None], list[Sample]]:
    """A measure that runs redis-benchmark once and turns each test's figure into a sample."""

    def measure(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        run = run_redis_benchmark(server.port, tests, connections, requests, pipeline, ctx.generator_cpus)
        raw = run.as_dict()
        return [Sample(key, run.rps.get(label), raw, list(run.problems)) for label, key in keys.items()]

    return measure


def _benchmark_text(tests: Sequence[str], connections: int, requests: int, pipeline: int) -> str:
    piped = f" -P {pipeline}" if pipeline > 1 else ""
    return f"redis-benchmark -t {','.join(tests)} -c {connections} -n {requests}{piped} -q"


def benchmark_row(
    ctx: Context,
    name: str,
    title: str,
    tests: Sequence[str],
    connections: int,
    requests: int,
    pipeline: int,
    target: Target,
) -> Row:
    """A redis-benchmark row: crossdock async+pool against redis-server, one figure per test."""
    command = _benchmark_text(tests, connections, requests, pipeline)
    keys = {label_of(test): f"{name}.{test}" if len(tests) > 1 else name for test in tests}
    figures = [
        Figure(
            key=key,
            row=name,
            title=f"{title} ({label})" if len(tests) > 1 else title,
            command=command,
            unit="/s",
            crossdock_side="async+pool",
            baseline_side="redis-server",
            target=target,
        )
        for label, key in keys.items()
    ]
    measure = _benchmark_measure(ctx, tests, connections, requests, pipeline, keys)
    ours, theirs = _crossdock(ctx, "async", "pool"), _redis(ctx)
    ours.measure = theirs.measure = measure
    return Row(name, figures, (ours, theirs))


# -- crossdock loadtest rows -----------------------------------------------------------------------


def loadtest(
    ctx: Context,
    port: int,
    scenario: str,
    connections: int,
    duration: float,
    work: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """One ``crossdock loadtest`` run on the generator CPUs: (report without timeline, problems)."""
    config = LoadConfig(
        scenario=parse_scenario(scenario, work=work),
        port=port,
        connections=connections,
        processes=min(ctx.processes, connections),
        duration=duration,
        cpus=ctx.generator_cpus,
    )
    report = run_loadtest(config)
    report.pop("timeline", None)
    return report, [] if report["ok"] else list(report["problems"])


def loadtest_text(scenario: str, connections: int, duration: float, work: int | None = None) -> str:
    worked = f" --work {work}" if work is not None else ""
    return f"crossdock loadtest -s {scenario} -c {connections} -d {duration:g}{worked}"


#: The generator row's connections and pipeline depth: redis-benchmark's -c 50 -P 16, as the pipelined row.
GENERATOR_CONNECTIONS: Final = 50
GENERATOR_PIPELINE: Final = 16


def generator_row(ctx: Context, requests: int) -> Row:
    """The load generator against redis-benchmark, both driving one redis-server (issue 14).

    Here the server is the baseline and the generators are measured: one
    redis-server, pinned as crossdock is in the other rows, serves both sides;
    each generator runs on the generator CPUs (``crossdock loadtest`` in as
    many processes as there are of them, redis-benchmark under ``taskset``)
    with the same connections, pipeline depth and request count.
    """
    connections, pipeline = GENERATOR_CONNECTIONS, GENERATOR_PIPELINE
    figure = Figure(
        key="generator-pipelined",
        row="generator-pipelined",
        title=f"load generator at --pipeline {pipeline} (PING)",
        command=f"crossdock loadtest -s ping -c {connections} -n {requests} --pipeline {pipeline}",
        unit="/s",
        crossdock_side="crossdock loadtest",
        baseline_side="redis-benchmark",
        target=Target(">= 0.8x redis-benchmark's rate against the same redis-server", ratio_at_least=0.8),
        note=f"both against one redis-server on CPU {list(ctx.server_cpus)}; redis-benchmark side: "
        f"{_benchmark_text(['ping_mbulk'], connections, requests, pipeline)}",
    )
    shared = _SharedServer(lambda: start_redis(ctx.server_cpus))

    def ours(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        config = LoadConfig(
            scenario=parse_scenario("ping"),
            port=server.port,
            connections=connections,
            processes=ctx.processes,
            pipeline=pipeline,
            requests=requests,
            cpus=ctx.generator_cpus,
        )
        report = run_loadtest(config)
        report.pop("timeline", None)
        return [Sample(figure.key, report["throughput_rps"], report, [] if report["ok"] else list(report["problems"]))]

    def theirs(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        run = run_redis_benchmark(server.port, ["ping_mbulk"], connections, requests, pipeline, ctx.generator_cpus)
        return [Sample(figure.key, run.rps.get(label_of("ping_mbulk")), run.as_dict(), list(run.problems))]

    sides = (Side("crossdock loadtest", shared.start, ours), Side("redis-benchmark", shared.start, theirs))
    return Row("generator-pipelined", [figure], sides)


class _SharedServer:
    """One server for both sides of a row: started by the first side that enters, stopped when both left."""

    def __init__(self, start: Callable[[], contextlib.AbstractContextManager[RunningServer]]) -> None:
        self._start = start
        self._stack = contextlib.ExitStack()
        self._server: RunningServer | None = None
        self._users = 0

    @contextlib.contextmanager
    def start(self) -> Iterator[RunningServer | None]:
        if self._server is None:
            self._server = self._stack.enter_context(self._start())
        self._users += 1
        try:
            yield self._server
        finally:
            self._users -= 1
            if not self._users:
                self._server = None
                self._stack.close()


def memory_row(ctx: Context) -> Row:
    """Idle connections: server RSS growth per connection, fresh servers every run."""
    count, seconds = ctx.scale.idle_connections, ctx.scale.hold_seconds
    figure = Figure(
        key="memory",
        row="memory",
        title=f"idle connection memory ({count:,} idle)",
        command=loadtest_text("hold", count, seconds),
        unit="B",
        crossdock_side="async+pool",
        baseline_side="redis-server",
        target=Target("<= 4 KiB per connection (Redis: about 5)", value_at_most=4096),
        note="VmRSS of the server process (INFO process_id) before connecting and with every connection "
        "open and answered, growth / connections; a fresh server each run",
    )

    def measure(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        report, problems = loadtest(ctx, server.port, "hold", count, seconds)
        hold = report.get("hold", {})
        value = hold.get("bytes_per_connection")
        if value is None:
            problems.append(f"no memory figure: {hold.get('rss_source', 'no hold section')}")
        return [Sample("memory", value, report, problems)]

    extra = ("--maxclients", str(count + MAXCLIENTS_HEADROOM))
    ours, theirs = _crossdock(ctx, "async", "pool", extra=extra), _redis(ctx)
    ours.measure = theirs.measure = measure
    ours.fresh = theirs.fresh = True
    return Row("memory", [figure], (ours, theirs))


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process from /proc, in seconds (None if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (the load generator's processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def scaling_plan(ctx: Context) -> tuple[int, dict[int, int], int]:
    """(pool workers, worker index -> CPU, workers that have a free core) for the scaling row."""
    cpus = ctx.usable_cpus or (0,)
    workers = len(cpus)
    placement = {index: cpus[index % len(cpus)] for index in range(workers)}
    return workers, placement, len(set(placement.values()))


def scaling_row(ctx: Context) -> Row:
    """PRIMES throughput with the pool (one worker per core) against the same work inline."""
    workers, placement, free = scaling_plan(ctx)
    clients = SCALING_CLIENTS_PER_WORKER * workers
    work, seconds = ctx.scale.scaling_work, ctx.scale.scaling_seconds
    factor = round(SCALING_EFFICIENCY * free, 3)
    figure = Figure(
        key="scaling",
        row="scaling",
        title=f"cpu scaling ({workers} workers)",
        command=loadtest_text("primes", clients, seconds, work),
        unit="/s",
        crossdock_side=f"async+pool, {workers} workers",
        baseline_side="async+inline",
        target=Target(
            f">= {SCALING_EFFICIENCY:g} x {free} (workers that have a free core) = {factor:g}x async+inline",
            ratio_at_least=factor,
        ),
        note=(
            f"pool workers pinned one per CPU ({', '.join(f'worker {i} -> CPU {c}' for i, c in placement.items())}); "
            f"front end on CPU {list(ctx.server_cpus)}, generator on CPU {list(ctx.generator_cpus)}, each sharing "
            f"a core with a worker; async+inline on CPU {list(ctx.server_cpus)}; {clients} clients on both sides"
        ),
    )

    affinity: dict[int, list[int]] = {}  # worker pid -> CPUs, read back after pinning, for the JSON

    @contextlib.contextmanager
    def start_pool() -> Iterator[RunningServer]:
        with start_crossdock("async", "pool", workers, ctx.server_cpus) as server:
            listed = (server.event("pool_ready") or {}).get("pids")
            pids = sorted(int(pid) for pid in listed) if isinstance(listed, list) else []
            if len(pids) != workers:
                raise RuntimeError(f"expected {workers} worker pids in the pool_ready log line, got {listed}")
            for index, pid in enumerate(pids):
                os.sched_setaffinity(pid, {placement[index]})
                affinity[pid] = sorted(os.sched_getaffinity(pid))
            yield server

    def measure(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        front_before, gen_before, wall = cpu_seconds(server.proc.pid), children_cpu_seconds(), time.monotonic()
        report, problems = loadtest(ctx, server.port, "primes", clients, seconds, work)
        front_after, gen_after, wall = cpu_seconds(server.proc.pid), children_cpu_seconds(), time.monotonic() - wall
        extra: dict[str, float] = {"generator_core_share": (gen_after - gen_before) / wall}
        if front_before is not None and front_after is not None:
            extra["frontend_core_share"] = (front_after - front_before) / wall
        report["worker_affinity"] = dict(affinity)
        return [Sample("scaling", report["throughput_rps"], report, problems, extra)]

    ours = Side(f"async+pool x{workers}", start_pool, measure)
    theirs = _crossdock(ctx, "async", "inline")
    theirs.measure = measure
    return Row("scaling", [figure], (ours, theirs))


def responsiveness_row(ctx: Context) -> Row:
    """The probe's PING p99 while every other connection keeps a PRIMES in flight."""
    connections, seconds = ctx.scale.responsiveness_connections, ctx.scale.responsiveness_seconds
    figure = Figure(
        key="responsiveness",
        row="responsiveness",
        title=f"responsiveness (probe PING p99, {connections} cpu clients)",
        command=loadtest_text("responsiveness", connections, seconds),
        unit="ms",
        crossdock_side="async+pool",
        baseline_side="threaded+inline",
        target=Target("async+pool <= 2 ms and <= 0.2x threaded+inline's p99", ratio_at_most=0.2, value_at_most=2.0),
        note="one probe connection sends PING every 10 ms (open loop, latency from the scheduled time) while "
        "the others send PRIMES 100000 in a closed loop; server and its pool worker share the server CPU",
    )

    def measure(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        report, problems = loadtest(ctx, server.port, "responsiveness", connections, seconds)
        probe = report.get("probe", {})
        return [Sample("responsiveness", probe.get("p99"), report, problems)]

    ours, theirs = _crossdock(ctx, "async", "pool"), _crossdock(ctx, "threaded", "inline")
    ours.measure = theirs.measure = measure
    return Row("responsiveness", [figure], (ours, theirs))


def overhead_row(ctx: Context) -> Row:
    """A trivial cpu command (PRIMES 10) through the pool against the same command inline."""
    seconds, counts = ctx.scale.overhead_seconds, ctx.scale.overhead_connections
    figures = [
        Figure(
            key=f"overhead.{count}",
            row="overhead",
            title=f"pool overhead (PRIMES 10, {count} connection{'s' if count > 1 else ''})",
            command=loadtest_text("primes", count, seconds, 10),
            unit="/s",
            crossdock_side="async+pool",
            baseline_side="async+inline",
            target=(
                Target(
                    f">= {OVERHEAD_BATCH_RATIO:g}x inline throughput (issue 12)", ratio_at_least=OVERHEAD_BATCH_RATIO
                )
                if count >= OVERHEAD_BATCHABLE_CONNECTIONS
                else Target("the per-request round trip stated in microseconds, and cut where it can")
            ),
            note="ratio = throughput through the pool / inline; mean latency = closed-loop mean latency through "
            "the pool minus inline (with 1 connection the per-request round trip; with 50 it includes queueing "
            "behind the other connections); server time per request = 1/throughput through the pool minus inline",
        )
        for count in counts
    ]

    def measure(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        samples = []
        for count in counts:
            report, problems = loadtest(ctx, server.port, "primes", count, seconds, 10)
            mean_us = report["latency_ms"]["mean"] * 1000.0
            samples.append(
                Sample(f"overhead.{count}", report["throughput_rps"], report, problems, {"mean_latency_us": mean_us})
            )
        return samples

    ours, theirs = _crossdock(ctx, "async", "pool"), _crossdock(ctx, "async", "inline")
    ours.measure = theirs.measure = measure
    return Row("overhead", figures, (ours, theirs))


def roundtrip_row(ctx: Context) -> Row:
    """Issue 12's 1-connection round trip: PRIMES 10 through crossdock's pool beside the stdlib's floor.

    crossdock's side keeps two servers, async+pool and async+inline, and measures both every run
    (1 connection, closed loop): the round trip through the pool, and the pool's hop (through the
    pool minus inline, the same run), which is what crossdock adds around its executor without the
    TCP and RESP round trip that the stdlib side does not have. The stdlib side is
    bench/stdlib_roundtrip.py in a fresh process pinned to the server's CPUs (its pool worker and
    pipe child inherit them), so caller and worker share a core as crossdock's front end and pool
    worker do. Every figure is a median round trip of one run; the table gives the median of runs.
    """
    seconds, calls = ctx.scale.overhead_seconds, ctx.scale.roundtrip_calls
    command = loadtest_text("primes", 1, seconds, 10)
    stdlib = f"bench/stdlib_roundtrip.py --calls {calls} --json"
    setting = (
        "crossdock: closed loop, 1 connection, generator on the generator CPUs, server and its one worker on the "
        f"server CPUs; stdlib: `{stdlib}` pinned to the server CPUs, {calls} calls timed one by one after a "
        "warm-up, forkserver as crossdock's pool; mean latency = difference of the mean round trips"
    )
    executor = "bare ProcessPoolExecutor submit+result"
    figures = [
        Figure(
            key="roundtrip.executor",
            row="roundtrip",
            title="1-connection round trip (PRIMES 10 through the pool, end to end)",
            command=command,
            unit="us",
            crossdock_side="async+pool",
            baseline_side=executor,
            target=Target("crossdock adds at most 10 % to the bare executor's round trip", ratio_at_most=1.1),
            note=f"median round trip per run, client to client over TCP; {setting}",
        ),
        Figure(
            key="roundtrip.hop",
            row="roundtrip",
            title="1-connection pool hop (PRIMES 10 through the pool minus inline, same run)",
            command=command,
            unit="us",
            crossdock_side="async+pool minus async+inline",
            baseline_side=executor,
            target=Target("crossdock adds at most 10 % to the bare executor's round trip", ratio_at_most=1.1),
            note="per run: median round trip through the pool minus the median inline round trip, measured "
            "back to back, so the TCP and RESP round trip (which the bare executor does not have) cancels",
        ),
        Figure(
            key="roundtrip.pipe",
            row="roundtrip",
            title="1-connection round trip against a raw pipe",
            command=command,
            unit="us",
            crossdock_side="async+pool",
            baseline_side="raw multiprocessing pipe send+recv",
            target=Target("stated: the floor of any process hop"),
            note="the same crossdock runs as the first row; the pipe child answers count_primes(10)",
        ),
    ]
    inline_port: list[int] = []

    @contextlib.contextmanager
    def start_both() -> Iterator[RunningServer]:
        with (
            start_crossdock("async", "pool", ctx.workers, ctx.server_cpus) as pool,
            start_crossdock("async", "inline", ctx.workers, ctx.server_cpus) as inline,
        ):
            inline_port[:] = [inline.port]
            yield pool

    def ours(server: RunningServer | None) -> list[Sample]:
        assert server is not None
        report, problems = loadtest(ctx, server.port, "primes", 1, seconds, 10)
        inline, inline_problems = loadtest(ctx, inline_port[0], "primes", 1, seconds, 10)
        pool_median, pool_mean = report["latency_ms"]["p50"] * 1000.0, report["latency_ms"]["mean"] * 1000.0
        inline_median, inline_mean = inline["latency_ms"]["p50"] * 1000.0, inline["latency_ms"]["mean"] * 1000.0
        both = {"pool": report, "inline": inline}
        trouble = [*problems, *(f"inline: {p}" for p in inline_problems)]
        return [
            Sample("roundtrip.executor", pool_median, report, list(problems), {"mean_latency_us": pool_mean}),
            Sample(
                "roundtrip.hop",
                pool_median - inline_median,
                both,
                trouble,
                {"mean_latency_us": pool_mean - inline_mean, "inline_median_us": inline_median},
            ),
            Sample("roundtrip.pipe", pool_median, report, list(problems), {"mean_latency_us": pool_mean}),
        ]

    def theirs(_: RunningServer | None) -> list[Sample]:
        argv = [sys.executable, str(ROOT / "bench" / "stdlib_roundtrip.py"), "--calls", str(calls), "--json"]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT + calls,  # generous: a call is well under a millisecond
                preexec_fn=(lambda: pin_to(ctx.server_cpus)) if ctx.server_cpus else None,
            )
            result = json.loads(done.stdout)
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            return [Sample(f.key, None, {}, [f"{stdlib}: {exc}"]) for f in figures]
        executor_median, executor_mean = result["executor"]["median_us"], result["executor"]["mean_us"]
        return [
            Sample("roundtrip.executor", executor_median, result, [], {"mean_latency_us": executor_mean}),
            Sample("roundtrip.hop", executor_median, result, [], {"mean_latency_us": executor_mean}),
            Sample(
                "roundtrip.pipe",
                result["pipe"]["median_us"],
                result,
                [],
                {"mean_latency_us": result["pipe"]["mean_us"]},
            ),
        ]

    sides = (
        Side("async+pool and async+inline", start_both, ours),
        Side("stdlib, pinned like the server", contextlib.nullcontext, theirs, fresh=True),
    )
    return Row("roundtrip", figures, sides)


# -- start-up --------------------------------------------------------------------------------------


def crossdock_executable() -> list[str]:
    """The ``crossdock`` console script next to this interpreter (``python -m server`` if absent)."""
    script = Path(sys.executable).with_name("crossdock")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server"]


def wait_for_pong(port: int, deadline: float) -> None:
    """Connect and PING until ``+PONG`` comes back.

    Error handling: refused or reset connections and other replies are retried
    every :data:`STARTUP_POLL` seconds; raises TimeoutError at ``deadline``.
    """
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=STARTUP_PING_TIMEOUT) as sock:
                sock.sendall(PING)
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                if reply.startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no PONG from port {port} within {START_TIMEOUT:g} s")
        time.sleep(STARTUP_POLL)


def startup_row(ctx: Context) -> Row:
    """Spawn to first PONG: ``crossdock serve --port 0`` (pool pre-warmed) against redis-server."""
    figure = Figure(
        key="startup",
        row="startup",
        title="start-up (spawn until the first PING is answered)",
        command=f"{CROSSDOCK_SERVE} --port 0",
        unit="s",
        crossdock_side="async+pool",
        baseline_side="redis-server",
        target=Target("< 1 s", value_at_most=1.0),
        note=f"server pinned to CPU {list(ctx.server_cpus)}, so the pool has its default size for that "
        "affinity; the port comes from the JSON 'started' line, then PING is polled every "
        f"{STARTUP_POLL * 1000:g} ms",
    )

    def ours(_: RunningServer | None) -> list[Sample]:
        command = [*crossdock_executable(), "serve", "--port", "0", "--log-format", "json"]
        began = time.monotonic()
        try:
            server = RunningServer("crossdock", command, ctx.server_cpus, None)
        except RuntimeError as exc:
            return [Sample("startup", None, {"command": command}, [str(exc)])]
        with server:
            listening = time.monotonic() - began
            try:
                wait_for_pong(server.port, began + START_TIMEOUT)
            except TimeoutError as exc:
                return [Sample("startup", None, {"command": command}, [str(exc)])]
            elapsed = time.monotonic() - began
            started = server.event("started") or {}
        raw = {"command": command, "started_line_s": round(listening, 4), "workers": started.get("workers")}
        return [Sample("startup", elapsed, raw)]

    def theirs(_: RunningServer | None) -> list[Sample]:
        try:
            command = redis_command(free_port())
        except RuntimeError as exc:
            return [Sample("startup", None, {}, [str(exc)])]
        port = int(command[command.index("--port") + 1])
        began = time.monotonic()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: pin_to(ctx.server_cpus)) if ctx.server_cpus else None,
        )
        try:
            wait_for_pong(port, began + START_TIMEOUT)
            elapsed: float | None = time.monotonic() - began
            problems: list[str] = []
        except TimeoutError as exc:
            elapsed, problems = None, [str(exc)]
        finally:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        return [Sample("startup", elapsed, {"command": command}, problems)]

    nothing = contextlib.nullcontext
    sides = (Side("async+pool", nothing, ours, fresh=True), Side("redis-server", nothing, theirs, fresh=True))
    return Row("startup", [figure], sides)


# -- the plan and the run --------------------------------------------------------------------------


def build_row(ctx: Context, name: str) -> Row:
    """The row called ``name`` at this context's scale."""
    s = ctx.scale
    if name == "inline":
        target = Target(">= 0.8x Redis", ratio_at_least=0.8)
        return benchmark_row(ctx, name, "inline throughput", ["ping_mbulk"], 50, s.inline_requests, 1, target)
    if name == "pipelined":
        target = Target(">= 0.6x Redis", ratio_at_least=0.6)
        return benchmark_row(ctx, name, "pipelined throughput", ["ping_mbulk"], 50, s.pipelined_requests, 16, target)
    if name == "keyspace":
        target = Target(">= 0.75x Redis", ratio_at_least=0.75)
        return benchmark_row(ctx, name, "keyspace", ["set", "get"], 50, s.keyspace_requests, 1, target)
    if name == "pipelined-keyspace":  # issue 14: -P 16 SET and GET
        target = Target(">= 0.5x Redis", ratio_at_least=0.5)
        requests = s.pipelined_requests // 2  # per test: ~2 s of crossdock each
        return benchmark_row(ctx, name, "pipelined keyspace", ["set", "get"], 50, requests, 16, target)
    if name == "keyspace-p5":  # issue 14: -P 5 SET and GET, where pydis published 0.58x / 0.59x
        target = Target(">= 0.65x Redis", ratio_at_least=0.65)
        requests = s.keyspace_requests * 2  # per test: ~2 s of crossdock each
        return benchmark_row(ctx, name, "keyspace at -P 5", ["set", "get"], 50, requests, 5, target)
    if name == "generator-pipelined":
        return generator_row(ctx, s.pipelined_requests)
    if name == "connections":
        target = Target(">= 0.7x Redis, no errors", ratio_at_least=0.7)
        count = s.many_connections
        return benchmark_row(
            ctx, name, f"many connections ({count:,})", ["ping_mbulk"], count, s.many_requests, 1, target
        )
    if name == "memory":
        return memory_row(ctx)
    if name == "scaling":
        return scaling_row(ctx)
    if name == "responsiveness":
        return responsiveness_row(ctx)
    if name == "overhead":
        return overhead_row(ctx)
    if name == "roundtrip":
        return roundtrip_row(ctx)
    if name == "startup":
        return startup_row(ctx)
    raise ValueError(f"unknown row {name!r}")


def files_needed(ctx: Context, name: str) -> int:
    """Open files one process of this row needs (the generator's or the server's connections)."""
    if name == "connections":
        return ctx.scale.many_connections + FD_MARGIN
    if name == "memory":
        return ctx.scale.idle_connections + MAXCLIENTS_HEADROOM + FD_MARGIN
    return 0


def run_row(ctx: Context, row: Row) -> None:
    """Every round of a row, the two sides alternating; results land in the row's figures."""
    figures = {figure.key: figure for figure in row.figures}

    def record(side: int, round_number: int, samples: list[Sample]) -> None:
        for sample in samples:
            figure = figures[sample.key]
            figure.add(side, round_number, sample)
            shown = fmt(sample.value, figure.unit)
            trouble = f"  PROBLEMS: {sample.problems}" if sample.problems else ""
            log(f"  {row.name} round {round_number} {row.sides[side].name:>20}: {figure.title}: {shown}{trouble}")

    def fail(side: int, round_number: int, error: Exception) -> None:
        record(side, round_number, [Sample(key, None, {}, [f"{type(error).__name__}: {error}"]) for key in figures])

    with contextlib.ExitStack() as stack:
        servers: list[RunningServer | None] = [None, None]
        failed: list[Exception | None] = [None, None]
        for index, side in enumerate(row.sides):
            if not side.fresh:
                try:
                    servers[index] = stack.enter_context(side.start())
                except (RuntimeError, OSError) as exc:
                    failed[index] = exc
        for round_number in range(1, ctx.runs + 1):
            order = (0, 1) if round_number % 2 else (1, 0)
            for index in order:
                side = row.sides[index]
                error = failed[index]
                if error is not None:
                    fail(index, round_number, error)
                    continue
                try:
                    if side.fresh:
                        with side.start() as server:
                            samples = side.measure(server)
                    else:
                        samples = side.measure(servers[index])
                except (RuntimeError, OSError, ValueError) as exc:
                    fail(index, round_number, exc)
                    continue
                record(index, round_number, samples)


# -- the machine -----------------------------------------------------------------------------------


describe_machine = machine.describe_machine


# -- output ----------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "us":
        return f"{value:,.1f} us"
    return f"{value:g} {unit}"


def cell(figure: Figure, side: int) -> str:
    stats = figure.stats(side)
    if stats["median"] is None:
        return "-"
    text = fmt(stats["median"], figure.unit)
    if len(stats["values"]) > 1:
        text += f" ({fmt(stats['min'], figure.unit)}-{fmt(stats['max'], figure.unit)})"
    return text


def ratio_text(figure: Figure) -> str:
    return "-" if figure.ratio is None else f"{figure.ratio:.2f}x"


def table_rows(figures: list[Figure]) -> list[list[str]]:
    return [
        [
            f"{f.title}: {f.crossdock_side} vs {f.baseline_side}",
            f.command,
            cell(f, 0),
            cell(f, 1),
            ratio_text(f),
            f.target.text,
            f.verdict(),
        ]
        for f in figures
    ]


HEADERS: Final = ("figure", "command", "crossdock median (min-max)", "baseline median (min-max)", "ratio", "target")


def markdown(document: dict[str, Any], figures: list[Figure]) -> str:
    """The docs/benchmarks.md text of one run: the setting, the table, the notes."""
    machine = document["machine"]
    lines = [f"### Run of {document['date']}", ""]
    if document["quick"]:
        lines += ["**--quick: tiny counts, a smoke test of the harness, not the issue's settings.**", ""]
    lines += [
        f"- command: `{document['command']}`",
        f"- machine: {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory']}, Linux "
        f"{machine['kernel']}, Python {machine['python']}, uvloop {machine['uvloop']}, "
        f"{machine['redis_server']}, {machine['redis_benchmark']}, crossdock {machine['crossdock']}",
        f"- load average at start: {' '.join(map(str, machine['load_average']))}",
        f"- pinning: {document['pinning']}; pool workers {document['pool_workers']} (scaling row: see its note)",
        f"- each figure: median of {document['runs']} run(s) per side, crossdock and baseline alternated round "
        "by round (min-max in brackets); ratio = crossdock median / baseline median",
        "",
        "| " + " | ".join((*HEADERS, "met?")) + " |",
        "|" + "---|" * (len(HEADERS) + 1),
    ]
    for cells in table_rows(figures):
        cells[1] = f"`{cells[1]}`"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Notes:", ""]
    for figure in figures:
        derived = figure.derived()
        extras = []
        if "round_trip_us" in derived:
            extras.append(f"mean latency {derived['round_trip_us']:+.1f} us")
        if "server_us_per_request" in derived:
            extras.append(f"server time per request {derived['server_us_per_request']:+.1f} us")
        for name, label in (("frontend_core_share", "front end"), ("generator_core_share", "generator")):
            if name in derived:
                extras.append(f"{label} used {derived[name]:.1%} of a core")
        text = "; ".join(filter(None, [figure.note, *extras]))
        if text:
            lines.append(f"- {figure.title}: {text}.")
        for problem in figure.problems[:5]:
            lines.append(f"- {figure.title}: FAILED RUN: {problem}")
    for note in document["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def show(figures: list[Figure]) -> None:
    """The table on stdout: rich on a terminal, plain lines otherwise."""
    rows = table_rows(figures)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="issue 7 targets", show_lines=True)
        for header in (*HEADERS, "met?"):
            table.add_column(header)
        for cells in rows:
            table.add_row(*cells)
        Console().print(table)
        return
    for cells in rows:
        print(" | ".join(cells))


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="rows: " + ", ".join(ROWS),
    )
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"rounds per row (default {DEFAULT_RUNS})")
    parser.add_argument("--rows", default="all", help="comma-separated rows, or all (default)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test of the harness")
    parser.add_argument("--json", metavar="PATH", help="write every raw run and the summary as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the docs/benchmarks.md section text")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(ROWS) if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        print(f"targets: unknown row(s) {unknown}: use {', '.join(ROWS)} or all", file=sys.stderr)
        return 2
    if not 1 <= args.runs <= MAX_RUNS:
        print(f"targets: --runs must be 1..{MAX_RUNS}", file=sys.stderr)
        return 2

    server_cpus, generator_cpus, pinning = plan_pinning(
        argparse.Namespace(no_pin=False, server_cpus=None, generator_cpus=None)
    )
    ctx = Context(
        scale=QUICK if args.quick else FULL,
        runs=args.runs,
        server_cpus=server_cpus,
        generator_cpus=generator_cpus,
        usable_cpus=tuple(sorted(os.sched_getaffinity(0))),
        pinning=(
            f"{pinning}; redis-benchmark under taskset -c {','.join(map(str, generator_cpus))}; "
            "this script on the generator CPUs too"
            if generator_cpus
            else pinning
        ),
    )
    pin_to(generator_cpus)  # the harness's own polling stays off the server's core
    when = datetime.datetime.now(datetime.UTC)
    document: dict[str, Any] = {
        "tool": "bench/targets.py",
        "date": when.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/targets.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "runs": args.runs,
        "machine": describe_machine(),
        "pinning": ctx.pinning,
        "server_cpus": list(server_cpus),
        "generator_cpus": list(generator_cpus),
        "pool_workers": ctx.workers,
        "scale": asdict(ctx.scale),
        "notes": [],
    }
    log(f"targets: {ctx.pinning}; pool workers {ctx.workers}; {args.runs} run(s) per side; rows {', '.join(names)}")
    if args.quick:
        log("targets: --quick: tiny counts, a smoke test of the harness; the figures mean nothing")

    figures: list[Figure] = []
    for name in names:
        row = build_row(ctx, name)
        figures.extend(row.figures)
        needed = files_needed(ctx, name)
        if needed:
            try:
                ensure_open_files(needed)
            except ValueError as exc:
                message = f"row {name} skipped: {exc} (servers and generators inherit this script's limit)"
                log(f"targets: {message}")
                for figure in row.figures:
                    figure.problems.append(message)
                continue
        log(f"targets: row {name}")
        run_row(ctx, row)

    document["figures"] = [figure.as_dict() for figure in figures]
    document["ok"] = not any(figure.problems for figure in figures)
    show(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        log(f"targets: wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(document, figures))
        log(f"targets: wrote {args.markdown}")
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
