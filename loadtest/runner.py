"""The parent side of a run: spawn the workers, start them together, merge what they report.

:func:`run_loadtest` is the whole run as a function (``crossdock loadtest``
and ``crossdock compare`` both call it): it validates the config, spawns
``processes`` workers (multiprocessing *spawn*: no fork of a process that may
hold threads or a loop), waits until every worker has its connections open,
gives them one common start instant, collects their per-interval counters and
encoded histograms, merges the histograms with HdrHistogram's
``decode_and_add``, and returns the report as a plain dict (the ``--json``
document).

Error handling: bad settings raise ValueError before anything starts. Once
workers run, nothing raises: failures, error replies, lost requests and
crashed workers are all recorded in the report, and ``report["ok"]`` is false
if any were seen. Ctrl-C stops the workers cleanly (they drain and report);
a second Ctrl-C abandons them.
"""

from __future__ import annotations

import datetime
import ipaddress
import multiprocessing
import queue as queue_module
import socket
import time
from collections.abc import Callable
from typing import Any, Final

from hdrh.histogram import HdrHistogram

from loadtest import histogram
from loadtest.config import LoadConfig
from loadtest.engine import CONNECT_CONCURRENCY, DRAIN_TIMEOUT, GO_TIMEOUT, WorkerPlan, split, worker_main
from loadtest.scenarios import CPU_COMMANDS, PROBE_LABEL
from loadtest.serverinfo import InfoProbe, describe_server

#: Nanoseconds between the "go" signal and the common start instant, so every worker is awake
#: and waiting when the clock starts (waking a process from an Event wait takes well under 10 ms).
START_DELAY_NS: Final = 50_000_000

#: Seconds the hold scenario lets the server settle (allocate per-connection state, finish
#: accepting) after every connection answered its PING, before reading the server's memory.
HOLD_SETTLE: Final = 0.5

#: Shortest final partial interval, as a fraction of --interval, that gets a rate on the last progress line.
#: A tail of a few microseconds divides a handful of replies by almost nothing; a tenth of an interval
#: (25 ms at the default 0.25 s) holds enough replies for a rate in the same units as the other lines.
MIN_TAIL_FRACTION: Final = 0.1

#: Seconds granted to worker start-up (interpreter spawn, imports) before connecting begins.
SPAWN_ALLOWANCE: Final = 30.0

#: Seconds to wait for a worker process to exit after its "done" before it is terminated.
JOIN_TIMEOUT: Final = 10.0

#: Seconds a single wait on the result queue lasts; bounds how late Ctrl-C and progress are seen.
QUEUE_POLL: Final = 0.1

#: Keys of the counters workers send; summed over workers for the report.
SUMMED: Final = ("sent", "received", "lost", "unsent", "opened", "cycles")

#: A progress sink: called with a snapshot dict once per interval and once at the end.
ProgressCallback = Callable[[dict[str, Any]], None]


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is loopback."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos)


def plan_workers(config: LoadConfig) -> list[WorkerPlan]:
    """Split connections, rate and request budget over the worker processes.

    Never more processes than connections. Open-loop timetables are offset by
    ``index / rate`` so the processes' requests interleave evenly instead of
    arriving in bursts of ``processes`` at once.
    """
    processes = min(config.processes, config.connections)
    shares = split(config.connections, processes)
    budgets: list[int | None] = (
        list(split(config.requests, processes)) if config.requests is not None else [None] * processes
    )
    plans = []
    for index in range(processes):
        rate = config.rate / processes if config.rate is not None else None
        phase = int(index * 1e9 / config.rate) if config.rate is not None else 0
        probe = config.scenario.kind == "responsiveness" and index == 0
        plans.append(WorkerPlan(index, shares[index], rate, phase, budgets[index], probe))
    return plans


