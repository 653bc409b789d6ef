"""``crossdock loadtest``: drive load at a server and measure it.

Examples::

    crossdock loadtest -p 7379 --connections 5000 --duration 20 --scenario ping
    crossdock loadtest -p 7379 --connections 200 --rate 20000 --scenario mix:ping=90,primes=10 --json out.json
    crossdock loadtest -p 7379 --connections 10000 --scenario hold

Exit status: 0 if the run saw no errors, 1 if it saw any (error replies,
connection failures, lost or unsent requests, a crashed worker), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console

from loadtest.config import (
    DEFAULT_DURATION,
    DEFAULT_INTERVAL,
    DEFAULT_PROBE_RATE,
    MAX_DURATION,
    LoadConfig,
    default_processes,
    parse_cpus,
)
from loadtest.display import LineProgress, RichProgress, final_table
from loadtest.runner import ProgressCallback, run_loadtest
from loadtest.scenarios import parse_scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``crossdock loadtest`` flags."""
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    target = parser.add_argument_group("target")
    target.add_argument("-H", "--host", default="127.0.0.1", help="server address (loopback unless allowed)")
    target.add_argument("-p", "--port", type=int, default=7379, help="server port (default 7379)")
    target.add_argument(
        "--allow-remote-host", action="store_true", help="permit a host that is not loopback (you mean it)"
    )
    what = parser.add_argument_group("what to send")
    what.add_argument(
        "-s", "--scenario", default="ping",
        help="ping, echo, set, get, setget, primes, factor, pbkdf2, cpu[:NAME], mix:ping=90,primes=10, "
        "hold, storm, responsiveness[:NAME] (default ping)",
    )  # fmt: skip
    what.add_argument("--size", type=int, default=16, help="payload bytes for echo and set (default 16)")
    what.add_argument(
        "--work", type=int, default=None,
        help="cpu command size: n for primes/factor, iterations for pbkdf2 (defaults: primes 20000, "
        "factor 1000000007, pbkdf2 5000; responsiveness primes 100000)",
    )  # fmt: skip
    what.add_argument("--keyspace", type=int, default=10_000, help="distinct keys for set/get (default 10000)")
    load = parser.add_argument_group("how hard")
    load.add_argument("-c", "--connections", type=int, default=50, help="connections (default 50)")
    load.add_argument(
        "-P", "--processes", type=int, default=None,
        help=f"generator processes (default: half the usable CPUs, here {default_processes()})",
    )  # fmt: skip
    load.add_argument("--pipeline", type=int, default=1, help="closed loop: requests in flight per connection")
    load.add_argument(
        "--rate", type=float, default=None,
        help="open loop: requests per second over all connections, latency from the scheduled time",
    )  # fmt: skip
    load.add_argument(
        "-d", "--duration", type=float, default=None,
        help=f"seconds to run (default {DEFAULT_DURATION:g}, or {MAX_DURATION:g} as a cap with --requests)",
    )  # fmt: skip
    load.add_argument("-n", "--requests", type=int, default=None, help="stop after this many requests")
    load.add_argument(
        "--probe-rate", type=float, default=DEFAULT_PROBE_RATE,
        help=f"responsiveness: probe PINGs per second (default {DEFAULT_PROBE_RATE:g})",
    )  # fmt: skip
    load.add_argument("--cpus", default="", help="pin the generator processes to these CPUs (e.g. 1 or 2-3)")
    load.add_argument("--connect-timeout", type=float, default=10.0, help="seconds per connection attempt")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-' for stdout only)")
    out.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="progress interval in seconds")
    out.add_argument("--quiet", action="store_true", help="no progress output")
    out.add_argument("--seed", type=int, default=0, help="seed for the request mix and keys")


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """Build and validate a LoadConfig. Error handling: raises ValueError with a usage message."""
    scenario = parse_scenario(args.scenario, size=args.size, work=args.work, keyspace=args.keyspace, seed=args.seed)
    if args.duration is not None:
        duration = args.duration
    elif args.requests is not None:
        duration = MAX_DURATION
    else:
        duration = DEFAULT_DURATION
    config = LoadConfig(
        scenario=scenario,
        host=args.host,
        port=args.port,
        connections=args.connections,
        processes=args.processes if args.processes is not None else default_processes(),
        pipeline=args.pipeline,
        rate=args.rate,
        duration=duration,
        requests=args.requests,
        interval=args.interval,
        probe_rate=args.probe_rate,
        cpus=parse_cpus(args.cpus),
        allow_remote_host=args.allow_remote_host,
        connect_timeout=args.connect_timeout,
    )
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    """Run the load test; print progress, the final table and/or JSON; return the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"crossdock loadtest: {exc}", file=sys.stderr)
        return 2
    json_to_stdout = args.json == "-"
    progress: ProgressCallback | None = None
    if not args.quiet:
        progress = RichProgress() if sys.stderr.isatty() else LineProgress()
    try:
        report = run_loadtest(config, progress)
    except ValueError as exc:  # found by asking the server first (e.g. no room under its maxclients)
        print(f"crossdock loadtest: {exc}", file=sys.stderr)
        return 2
    emit(report, args.json)
    if not json_to_stdout:
        Console().print(final_table(report))
    return 0 if report["ok"] else 1


def emit(report: dict[str, Any], path: str | None) -> None:
    """Write the JSON report to ``path`` (``-`` = stdout); nothing if path is None."""
    if path is None:
        return
    text = json.dumps(report, indent=2, sort_keys=False)
    if path == "-":
        print(text)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
