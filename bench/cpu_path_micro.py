"""Microseconds of front-end work per cpu request offloaded to the pool, against the same request run inline.

Issue 12's 50-connection row is decided on the event loop: a trivial cpu
request (PRIMES 10) through the pool costs the loop its parse and reply like
an inline one, plus the cpu-job policy (admission, per-client queues, the
hand-out, the batch's answers) and the per-batch executor machinery. This
script times the first part in-process, with no sockets and no executor: 50
real connection cores (real parser, dispatcher and ``CpuJobs``) each send one
request per round; a recording pool stands in for ``run_in_executor`` and
runs each batch with the worker's own ``run_batch`` in this thread; the
loop's passes are run by hand. The worker's share (``run_batch`` alone) is
timed separately and subtracted, so "loop" is what the front end pays.

What it leaves out, by design: the system calls (reads and writes, the
executor's wake-up pipe), the executor's manager and feeder threads, the
pickling, and the worker process; ``bench/targets.py --rows overhead``
measures the whole. Time is this thread's CPU time; each figure is the best
of ``--repeat`` (on a shared machine the minimum is the stable one).

    .venv/bin/python bench/cpu_path_micro.py [--rounds 400] [--repeat 9]

``CROSSDOCK_CORE=pure`` runs it on the pure core (the policy uncompiled).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import structlog

from server.commands import Dispatcher, default_registry
from server.commands.cpu import count_primes
from server.config import Config
from server.connection.core import ConnectionCore, CoreShared
from server.cpu import worker
from server.cpu.backend import JobStart
from server.cpu.jobs import BATCH_TIME_BUDGET, CpuJobs, call_directly
from server.frontends.aio import LoopJobs
from server.protocol import CORE, encode_command
from server.store.state import ServerState

#: The row's clients: issue 12's 50 connections, one request each in flight.
CONNECTIONS = 50
#: The request: the row's trivial cpu command.
REQUEST = encode_command("PRIMES", 10)
#: Rounds run before timing, so the policy has measured PRIMES and batches it as in a running server.
WARM_UP_ROUNDS = 60
#: Loop passes per round: admission, the lone first request, its answer and the deferred hand-out of the rest,
#: then the batch's answer (two passes would do; the spare ones cost nothing when idle).
PASSES_PER_ROUND = 4


class Transport:
    """Counts what the core writes; never pushes back."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class LoopPasses:
    """``loop.call_soon``: callbacks wait for the end of the pass, as on the event loop."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.ready.append(callback)

    def run_pass(self) -> None:
        callbacks, self.ready = self.ready, []
        for callback in callbacks:
            callback()


class InThreadPool:
    """The pool surface ``CpuJobs`` uses; submissions run with the worker's own code when :meth:`run` is called."""

    workers = 1
    job_slots = 256
    executor = object()
    shared_args = None

    def __init__(self) -> None:
        self.submitted: list[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, executor: object, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.submitted.append((future, fn, args))
        return future

    def run(self) -> None:
        submitted, self.submitted = self.submitted, []
        for future, fn, args in submitted:
            future.set_result(fn(*args))

    def job_call(
        self, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return worker.run_job, (job_id, slot, func, args)

    def batch_call(self, items: list[Any], budget: float) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return worker.run_batch, (items, budget)

    def job_started(self, executor: object, job_id: int, slot: int) -> JobStart:
        return JobStart(1, 0.0)

    def job_ended(self, executor: object, job_id: int, slot: int) -> float:
        return 1e-6  # a microsecond of work per job: PRIMES 10's order, so the policy batches it

    def stop_job(self, *_: object) -> None: ...

    def replace_broken(self, broken: object) -> bool:
        return False

    def died_workers(self, *_: object) -> None:
        return None


def microseconds_per_request(through_pool: bool, rounds: int) -> float:
    """CPU time per request of ``rounds`` rounds of 50 requests, through the policy or inline."""
    # A slow threshold no request reaches: the slow log line would measure logging, not the path.
    state = ServerState(Config(slowlog_threshold_ms=1e9), thread_safe=False)
    registry = default_registry()
    loop = LoopPasses()
    shared = CoreShared(state, Dispatcher(registry, state), registry, clock=time.monotonic, defer=loop.call_soon)
    pool = InThreadPool()
    cpu_jobs = None
    if through_pool:
        cpu_jobs = CpuJobs(
            pool,
            queue_limit=10 * CONNECTIONS,
            timeout=0,
            submit=pool.submit,
            call_soon=call_directly,
            defer=loop.call_soon,
        )
    jobs = LoopJobs(None, cpu_jobs)  # type: ignore[arg-type]  # the loop is only used for SLEEP
    transports = [Transport() for _ in range(CONNECTIONS)]
    cores = [
        ConnectionCore(transport, jobs, shared, state.register_client(f"127.0.0.1:{50000 + i}", "127.0.0.1:7379", -1))
        for i, transport in enumerate(transports)
    ]

    def one_round() -> None:
        for core in cores:
            core.data_received(REQUEST)
        for _ in range(PASSES_PER_ROUND):
            loop.run_pass()
            pool.run()

    for _ in range(WARM_UP_ROUNDS):
        one_round()
    before = sum(transport.writes for transport in transports)
    started = time.thread_time_ns()
    for _ in range(rounds):
        one_round()
    elapsed = time.thread_time_ns() - started
    answered = sum(transport.writes for transport in transports) - before
    if answered != rounds * CONNECTIONS:
        raise RuntimeError(f"{answered} replies for {rounds * CONNECTIONS} requests")
    return elapsed / answered / 1000


def worker_microseconds_per_job(rounds: int) -> float:
    """CPU time per job of the worker's ``run_batch`` on 50 PRIMES 10, in this thread (no slot table)."""
    items = [(i, i, count_primes, (10,)) for i in range(CONNECTIONS)]
    started = time.thread_time_ns()
    for _ in range(rounds):
        worker.run_batch(items, BATCH_TIME_BUDGET)
    return (time.thread_time_ns() - started) / rounds / CONNECTIONS / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="rounds of 50 requests per timing (default 400)")
    parser.add_argument("--repeat", type=int, default=9, help="timings per figure; the best is kept (default 9)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # no per-client lines
    pool_us, inline_us, worker_us = [], [], []
    for _ in range(args.repeat):
        pool_us.append(microseconds_per_request(True, args.rounds))
        inline_us.append(microseconds_per_request(False, args.rounds))
        worker_us.append(worker_microseconds_per_job(args.rounds))
    through_pool, inline, in_worker = min(pool_us), min(inline_us), min(worker_us)
    report = {
        "core": CORE,
        "connections": CONNECTIONS,
        "request": "PRIMES 10",
        "through_pool_us": round(through_pool, 2),
        "worker_share_us": round(in_worker, 2),
        "loop_through_pool_us": round(through_pool - in_worker, 2),
        "inline_us": round(inline, 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