class Aggregate:
    """Everything the parent knows so far: latest counters per worker, merged histograms."""

    def __init__(self, labels: list[str], workers: int) -> None:
        self.labels = labels
        self.counters: list[dict[str, Any]] = [{} for _ in range(workers)]
        self.totals: list[HdrHistogram] = [histogram.new_histogram() for _ in labels]
        self.interval: list[HdrHistogram] = [histogram.new_histogram() for _ in labels]
        self.crashes: list[str] = []

    def add(self, index: int, counters: dict[str, Any], encoded: list[bytes]) -> None:
        self.counters[index] = counters
        for label_id, blob in enumerate(encoded):
            if blob:
                self.totals[label_id].decode_and_add(blob)
                self.interval[label_id].decode_and_add(blob)

    def total(self, key: str) -> int:
        return sum(int(c.get(key, 0)) for c in self.counters)

    def kinds(self, key: str) -> dict[str, int]:
        merged: dict[str, int] = {}
        for counters in self.counters:
            for kind, count in counters.get(key, {}).items():
                merged[kind] = merged.get(kind, 0) + count
        return merged

    def merged(self, hists: list[HdrHistogram], probe: bool = False) -> HdrHistogram:
        """All labels but the probe merged (or only the probe)."""
        out = histogram.new_histogram()
        for label, hist in zip(self.labels, hists, strict=True):
            if (label == PROBE_LABEL) == probe and hist.get_total_count():
                out.add(hist)
        return out


def _open_hold_probe(config: LoadConfig, hold: dict[str, Any], local: bool) -> InfoProbe | None:
    """The hold scenario's INFO connection, opened before the held ones so it is never refused at maxclients.

    Records the server's memory before the connections open in ``hold``.
    Error handling: raises ValueError (a usage message) when the server's
    maxclients leaves no room for ``--connections`` beside the probe and the
    clients already connected; a server that cannot be asked leaves the
    memory figures out of the report.
    """
    try:
        probe = InfoProbe.open(config.host, config.port)
        info = probe.info()
    except (OSError, ValueError) as exc:
        hold["rss_before_bytes"], hold["rss_source"] = None, f"unavailable ({exc})"
        return None
    maxclients, connected = info.get("maxclients", ""), info.get("connected_clients", "")
    if maxclients.isdigit() and connected.isdigit() and int(connected) + config.connections > int(maxclients):
        probe.close()
        room = int(maxclients) - int(connected)
        raise ValueError(
            f"--connections {config.connections}: the server allows {maxclients} clients (maxclients) and "
            f"{connected} are connected (this run's INFO probe included), so at most {room} more fit; lower "
            f"--connections or start the server with --maxclients {int(connected) + config.connections}"
        )
    hold["rss_before_bytes"], hold["rss_source"] = probe.rss(local)
    return probe


