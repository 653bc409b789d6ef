"""When cpu jobs leave for the executor (server.cpu.jobs.CpuJobs), in-process with a recording executor.

Issue 12's 50-connection row: every submission costs the loop and the
executor's threads the same whatever it carries, so cheap requests must go
in few, full batches. Two rules decide it, checked here:

- every worker busy: a further submission goes only when the jobs waiting
  fill one; a part-full one waits for a submission to come back;
- a submission that comes back hands out what waits at the end of the loop
  pass (``defer``), so the requests read in that pass join the batch.

A fake loop pass (``defer`` collects, ``end_pass`` runs) stands in for
``loop.call_soon``; the executor records submissions and completes them
when the test says, as ProcessPoolExecutor's result thread would.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from server.cpu.backend import JobStart
from server.cpu.call import RunCpu
from server.cpu.jobs import MAX_BATCH_SIZE, CpuJobs, call_directly
from server.cpu.worker import REPLY_TAG

#: What a cheap command costs in the fake worker: small enough that MAX_BATCH_SIZE of them share a submission.
CHEAP_SECONDS = 1e-6


class RecordingPool:
    """One-worker pool whose executor records each submission; job marks say every job ran CHEAP_SECONDS."""

    workers = 1
    job_slots = 256
    executor = object()
    shared_args = None

    def __init__(self) -> None:
        self.submissions: list[tuple[list[int], concurrent.futures.Future[Any]]] = []

    def submit(self, executor: object, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        items = args[0] if fn is _run_batch else [args]
        self.submissions.append(([item[0] for item in items], future))
        return future

    def complete(self, index: int) -> None:
        """The executor hands back submission ``index``: every job in it answered ``:1``."""
        job_ids, future = self.submissions[index]
        future.set_result([(REPLY_TAG, b":1\r\n")] * len(job_ids) if len(job_ids) > 1 else (REPLY_TAG, b":1\r\n"))

    def job_call(
        self, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _run_job, (job_id, slot, func, args)

    def batch_call(self, items: list[tuple[Any, ...]], budget: float) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _run_batch, (items,)

    def job_started(self, executor: object, job_id: int, slot: int) -> JobStart:
        return JobStart(1, 100.0)

    def job_ended(self, executor: object, job_id: int, slot: int) -> float:
        return 100.0 + CHEAP_SECONDS

    def stop_job(self, *_: object) -> None: ...

    def replace_broken(self, broken: object) -> bool:
        return False

    def died_workers(self, *_: object) -> None:
        return None


def _run_job(*_: object) -> None: ...


def _run_batch(*_: object) -> None: ...


class FakeLoopPass:
    """``loop.call_soon`` for the policy: callbacks wait for the end of the pass."""

    def __init__(self) -> None:
        self.deferred: list[Callable[[], None]] = []

    def defer(self, callback: Callable[[], None]) -> None:
        self.deferred.append(callback)

    def end_pass(self) -> None:
        callbacks, self.deferred = self.deferred, []
        for callback in callbacks:
            callback()


def cheap() -> RunCpu:
    return RunCpu("CHEAP", pow, (2, 3))


def make_jobs(loop: FakeLoopPass | None) -> tuple[CpuJobs, RecordingPool, list[bytes]]:
    pool = RecordingPool()
    jobs = CpuJobs(
        pool,
        queue_limit=200,
        timeout=0,
        submit=pool.submit,
        call_soon=call_directly,
        defer=loop.defer if loop is not None else None,
    )
    replies: list[bytes] = []
    # The first CHEAP goes alone (its cost is not known yet) and measures it.
    jobs.start(cheap(), replies.append, client_id=999)
    pool.complete(0)
    assert replies == [b":1\r\n"]
    return jobs, pool, replies


def test_a_part_full_batch_waits_for_the_running_one_and_gathers_the_pass_it_came_back_in() -> None:
    loop = FakeLoopPass()
    jobs, pool, replies = make_jobs(loop)
    jobs.start(cheap(), replies.append, client_id=0)  # the executor is idle: it goes at once
    assert [len(ids) for ids, _ in pool.submissions] == [1, 1]
    for client in range(1, 11):  # ten more while it runs: a part-full batch, kept here
        jobs.start(cheap(), replies.append, client_id=client)
    loop.end_pass()
    assert len(pool.submissions) == 2
    pool.complete(1)  # it comes back; the hand-out waits for the end of this pass ...
    assert len(pool.submissions) == 2
    for client in range(11, 21):  # ... so the requests read in the same pass join the batch
        jobs.start(cheap(), replies.append, client_id=client)
    loop.end_pass()
    assert [len(ids) for ids, _ in pool.submissions] == [1, 1, 20]
    pool.complete(2)
    assert len(replies) == 1 + 1 + 20
    assert jobs.in_flight == 0


def test_a_full_batch_goes_at_once_behind_the_running_one() -> None:
    loop = FakeLoopPass()
    jobs, pool, replies = make_jobs(loop)
    jobs.start(cheap(), replies.append, client_id=0)
    for client in range(1, MAX_BATCH_SIZE + 1):  # a whole submission's worth waiting: the worker has plenty to do
        jobs.start(cheap(), replies.append, client_id=client)
    loop.end_pass()
    assert [len(ids) for ids, _ in pool.submissions] == [1, 1, MAX_BATCH_SIZE]
    pool.complete(1)
    pool.complete(2)
    loop.end_pass()
    assert len(replies) == 1 + 1 + MAX_BATCH_SIZE
    assert jobs.in_flight == 0


def test_unmeasured_and_heavy_jobs_keep_one_queued_behind_each_worker() -> None:
    """A job whose cost is not known fills a submission of its own: the second one per worker goes at once."""
    loop = FakeLoopPass()
    pool = RecordingPool()
    jobs = CpuJobs(pool, queue_limit=200, timeout=0, submit=pool.submit, call_soon=call_directly, defer=loop.defer)
    replies: list[bytes] = []
    for client in range(3):
        jobs.start(RunCpu("NEW", pow, (2, 3)), replies.append, client_id=client)
    loop.end_pass()
    assert [len(ids) for ids, _ in pool.submissions] == [1, 1]  # one running, one ready behind it
    pool.complete(0)
    loop.end_pass()
    assert len(pool.submissions) == 3


def test_under_threads_a_returning_submission_hands_out_at_once() -> None:
    """No loop pass to wait for (defer is None): what waits goes the moment a submission comes back."""
    jobs, pool, replies = make_jobs(None)
    for client in range(10):
        jobs.start(cheap(), replies.append, client_id=client)
    assert [len(ids) for ids, _ in pool.submissions] == [1, 1]  # the first went alone; nine wait, part-full
    pool.complete(1)
    assert [len(ids) for ids, _ in pool.submissions] == [1, 1, 9]
    pool.complete(2)
    assert len(replies) == 1 + 10
    assert jobs.in_flight == 0
