"""The cpu-job policy both front ends share: admission (BUSY shedding), timeouts, and failures to replies.

A cpu request that reaches :meth:`CpuJobs.start` either gets ``-BUSY`` at
once (the backlog is full; it never reaches the executor) or becomes a job:
it takes one of the pool's job slots, is submitted to the pool's current
executor, and is answered exactly once through the ``on_reply`` callback its
front end gave. What happens between is decided here, the same way for the
asyncio and the threaded front end and for any executor that offers the
:class:`JobPool` surface:

- **Backlog bound.** Requests waiting for a worker are the jobs in flight
  beyond one per worker. When that reaches ``cpu_queue_limit`` the request
  is answered ``-BUSY cpu queue is full (N requests waiting), try again
  later`` and counted (INFO ``cpu_rejected_busy``). One log line when
  shedding starts and one when it stops, never one per request.
- **Timeout on running time.** A watcher thread wakes a few times per
  timeout period and reads each job's start mark (written by the worker);
  a job that has *run* longer than ``cpu_timeout`` (time spent waiting in
  the queue does not count) is answered ``-ERR cpu command 'x' timed out
  ...`` in its place in the reply order, and the pool stops its worker
  (:meth:`JobPool.stop_job`: for the process pool, a fresh executor and a
  SIGKILL). The other jobs the stopped executor held are resubmitted to the
  fresh one: cpu commands are pure functions of plain arguments, so running
  one again is safe, and failing innocent requests because a neighbour was
  slow would be worse.
- **A worker killed from outside** (SIGKILL, the OOM killer) breaks the
  executor: it is replaced once, the jobs that had started on it (one of
  them may be what killed it) are answered with an error, and the jobs that
  were still waiting are resubmitted. No other request notices.
- **A client that goes away** (:meth:`abandon`): its job runs to its end
  (or its timeout) and the reply is dropped quietly; the job leaves the
  books when its executor is done with it, so INFO's ``cpu_jobs_in_flight``
  returns to 0.

Threading: the front end tells this object how to submit
(``loop.run_in_executor`` or ``executor.submit``) and how to run something
in its own context from the watcher thread (``loop.call_soon_threadsafe``,
or a direct call under threads). Job bookkeeping is under one lock, held for
dictionary-sized moments only; replies, submissions and logging happen
outside it. Per request the hot path pays a lock, a dict insert and delete,
and a slot from a free list.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from server.cpu.backend import WORKER_DIED, CpuBackend, JobPool, JobStart, cpu_failure_reply, cpu_reply
from server.cpu.call import RunCpu
from server.protocol import encode_error

if TYPE_CHECKING:
    from server.store.state import ServerState

log = structlog.get_logger("crossdock.cpu")

#: How many times one request may be resubmitted because the executor under it was replaced for
#: someone else's fault (a neighbour's timeout, a crash while it waited). Each resubmission is a
#: pool replacement while it was in flight; past three the pool is failing faster than it works and
#: the client is better served by an error than by waiting on.
MAX_RESUBMITS = 3

#: The timeout watcher wakes this many times per ``cpu_timeout``, so a timeout fires at most about
#: a tenth late (0.1 s late for a 1 s timeout), and bounded below and above:
TIMEOUT_CHECKS_PER_PERIOD = 10
#: ... never more often than 20 times a second (a scan of the in-flight jobs each time) ...
MIN_TIMEOUT_CHECK_INTERVAL = 0.05
#: ... and at least once a second, so even a long timeout is enforced within a second of its due time.
MAX_TIMEOUT_CHECK_INTERVAL = 1.0


def busy_error(waiting: int) -> str:
    """The reply to a shed request. Redis's own BUSY errors start with ``BUSY `` (script running)."""
    return f"BUSY cpu queue is full ({waiting} requests waiting), try again later"


def timeout_error(command: str, seconds: float) -> str:
    """The reply to a request that ran longer than ``--cpu-timeout``."""
    return f"ERR cpu command '{command}' timed out after {seconds:g}s (cpu-timeout); its worker was replaced"


#: Reply when a job cannot be submitted at all (the pool is shut down, or keeps breaking).
POOL_UNAVAILABLE = "ERR cpu pool unavailable, try again later"


