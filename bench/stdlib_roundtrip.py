"""The floor under crossdock's 1-connection cpu round trip: the same hop with nothing but the stdlib.

    .venv/bin/python bench/stdlib_roundtrip.py [--calls 2000] [--json]

Three round trips, one after the other, each timed call by call after a
warm-up, on whatever CPUs this process may use (``bench/targets.py`` runs it
pinned to the server's CPUs, so the caller and the worker share a core as
crossdock's front end and its pool worker do):

* **raw pipe**: ``multiprocessing.Pipe`` to a child process that receives a
  small tuple and sends back an int: pickling plus two pipe hops, no pool;
* **bare executor**: ``ProcessPoolExecutor(max_workers=1)`` (forkserver, as
  crossdock's pool) ``.submit(count_primes, 10).result()``: the same function
  ``PRIMES 10`` runs, with the executor's call queue, its manager thread and
  its result queue;
* **run_in_executor on uvloop**: the same executor reached the way the card
  has crossdock reach it, ``await loop.run_in_executor(executor,
  count_primes, 10)`` on a uvloop event loop, one call at a time: the bare
  executor plus the asyncio future chained to it and the loop's wake-up by
  the executor's thread. No server, no sockets: the floor of any asyncio
  server that offloads through ``run_in_executor``.

Prints the median and mean of each in microseconds (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

from server.commands.cpu import count_primes

#: Calls timed per round trip kind: 2000 at ~0.1-0.4 ms each is well under a second, and the
#: median of 2000 is stable to a microsecond.
DEFAULT_CALLS: Final = 2000

#: Untimed calls first: the worker is started, imports are done, caches and branch predictors warm.
WARMUP_CALLS: Final = 100

#: The PRIMES argument of crossdock's overhead figures (``PRIMES 10``: under a microsecond of work).
TRIVIAL_N: Final = 10

#: The start method crossdock's pool uses (server/cpu/pool.py): never fork with threads around.
START_METHOD: Final = "forkserver"


def _echo_worker(conn: Connection) -> None:
    """The pipe's far end: answer every (name, n) with count_primes(n) until None arrives."""
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(count_primes(message[1]))


def time_calls(call: Callable[[], object], calls: int, warmup: int = WARMUP_CALLS) -> list[float]:
    """Microseconds of each of ``calls`` calls, timed one by one after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    timings = []
    for _ in range(calls):
        began = time.perf_counter_ns()
        call()
        timings.append((time.perf_counter_ns() - began) / 1000.0)
    return timings


def pipe_round_trips(calls: int) -> list[float]:
    """Microseconds of each send + recv through a multiprocessing pipe to a child process."""
    context = multiprocessing.get_context(START_METHOD)
    ours, theirs = context.Pipe()
    child = context.Process(target=_echo_worker, args=(theirs,), daemon=True)
    child.start()
    try:

        def call() -> object:
            ours.send(("PRIMES", TRIVIAL_N))
            return ours.recv()

        return time_calls(call, calls)
    finally:
        ours.send(None)
        child.join(10)


def executor_round_trips(calls: int) -> list[float]:
    """Microseconds of each submit(count_primes, 10).result() on a one-worker ProcessPoolExecutor."""
    context = multiprocessing.get_context(START_METHOD)
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return time_calls(lambda: executor.submit(count_primes, TRIVIAL_N).result(), calls)


def loop_executor_round_trips(calls: int) -> list[float]:
    """Microseconds of each ``await loop.run_in_executor(executor, count_primes, 10)`` on uvloop."""
    import asyncio

    import uvloop

    context = multiprocessing.get_context(START_METHOD)

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
            for _ in range(WARMUP_CALLS):
                await loop.run_in_executor(executor, count_primes, TRIVIAL_N)
            timings = []
            for _ in range(calls):
                began = time.perf_counter_ns()
                await loop.run_in_executor(executor, count_primes, TRIVIAL_N)
                timings.append((time.perf_counter_ns() - began) / 1000.0)
            return timings

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def summary(timings: list[float]) -> dict[str, Any]:
    return {
        "calls": len(timings),
        "median_us": round(statistics.median(timings), 2),
        "mean_us": round(statistics.fmean(timings), 2),
        "p99_us": round(statistics.quantiles(timings, n=100)[98], 2) if len(timings) >= 100 else None,
    }


def measure(calls: int = DEFAULT_CALLS) -> dict[str, Any]:
    """Both round trips, and where they ran."""
    import os

    return {
        "pipe": summary(pipe_round_trips(calls)),
        "executor": summary(executor_round_trips(calls)),
        "run_in_executor": summary(loop_executor_round_trips(calls)),
        "cpus": sorted(os.sched_getaffinity(0)),
        "start_method": START_METHOD,
        "function": f"count_primes({TRIVIAL_N})",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help=f"calls timed (default {DEFAULT_CALLS})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    result = measure(args.calls)
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("pipe", "executor", "run_in_executor"):
            print(f"{name}: median {result[name]['median_us']} us, mean {result[name]['mean_us']} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
