"""Showing a run to a person: live progress (rich on a TTY, else one line per interval), the final table.

Progress goes to stderr so that ``--json -`` on stdout stays a clean document.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _rate(rps: float | None) -> str:
    """A progress line's rate; "-" for a final tail too short to have one."""
    return "-" if rps is None else f"{rps:.0f}"


def progress_line(snapshot: dict[str, Any]) -> str:
    """One line for a non-TTY log: elapsed, counts, interval rate and latency."""
    line = (
        f"[{snapshot['t']:7.1f}s] sent={snapshot['sent']} recv={snapshot['received']} "
        f"rate={_rate(snapshot['rps'])}/s p50={snapshot['p50_ms']:.3f}ms p99={snapshot['p99_ms']:.3f}ms "
        f"max={snapshot['max_ms']:.3f}ms conns={snapshot['opened']} errors={snapshot['errors']} "
        f"conn_failures={snapshot['failures']}"
    )
    if "probe_p99_ms" in snapshot:
        line += f" probe_p99={snapshot['probe_p99_ms']:.3f}ms"
    return line


class LineProgress:
    """Writes :func:`progress_line` per interval to a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("final"):
            return
        print(progress_line(snapshot), file=self.stream, flush=True)


class RichProgress:
    """A live-updating panel on a terminal (rich.Live), stopped at the end of the run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.live: Live | None = None

    def __call__(self, snapshot: dict[str, Any]) -> None:
        if snapshot.get("final"):
            self.close()
            return
        table = Table(title="crossdock loadtest", show_header=True, header_style="bold")
        for column in (
            "elapsed",
            "sent",
            "received",
            "rate/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "conns",
            "errors",
        ):
            table.add_column(column, justify="right")
        row = [
            f"{snapshot['t']:.1f}/{snapshot['duration']:g}s",
            str(snapshot["sent"]),
            str(snapshot["received"]),
            _rate(snapshot["rps"]),
            f"{snapshot['p50_ms']:.3f}",
            f"{snapshot['p99_ms']:.3f}",
            f"{snapshot['max_ms']:.3f}",
            str(snapshot["opened"]),
            str(snapshot["errors"] + snapshot["failures"]),
        ]
        table.add_row(*row)
        if "probe_p99_ms" in snapshot:
            table.caption = f"probe p99 {snapshot['probe_p99_ms']:.3f} ms"
        if self.live is None:
            self.live = Live(table, console=self.console, refresh_per_second=4, transient=False)
            self.live.start()
        else:
            self.live.update(table)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _latency_row(name: str, summary: dict[str, Any]) -> list[str]:
    return [
        name,
        str(summary["count"]),
        *(f"{summary[key]:.3f}" for key in ("p50", "p90", "p99", "p99.9", "max")),
    ]


def final_table(report: dict[str, Any]) -> Table:
    """The end-of-run table: settings, counts, throughput, latency per command, special figures."""
    load, requests, conns = report["load"], report["requests"], report["connections"]
    processes = "1 process" if load["processes"] == 1 else f"{load['processes']} processes"
    model = (
        f"open loop at {load['rate']:g}/s" if load["model"] == "open" else f"closed loop, pipeline {load['pipeline']}"
    )
    title = f"{report['scenario']['name']}: {load['connections']} connections, {processes}, {model}"
    summary = Table(title=title, show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("elapsed", f"{report['elapsed_s']:.2f} s")
    summary.add_row("throughput", f"{report['throughput_rps']:,.0f} replies/s")
    summary.add_row("sent / received", f"{requests['sent']} / {requests['received']}")
    summary.add_row("lost / unsent", f"{requests['lost']} / {requests['unsent']}")
    summary.add_row("error replies", f"{requests['errors']} {requests['errors_by_kind'] or ''}")
    opened = "-" if conns["opened"] is None else str(conns["opened"])
    summary.add_row("connections opened / failed", f"{opened} / {conns['failed']} {conns['failures'] or ''}")
    if "open_loop" in report:
        summary.add_row("max send lag (generator)", f"{report['open_loop']['max_send_lag_ms']:.3f} ms")
    if "storm" in report:
        summary.add_row("connections per second", f"{report['storm']['connections_per_s']:,.0f}")
    if "hold" in report:
        hold = report["hold"]
        per = hold.get("bytes_per_connection")
        growth = hold.get("rss_growth_bytes")
        if growth is not None:
            summary.add_row("server RSS growth", f"{growth:,} bytes ({hold.get('rss_source')})")
        else:
            summary.add_row("server RSS growth", f"not measured: {hold.get('rss_note') or hold.get('rss_source')}")
        summary.add_row("per idle connection", "-" if per is None else f"{per:,.0f} bytes")
    latency = Table(title="latency (ms)")
    for column in ("command", "count", "p50", "p90", "p99", "p99.9", "max"):
        latency.add_column(column, justify="right")
    for name, stats in report["by_command"].items():
        latency.add_row(*_latency_row(name, stats))
    if len(report["by_command"]) > 1:
        latency.add_row(*_latency_row("all", report["latency_ms"]))
    if "probe" in report:
        latency.add_row(*_latency_row(f"probe ({report['probe']['rate']:g}/s)", report["probe"]))
    grid = Table.grid(padding=(1, 0))
    grid.add_row(summary)
    grid.add_row(latency)
    if report["problems"]:
        problems = Table(title="problems", show_header=False)
        problems.add_column("problem", style="red")
        for problem in report["problems"]:
            problems.add_row(problem)
        grid.add_row(problems)
    return grid