class _JobFuture(Protocol):
    """The part of asyncio.Future and concurrent.futures.Future this module uses."""

    def cancel(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


#: ``submit(executor, fn, *args)``: ``loop.run_in_executor`` or ``lambda ex, fn, *a: ex.submit(fn, *a)``.
Submitter = Callable[..., _JobFuture]
#: Run ``fn(*args)`` in the front end's own context, from the watcher thread.
CallSoon = Callable[..., object]
#: Run ``fn()`` later in the front end's own context, from that context (``loop.call_soon``).
Defer = Callable[[Callable[[], None]], object]

#: Most jobs one submission carries. Enough that per-call costs (a pickle each way, the executor's
#: bookkeeping, a wake-up of the loop) are spread thin over small requests; few enough that the
#: first reply of a batch does not wait long behind the last (replies of a batch come back together).
MAX_BATCH_SIZE = 64

#: Submissions the executor may hold per worker: one running and one waiting, so a worker that finishes
#: has its next batch at hand while the result travels back, and everything else gathers into batches.
SUBMISSIONS_PER_WORKER = 2


def split_batches(jobs: list[Job], workers: int) -> list[list[Job]]:
    """``jobs`` in admission order, cut into as few contiguous groups as keep every worker busy.

    One group per worker (fewer when there are fewer jobs), more only when a
    group would pass :data:`MAX_BATCH_SIZE`; sizes differ by at most one.
    """
    count = len(jobs)
    if count <= 1:
        return [jobs] if jobs else []
    groups = max(min(count, max(workers, 1)), -(-count // MAX_BATCH_SIZE))
    base, extra = divmod(count, groups)
    out, start = [], 0
    for index in range(groups):
        size = base + (1 if index < extra else 0)
        out.append(jobs[start : start + size])
        start += size
    return out


class Job:
    """One admitted cpu request, from admission until its executor is done with it."""

    __slots__ = (
        "abandoned",
        "action",
        "client_id",
        "deadline",
        "executor",
        "future",
        "id",
        "on_reply",
        "resubmits",
        "settled",
        "slot",
        "start",
        "timed_out",
    )

    def __init__(
        self, job_id: int, slot: int, action: RunCpu, on_reply: Callable[[bytes], None], client_id: int
    ) -> None:
        self.id = job_id
        self.slot = slot
        self.action = action
        self.on_reply = on_reply
        self.client_id = client_id
        self.executor: Any = None
        self.future: _JobFuture | None = None
        self.start: JobStart | None = None
        self.deadline: float | None = None
        self.resubmits = 0
        #: The reply has been given (result, error or timeout); later outcomes are dropped.
        self.settled = False
        #: The client went away: no reply is wanted.
        self.abandoned = False
        self.timed_out = False


class CpuJobs:
    """Admits, submits, times out and answers cpu jobs on one pool, for one front end.

    Error handling: every admitted job is answered exactly once through its
    ``on_reply`` (unless abandoned): its reply, ``-ERR`` for a timeout, a
    worker that died under it, or a pool that cannot take work. Nothing here
    raises into the front end.
    """

    def __init__(
        self,
        pool: JobPool,
        *,
        queue_limit: int,
        timeout: float,
        submit: Submitter,
        call_soon: CallSoon,
        defer: Defer | None = None,
    ) -> None:
        self.pool = pool
        self.queue_limit = queue_limit
        self.timeout = timeout
        self._submit_fn = submit
        self._call_soon = call_soon
        #: Runs the batch flush later in the front end's context (``loop.call_soon``): the requests admitted in
        #: one loop pass go together. None (threads): each admission flushes what is ready at that moment.
        self._defer = defer
        #: How the pool takes several jobs in one submission (the process pool's ``batch_call``); None: one by one.
        self._batch_call: Callable[..., tuple[Callable[..., Any], tuple[Any, ...]]] | None = getattr(
            pool, "batch_call", None
        )
        #: Admitted jobs waiting for the flush that submits them, in admission order.
        self._ready: list[Job] = []
        self._flush_scheduled = False
        #: Submissions (single jobs or batches) the executor holds. Capped at SUBMISSIONS_PER_WORKER per
        #: worker: while every worker is busy, new requests gather here and leave as one batch when one
        #: finishes, instead of queueing one by one in the executor (where they could not start sooner).
        self._outstanding = 0
        self._max_outstanding = SUBMISSIONS_PER_WORKER * max(pool.workers, 1)
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._free_slots = list(range(pool.job_slots))
        #: Executors this object stopped on purpose (a timeout): their other jobs are resubmitted.
        self._stopped: weakref.WeakSet[Any] = weakref.WeakSet()
        #: rejected_busy when the current shedding episode began (None: not shedding).
        self._rejected_before_shedding: int | None = None
        # -- counters for INFO -------------------------------------------------------------------
        self.rejected_busy = 0
        self.timeouts = 0
        self.resubmitted = 0
        self.worker_failures = 0
        #: Submissions that carried more than one job, and the jobs they carried.
        self.batches = 0
        self.batched_jobs = 0
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        if timeout > 0:
            self._watcher = threading.Thread(target=self._watch, name="cpu-timeouts", daemon=True)
            self._watcher.start()

    # -- admission ---------------------------------------------------------------------------------
    def start(self, action: RunCpu, on_reply: Callable[[bytes], None], client_id: int = 0) -> Job | None:
        """Admit and submit one cpu request, or answer it ``-BUSY`` at once (then None is returned).

        ``on_reply`` is called exactly once with the reply bytes (possibly
        before this returns), from the front end's context or an executor
        callback thread (under the threaded front end).
        """
        job: Job | None = None
        batching = flush_now = False
        with self._lock:
            waiting = len(self._jobs) - self.pool.workers
            shed_before = self._rejected_before_shedding
            if waiting >= self.queue_limit or not self._free_slots:
                self.rejected_busy += 1
                if shed_before is None:
                    self._rejected_before_shedding = self.rejected_busy - 1
            else:
                job = Job(next(self._ids), self._free_slots.pop(), action, on_reply, client_id)
                self._jobs[job.id] = job
                self._rejected_before_shedding = None
                batching = self._batch_call is not None
                if batching:
                    self._ready.append(job)
                    flush_now = not self._flush_scheduled
                    self._flush_scheduled = True
        if job is None:
            if shed_before is None:  # one line per shedding episode, not per shed request
                log.warning("cpu_shedding_started", waiting=waiting, limit=self.queue_limit)
            on_reply(encode_error(busy_error(max(waiting, 0))))
            return None
        if shed_before is not None:
            log.info("cpu_shedding_stopped", rejected=self.rejected_busy - shed_before)
        if not batching:
            self._submit(job)
        elif flush_now:
            if self._defer is None:
                self._flush()
            else:
                self._defer(self._flush)
        return job

    # -- batches -----------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Submit every job admitted since the last flush: alone, or split in batches across the workers.

        A lone request goes at once as itself (no added latency at low load).
        Several go as at most one batch per worker, each of at most
        :data:`MAX_BATCH_SIZE`, contiguous in admission order.
        """
        with self._lock:
            self._flush_scheduled = False
            room = self._max_outstanding - self._outstanding
            if room <= 0 or not self._ready:
                return  # a finishing submission flushes again (_submission_done)
            take = min(len(self._ready), room * MAX_BATCH_SIZE)
            ready, self._ready = self._ready[:take], self._ready[take:]
        for group in split_batches(ready, min(room, self.pool.workers)):
            if len(group) == 1:
                self._submit(group[0])
            else:
                self._submit_batch(group)

    def _submit_batch(self, group: list[Job]) -> None:
        pool = self.pool
        executor = pool.executor
        assert self._batch_call is not None
        fn, args = self._batch_call([(job.id, job.slot, job.action.func, job.action.args) for job in group])
        for job in group:  # first submission: the watcher has seen no start for these jobs yet
            job.executor = executor
        try:
            future = self._submit_fn(executor, fn, *args)
        except concurrent.futures.BrokenExecutor:
            pool.replace_broken(executor)  # broke before these reached it: each tries the fresh one
            for job in group:
                self._submit(job)
            return
        except RuntimeError:  # shut down: the server is stopping
            for job in group:
                self._finish(job, encode_error(POOL_UNAVAILABLE), release=True)
            return
        self.batches += 1
        self.batched_jobs += len(group)
        with self._lock:
            self._outstanding += 1
        for job in group:
            job.future = future
        future.add_done_callback(functools.partial(self._on_batch_done, group))

    def _on_batch_done(self, group: list[Job], future: _JobFuture) -> None:
        """A batch came back, or its executor is gone: answer each job, or rerun the innocent ones.

        When the worker died under the batch, only the job it was running (the
        last of the batch with a start mark) is answered with the error; the
        jobs it had finished (their results died with it) and those it had not
        reached are resubmitted: cpu commands are pure, running one again is safe.
        """
        self._submission_done()
        live = [job for job in group if job.future is future]  # not since resubmitted alone
        if not future.cancelled():
            error = future.exception()
            if error is None:
                for job, tagged in zip(group, future.result(), strict=True):
                    if job.future is future:
                        self._finish(job, cpu_reply(tagged), release=True)
                return
            if not isinstance(error, concurrent.futures.BrokenExecutor):
                for job in live:
                    self._finish(job, cpu_failure_reply(error), release=True)
                return
            self.pool.replace_broken(group[0].executor)
        executor = group[0].executor
        running = None
        if executor not in self._stopped:
            started = [job for job in live if self.pool.job_started(executor, job.id, job.slot) is not None]
            running = started[-1] if started else None
        for job in live:
            if job.settled or job.abandoned:
                self._finish(job, b"", release=True)
            elif job is running:
                self.worker_failures += 1
                self._finish(job, encode_error(WORKER_DIED), release=True)
            else:
                self._resubmit(job)

    def abandon(self, job: Job) -> None:
        """The client that asked for ``job`` has gone: its reply is dropped, and it is not resubmitted.

        The job is not cancelled: ProcessPoolExecutor hands queued work to its
        call queue early, where cancelling the front end's future no longer
        stops the worker from running it. Letting it finish keeps the books
        exact (a job slot is free only when no worker can still write to it,
        and the backlog bound counts the work the executor really holds);
        the backlog bound and the timeout bound what a departed client costs.
        """
        job.abandoned = True

    # -- submission and outcomes -------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        pool = self.pool
        for attempt in range(MAX_RESUBMITS + 1):
            executor = pool.executor
            fn, args = pool.job_call(job.id, job.slot, job.action.func, job.action.args)
            if job.resubmits or attempt:  # the watcher may hold a start from the previous executor
                with self._lock:
                    job.executor, job.start, job.deadline = executor, None, None
            else:  # first submission: the watcher has seen no start for this job yet
                job.executor = executor
            try:
                future = self._submit_fn(executor, fn, *args)
            except concurrent.futures.BrokenExecutor:
                pool.replace_broken(executor)  # broke before this request reached it: try the fresh one
                continue
            except RuntimeError:  # shut down: the server is stopping
                break
            job.future = future
            with self._lock:
                self._outstanding += 1
            future.add_done_callback(functools.partial(self._on_done, job))
            return
        self._finish(job, encode_error(POOL_UNAVAILABLE), release=True)

    def _submission_done(self) -> None:
        """A submission left the executor: if requests gathered meanwhile, flush them now."""
        with self._lock:
            self._outstanding -= 1
            flush = bool(self._ready) and not self._flush_scheduled
            if flush:
                self._flush_scheduled = True
        if flush:
            if self._defer is None:
                self._flush()
            else:
                self._defer(self._flush)

    def _on_done(self, job: Job, future: _JobFuture) -> None:
        self._submission_done()
        if future is not job.future:
            return  # an earlier submission of a job since resubmitted
        if not future.cancelled():
            error = future.exception()
            if error is None:
                self._finish(job, cpu_reply(future.result()), release=True)
                return
            if not isinstance(error, concurrent.futures.BrokenExecutor):
                self._finish(job, cpu_failure_reply(error), release=True)
                return
            self.pool.replace_broken(job.executor)  # once per broken executor, whoever calls first
        # The executor under this job is gone: it was stopped (a timeout), broken, or shut down.
        if job.settled or job.abandoned:
            self._finish(job, b"", release=True)
        elif job.executor in self._stopped or self.pool.job_started(job.executor, job.id, job.slot) is None:
            self._resubmit(job)
        else:
            self.worker_failures += 1
            self._finish(job, encode_error(WORKER_DIED), release=True)

    def _resubmit(self, job: Job) -> None:
        if job.resubmits >= MAX_RESUBMITS:
            self._finish(job, encode_error(WORKER_DIED), release=True)
            return
        job.resubmits += 1
        self.resubmitted += 1
        self._submit(job)

    def _finish(self, job: Job, reply: bytes, *, release: bool) -> None:
        """Give ``job`` its reply (once, unless abandoned); with ``release`` also take it off the books."""
        with self._lock:
            deliver = not job.settled and not job.abandoned
            job.settled = True
            if release and self._jobs.pop(job.id, None) is not None:
                self._free_slots.append(job.slot)
        if deliver:
            job.on_reply(reply)

    # -- timeouts ----------------------------------------------------------------------------------
    def _watch(self) -> None:
        interval = min(max(self.timeout / TIMEOUT_CHECKS_PER_PERIOD, MIN_TIMEOUT_CHECK_INTERVAL),
                       MAX_TIMEOUT_CHECK_INTERVAL)  # fmt: skip
        while not self._closed.wait(interval):
            expired = self._find_expired()
            if expired:
                try:
                    self._call_soon(self._expire, expired)
                except RuntimeError:  # the event loop is closed: the server is gone
                    return

    def _find_expired(self) -> list[tuple[Job, Any]]:
        """Jobs that have run past the timeout. Under the lock, so a resubmission cannot interleave."""
        now = time.monotonic()
        job_started = self.pool.job_started
        expired = []
        with self._lock:
            for job in self._jobs.values():
                if job.timed_out:
                    continue
                if job.deadline is None:
                    start = job_started(job.executor, job.id, job.slot)
                    if start is None:
                        continue
                    job.start, job.deadline = start, start.started + self.timeout
                if now >= job.deadline:
                    expired.append((job, job.executor))
        return expired

    def _expire(self, expired: list[tuple[Job, Any]]) -> None:
        """In the front end's context: answer each timed-out job and stop the worker that runs it."""
        for job, executor in expired:
            start = job.start
            if job.timed_out or job.executor is not executor or start is None or job.id not in self._jobs:
                continue  # finished, resubmitted or already handled since the watcher looked
            job.timed_out = True
            self.timeouts += 1
            self._stopped.add(executor)
            log.warning(
                "cpu_timeout",
                command=job.action.name,
                timeout=self.timeout,
                pid=start.pid,
                client_id=job.client_id,
            )
            # Answer first, then stop: stopping makes the job's future fail, and under threads its callback
            # may run on another thread before this one goes on; the job must already be settled then, or
            # it would be resubmitted (or answered with the executor's error) instead of timed out.
            self._finish(job, encode_error(timeout_error(job.action.name, self.timeout)), release=False)
            self.pool.stop_job(executor, start)

    # -- reporting and lifecycle -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Jobs admitted and not yet done with by their executor (waiting or running)."""
        return len(self._jobs)

    def running(self) -> int:
        """Jobs that have started in a worker (read from the start marks; for INFO, not the hot path)."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sum(1 for job in jobs if self.pool.job_started(job.executor, job.id, job.slot) is not None)

    def info(self) -> dict[str, object]:
        """The counters INFO reports."""
        in_flight = self.in_flight
        running = self.running()
        return {
            "cpu_jobs_in_flight": in_flight,
            "cpu_jobs_running": running,
            "cpu_jobs_queued": max(in_flight - running, 0),
            "cpu_rejected_busy": self.rejected_busy,
            "cpu_timeouts": self.timeouts,
            "cpu_jobs_resubmitted": self.resubmitted,
            "cpu_worker_failures": self.worker_failures,
            "cpu_batches": self.batches,
            "cpu_jobs_batched": self.batched_jobs,
        }

    def close(self) -> None:
        """Stop the timeout watcher (the server is shutting down)."""
        self._closed.set()


def attach_pool(
    state: ServerState, pool: CpuBackend, *, submit: Any, call_soon: Any, defer: Defer | None = None
) -> CpuJobs:
    """Record a started ``pool`` on ``state`` and put the cpu-job policy in front of it.

    ``submit`` and ``call_soon`` are the front end's: ``loop.run_in_executor``
    and ``loop.call_soon_threadsafe`` on the event loop, :func:`threaded_submit`
    and :func:`call_directly` under threads. Limits come from ``state.config``.
    """
    config = state.config
    state.pool_size = config.workers
    state.pool = pool
    state.cpu_jobs = CpuJobs(
        pool,
        queue_limit=config.effective_cpu_queue_limit,
        timeout=config.cpu_timeout,
        submit=submit,
        call_soon=call_soon,
        defer=defer,
    )
    return state.cpu_jobs


def threaded_submit(executor: Any, fn: Callable[..., Any], *args: Any) -> _JobFuture:
    """The threaded front end's submitter: ``executor.submit``."""
    future: concurrent.futures.Future[Any] = executor.submit(fn, *args)
    return future


def call_directly(fn: Callable[..., object], *args: Any) -> None:
    """The threaded front end's ``call_soon``: any thread may act on jobs (the bookkeeping is locked)."""
    fn(*args)


__all__ = [
    "MAX_RESUBMITS",
    "POOL_UNAVAILABLE",
    "CpuJobs",
    "Job",
    "JobPool",
    "attach_pool",
    "busy_error",
    "call_directly",
    "threaded_submit",
    "timeout_error",
]