def run_loadtest(config: LoadConfig, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run one load test as configured and return its report. See the module docstring."""
    config.validate()
    plans = plan_workers(config)
    scenario = config.scenario
    local = is_loopback(config.host)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    server = describe_server(config.host, config.port)
    hold: dict[str, Any] = {}
    probe = _open_hold_probe(config, hold, local) if scenario.kind == "hold" else None

    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    go, stop = context.Event(), context.Event()
    start_ns = context.Value("q", 0)
    procs = [
        context.Process(
            target=worker_main,
            args=(config, plan, results, go, stop, start_ns),
            name=f"loadtest-{plan.index}",
        )
        for plan in plans
    ]
    aggregate = Aggregate(scenario.labels, len(plans))
    timeline: list[dict[str, Any]] = []
    t0 = 0
    try:
        for proc in procs:
            proc.start()
        setup_budget = SPAWN_ALLOWANCE + config.connect_timeout * (
            1 + max(plan.connections for plan in plans) / CONNECT_CONCURRENCY
        )
        ready = _collect(results, procs, aggregate, {"ready"}, min(setup_budget, GO_TIMEOUT), stop, None)
        if ready and probe is not None:
            time.sleep(HOLD_SETTLE)
            hold["rss_with_connections_bytes"], _ = probe.rss(local)
        t0 = time.monotonic_ns() + START_DELAY_NS
        start_ns.value = t0
        if not ready:
            stop.set()
        go.set()
        run_budget = config.duration + DRAIN_TIMEOUT + config.connect_timeout + SPAWN_ALLOWANCE
        reporter = _Reporter(aggregate, config, t0, progress, timeline)
        _collect(results, procs, aggregate, {"done"}, run_budget, stop, reporter)
        reporter.maybe_report(force=True)  # the last partial interval (and a line even for short runs)
    finally:
        if probe is not None:
            probe.close()
        stop.set()
        go.set()
        for proc in procs:
            if proc.pid is None:  # never started
                continue
            proc.join(JOIN_TIMEOUT)
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_TIMEOUT)
                aggregate.crashes.append(f"{proc.name} did not exit and was terminated")
        results.close()
    report = build_report(config, aggregate, plans, t0, started_at, server, hold, local)
    report["timeline"] = timeline
    if progress is not None:
        progress({"final": True, "report": report})
    return report


def _collect(
    results: Any,
    procs: list[Any],
    aggregate: Aggregate,
    wanted: set[str],
    budget: float,
    stop: Any,
    reporter: _Reporter | None,
) -> bool:
    """Read worker messages until every worker sent one of ``wanted`` (True) or trouble (False).

    Trouble is a crash, a worker that died silently, or ``budget`` seconds
    passing. Ctrl-C sets ``stop`` and keeps collecting so workers can drain
    and report; a second Ctrl-C propagates.
    """
    pending = {index for index in range(len(procs))}
    deadline = time.monotonic() + budget
    interrupted = False
    while pending:
        try:
            if time.monotonic() > deadline:
                aggregate.crashes.append(f"workers {sorted(pending)} sent no {'/'.join(wanted)} in {budget:.0f} s")
                return False
            try:
                message = results.get(timeout=QUEUE_POLL)
            except queue_module.Empty:
                for index in list(pending):
                    if not procs[index].is_alive():
                        aggregate.crashes.append(f"worker {index} exited with code {procs[index].exitcode}")
                        pending.discard(index)
                if reporter is not None:
                    reporter.maybe_report()
                continue
            kind, index = message[0], message[1]
            if kind == "crash":
                aggregate.crashes.append(f"worker {index} crashed:\n{message[2]}")
                pending.discard(index)
                continue
            if kind in ("tick", "done"):
                aggregate.add(index, message[2], message[3])
            elif kind == "ready":
                aggregate.counters[index] = message[2]
            if kind in wanted:
                pending.discard(index)
            if reporter is not None:
                reporter.maybe_report()
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            stop.set()
            deadline = min(deadline, time.monotonic() + DRAIN_TIMEOUT + JOIN_TIMEOUT)
    return not aggregate.crashes


class _Reporter:
    """Turns the aggregate into one progress snapshot per interval."""

    def __init__(
        self,
        aggregate: Aggregate,
        config: LoadConfig,
        t0: int,
        progress: ProgressCallback | None,
        timeline: list[dict[str, Any]],
    ) -> None:
        self.aggregate = aggregate
        self.config = config
        self.t0 = t0
        self.progress = progress
        self.timeline = timeline
        self.next_at = t0 + int(config.interval * 1e9)
        self.last_received = 0
        self.last_at = t0

    def maybe_report(self, force: bool = False) -> None:
        """Emit a snapshot if an interval has passed (or ``force``)."""
        now = time.monotonic_ns()
        if now < self.next_at and not force:
            return
        if force and self.aggregate.total("received") == self.last_received and self.timeline:
            return
        self.next_at += int(self.config.interval * 1e9) * max(
            1, (now - self.next_at) // int(self.config.interval * 1e9)
        )
        agg = self.aggregate
        received = agg.total("received")
        if force:  # the tail after the last tick: rate over the time replies actually arrived in
            last_reply = max((int(c.get("last_reply_ns", 0)) for c in agg.counters), default=0)
            now = max(min(now, last_reply), self.last_at + 1)
        seconds = max(1e-9, (now - self.last_at) / 1e9)
        interval = histogram.summarize(agg.merged(agg.interval))
        snapshot: dict[str, Any] = {
            "t": round((now - self.t0) / 1e9, 2),
            "duration": self.config.duration,
            "sent": agg.total("sent"),
            "received": received,
            # A tail much shorter than an interval holds too few replies for a rate (it read 416849/s once).
            "rps": None if force and seconds < self.config.interval * MIN_TAIL_FRACTION
            else round((received - self.last_received) / seconds, 1),
            "p50_ms": interval["p50"],
            "p99_ms": interval["p99"],
            "max_ms": interval["max"],
            "errors": sum(agg.kinds("errors").values()),
            "failures": sum(agg.kinds("failures").values()),
            "opened": agg.total("opened"),
        }
        if PROBE_LABEL in agg.labels:
            snapshot["probe_p99_ms"] = histogram.summarize(agg.merged(agg.interval, probe=True))["p99"]
        for hist in agg.interval:
            hist.reset()
        self.last_received, self.last_at = received, now
        self.timeline.append(snapshot)
        if self.progress is not None:
            self.progress(snapshot)


def build_report(
    config: LoadConfig,
    aggregate: Aggregate,
    plans: list[WorkerPlan],
    t0: int,
    started_at: str,
    server: dict[str, str],
    hold: dict[str, Any],
    local: bool,
) -> dict[str, Any]:
    """The report dict: settings, counts, latency summaries and the verdict."""
    scenario = config.scenario
    agg = aggregate
    sent, received, lost, unsent = (agg.total(key) for key in ("sent", "received", "lost", "unsent"))
    errors, failures = agg.kinds("errors"), agg.kinds("failures")
    last_reply = max((int(c.get("last_reply_ns", 0)) for c in agg.counters), default=0)
    # Throughput runs to the last reply; a hold run (or one with no replies) lasted its duration.
    elapsed = config.duration if scenario.kind == "hold" or last_reply <= t0 else (last_reply - t0) / 1e9
    commands = [label for label in agg.labels if label != PROBE_LABEL]
    probe_connections = 1 if any(plan.probe for plan in plans) else 0
    report: dict[str, Any] = {
        "tool": "crossdock loadtest",
        "started_at": started_at,
        "scenario": {
            "name": scenario.name,
            "kind": scenario.kind,
            "commands": dict(scenario.weights),
            "size": scenario.size,
            "work": {name: scenario.work[name] for name in commands if name in CPU_COMMANDS},
        },
        "target": {"host": config.host, "port": config.port, "loopback": local, "server": server},
        "load": {
            "model": "open" if config.rate is not None else "closed",
            "connections": config.connections,
            "processes": len(plans),
            "pipeline": config.pipeline if config.rate is None else None,
            "rate": config.rate,
            "duration_s": config.duration,
            "requests_limit": config.requests,
            "generator_cpus": list(config.cpus),
        },
        "connections": {
            "requested": config.connections + probe_connections,
            "opened": agg.total("opened") if scenario.kind != "storm" else None,
            "failed": sum(failures.values()),
            "failures": failures,
        },
        "requests": {
            "sent": sent,
            "received": received,
            "lost": lost,
            "unsent": unsent,
            "errors": sum(errors.values()),
            "errors_by_kind": errors,
        },
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(agg.merged(agg.totals).get_total_count() / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": histogram.summarize(agg.merged(agg.totals)),
        "by_command": {
            label: histogram.summarize(hist)
            for label, hist in zip(agg.labels, agg.totals, strict=True)
            if label != PROBE_LABEL
        },
    }
    if config.rate is not None:
        report["open_loop"] = {
            "target_rate": config.rate,
            "achieved_rate": report["throughput_rps"],
            "max_send_lag_ms": round(max(int(c.get("max_lag_ns", 0)) for c in agg.counters) / 1e6, 3),
        }
    if probe_connections:
        probe = histogram.summarize(agg.merged(agg.totals, probe=True))
        report["probe"] = {"rate": config.probe_rate, "command": "ping", **probe}
    if scenario.kind == "hold":
        opened = agg.total("opened")
        before, during = hold.get("rss_before_bytes"), hold.get("rss_with_connections_bytes")
        growth = during - before if before is not None and during is not None else None
        if growth is not None and growth < 0:
            # The server reused memory an earlier run freed (a reused server): no honest per-connection figure.
            hold["rss_note"] = "RSS fell while the connections opened (memory freed by an earlier run was reused); " \
                "start a fresh server for this figure"
            growth = None
        hold["connections_held"] = opened
        hold["rss_growth_bytes"] = growth
        hold["bytes_per_connection"] = round(growth / opened, 1) if growth is not None and opened else None
        report["hold"] = hold
    if scenario.kind == "storm":
        cycles = agg.total("cycles")
        report["storm"] = {
            "cycles": cycles,
            "connections_per_s": round(cycles / elapsed, 1) if elapsed > 0 else 0.0,
            "concurrency": config.connections,
        }
    problems = []
    if agg.crashes:
        problems.extend(agg.crashes)
    if errors:
        problems.append(f"error replies: {errors}")
    if failures:
        problems.append(f"connection failures: {failures}")
    if lost:
        problems.append(f"{lost} requests got no reply")
    if unsent:
        problems.append(f"{unsent} scheduled requests were never sent (the server fell behind the rate)")
    if sent != received + lost:
        problems.append(f"sent {sent} != received {received} + lost {lost}")
    report["ok"] = not problems
    report["problems"] = problems
    return report
