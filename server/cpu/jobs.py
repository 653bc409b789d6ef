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
- **Batches** (issue 12). What leaves the queues together (the requests of
  one loop pass, or those that gathered while every worker was busy) goes to
  the executor as few submissions as keep every worker busy, each carrying up
  to :data:`MAX_BATCH_SIZE` jobs (``run_in_executor`` once, one pickle each
  way): per-call machinery, not computation, is what a small request costs.
  A request that finds the executor idle and nobody waiting goes at once,
  without waiting for the end of the loop pass (it would gather nothing).
  Every submission costs the loop and the executor's threads about the same
  whatever it carries, so cheap requests go in few, full ones: with every
  worker holding a submission, another is queued behind them only when the
  jobs waiting fill it, and a submission that comes back hands out what
  waits at the end of that loop pass, so the requests its replies brought
  back in the same pass go too.
  A worker returns a batch once it has run :data:`BATCH_TIME_BUDGET` of it;
  the jobs it did not reach go back to the front of their clients' queues, so
  a heavy request never holds light ones behind it for long.
- **Fair sharing of the backlog** (issue 15, item 6). Admitted jobs wait in
  one queue per client and are handed to the executor round-robin across
  clients, at most :data:`SUBMISSIONS_PER_WORKER` submissions per worker at a time,
  so a client's long pipeline does not run ahead of everyone else's single
  request. When the backlog is full, a request from a client with fewer
  waiting jobs than the client with the most is still admitted, and that
  client's newest waiting job is answered ``-BUSY`` in its place: only a
  client over its fair share of the backlog is ever shed, and the bound on
  the total stays exact.
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
  executor: it is replaced once, the job that was running on the dead worker
  (it may be what killed it) is answered with an error, and every other job
  (waiting, or running on a worker the executor stopped in its fall) is
  resubmitted: one lost request per killed worker. When the dead worker
  cannot be told apart (:meth:`JobPool.died_workers` is None), every job
  that had started is answered with the error.
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
import contextlib
import functools
import itertools
import math
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from server.cpu.backend import WORKER_DIED, CpuBackend, JobPool, JobStart, cpu_failure_reply, cpu_reply
from server.cpu.call import RunCpu
from server.cpu.sharedargs import SharedArgs
from server.protocol import encode_error

if TYPE_CHECKING:
    from server.store.state import ServerState

log = structlog.get_logger("crossdock.cpu")

#: Submissions (a job or a batch) the executor holds at once, per worker: one running and one ready to start the
#: moment it ends, so a worker never idles for a round trip to the front end. The rest wait in the per-client
#: queues here, where round-robin order decides who goes next; a deeper executor queue would be
#: first-come-first-served again. The second one goes only when it is full (see :meth:`CpuJobs._take_ready`).
SUBMISSIONS_PER_WORKER = 2

#: Most jobs one submission carries. Enough that per-call costs (a pickle each way, the executor's
#: bookkeeping, a wake-up of the loop) are spread thin over small requests; the time budget below keeps
#: a batch of heavy ones from holding replies back.
MAX_BATCH_SIZE = 64

#: Seconds of work after which a worker returns a batch with the jobs it has run, leaving the rest to be
#: handed out again: about what 64 small requests cost, and short next to any request worth a worker.
BATCH_TIME_BUDGET = 0.002

#: Weight of the newest run time in a command's smoothed cost: a few samples settle it, one outlier does not.
COST_SMOOTHING = 0.3

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


#: Reply when a job cannot be submitted at all (the pool is shut down, keeps breaking, or cannot be replaced
#: for lack of descriptors or memory).
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


#: What :func:`_cut` cuts: jobs here, anything in its tests.
_Item = TypeVar("_Item")


def _cut(jobs: list[_Item], weights: list[float], room: int, workers: int) -> list[list[_Item]]:
    """Cut ``jobs`` (in order) into contiguous groups of at most one submission's worth of weight each, and
    into at least as many groups as there are free submissions and workers to keep busy (when jobs allow)."""
    total = sum(weights)
    count = min(len(jobs), max(min(room, workers), math.ceil(total - _EPSILON)))
    share = total / count
    groups: list[list[_Item]] = [[]]
    filled = 0.0
    for index, (job, weight) in enumerate(zip(jobs, weights, strict=True)):
        full = filled + weight > 1.0 + _EPSILON
        fair = filled >= share - _EPSILON and len(groups) < count
        needed = len(jobs) - index <= count - len(groups)  # one job per group left to fill
        if groups[-1] and (full or fair or needed):
            groups.append([])
            filled = 0.0
        groups[-1].append(job)
        filled += weight
    return groups


#: Slack for float sums of 1/cap weights.
_EPSILON = 1e-9


class Job:
    """One admitted cpu request, from admission until its executor is done with it."""

    __slots__ = (
        "abandoned",
        "action",
        "blocks",
        "client_id",
        "deadline",
        "executor",
        "future",
        "id",
        "on_reply",
        "resubmits",
        "settled",
        "shipped",
        "slot",
        "start",
        "submitted",
        "timed_out",
        "weight",
    )

    def __init__(
        self,
        job_id: int,
        slot: int,
        action: RunCpu,
        on_reply: Callable[[bytes], None],
        client_id: int,
        weight: float = 1.0,
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
        #: Handed to the executor (until then it waits in its client's queue in :class:`CpuJobs`).
        self.submitted = False
        #: The reply has been given (result, error or timeout); later outcomes are dropped.
        self.settled = False
        #: The client went away: no reply is wanted.
        self.abandoned = False
        self.timed_out = False
        #: The arguments as they go to the executor (large ones through shared memory), made at the first
        #: submission and kept for resubmissions; the shared-memory blocks they use, held until the job is done.
        self.shipped: tuple[Any, ...] | None = None
        self.blocks: list[Any] = []
        #: The share of one submission this job takes (1 / its command's batch cap when it was admitted).
        self.weight = weight


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
        #: Hands jobs out later in the front end's context (``loop.call_soon``), so the requests admitted in one
        #: loop pass leave together. None (threads): each admission hands out what it can at once.
        self._defer = defer
        self._hand_out_scheduled = False
        #: How the pool takes several jobs in one submission (the process pool's ``batch_call``); None: one by one.
        self._batch_call: Callable[..., tuple[Callable[..., Any], tuple[Any, ...]]] | None = getattr(
            pool, "batch_call", None
        )
        #: When a job's run ended, from the worker's own mark (the process pool's ``job_ended``); None: on arrival.
        self._job_ended: Callable[[Any, int, int], float | None] | None = getattr(pool, "job_ended", None)
        #: Where large arguments go through shared memory (the process pool's ``shared_args``); None: pickled.
        self._shared: SharedArgs | None = getattr(pool, "shared_args", None)
        #: Per command: its smoothed run time per job in a worker (seconds), measured from the jobs' start marks.
        self._cost: dict[str, float] = {}
        #: Per measured command: the share of one submission a job takes (1 / its batch cap); unmeasured: 1.0.
        self._weight: dict[str, float] = {}
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._free_slots = list(range(pool.job_slots))
        #: Admitted jobs not yet handed to the executor, per client, clients in round-robin order.
        self._waiting: OrderedDict[int, deque[Job]] = OrderedDict()
        #: The waiting jobs' weights summed: how many full submissions they make.
        self._waiting_units = 0.0
        #: Submissions the executor holds (futures not yet done); at most SUBMISSIONS_PER_WORKER per worker.
        self._in_executor = 0
        #: Per thread: groups released while that thread is already submitting (see :meth:`_submit_ready`).
        self._local = threading.local()
        #: Executors this object stopped on purpose (a timeout): their other jobs are resubmitted.
        self._stopped: weakref.WeakSet[Any] = weakref.WeakSet()
        #: rejected_busy when the current shedding episode began (None: not shedding).
        self._rejected_before_shedding: int | None = None
        # -- counters for INFO -------------------------------------------------------------------
        self.rejected_busy = 0
        #: Of those, jobs already waiting that were shed to admit a client with fewer waiting (fair sharing).
        self.preempted = 0
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
        preempted: Job | None = None
        with self._lock:
            waiting = len(self._jobs) - self.pool.workers
            shed_before = self._rejected_before_shedding
            if waiting >= self.queue_limit or not self._free_slots:
                preempted = self._preempt_for(client_id)
                self.rejected_busy += 1
                self.preempted += preempted is not None
                if shed_before is None:
                    self._rejected_before_shedding = self.rejected_busy - 1
            if preempted is not None or (waiting < self.queue_limit and self._free_slots):
                weight = self._weight.get(action.name, 1.0)
                job = Job(next(self._ids), self._free_slots.pop(), action, on_reply, client_id, weight)
                self._jobs[job.id] = job
                queue = self._waiting.get(client_id)
                if queue is None:
                    self._waiting[client_id] = queue = deque()
                queue.append(job)
                self._waiting_units += weight
                if preempted is None:
                    self._rejected_before_shedding = None
            ready: list[list[Job]] = []
            if self._defer is None:
                ready = self._take_ready()
            elif job is not None and self._in_executor == 0 and self._only_waiting(job):
                # The executor is idle and nothing else waits: a lone request goes at once. Waiting for the end of
                # the loop pass would gather nothing at low load and cost it a loop pass; the requests that come
                # after it in the same pass are gathered and go together (below).
                self._waiting.clear()
                self._waiting_units = 0.0
                job.submitted = True
                self._in_executor = 1
                ready = [[job]]
            elif job is not None and not self._hand_out_scheduled:
                self._hand_out_scheduled = True
                self._defer(self._hand_out)
        if (preempted is not None or job is None) and shed_before is None:  # one line per episode
            log.warning("cpu_shedding_started", waiting=waiting, limit=self.queue_limit)
        if preempted is not None:
            self._finish(preempted, encode_error(busy_error(max(waiting, 0))), release=False)
        elif job is None:
            on_reply(encode_error(busy_error(max(waiting, 0))))
        elif shed_before is not None:
            log.info("cpu_shedding_stopped", rejected=self.rejected_busy - shed_before)
        self._submit_ready(ready)
        return job

    def _release_slot(self, job: Job) -> None:
        """``job`` has left the books (the lock is held): its slot, and its shared-memory blocks, are free."""
        self._free_slots.append(job.slot)
        if job.blocks:
            assert self._shared is not None
            blocks, job.blocks = job.blocks, []
            self._shared.give_back(blocks)

    def _shipped_args(self, job: Job) -> tuple[Any, ...]:
        """``job``'s arguments as they go to the executor: a large ``bytes`` one through shared memory, once."""
        shipped = job.shipped
        if shipped is None:
            shipped = job.action.args
            shared = self._shared
            if shared is not None and shared.wants(shipped):
                with contextlib.suppress(OSError):  # /dev/shm full, or no descriptor: through the pipe instead
                    shipped, job.blocks = shared.share(shipped)
            job.shipped = shipped
        return shipped

    def _only_waiting(self, job: Job) -> bool:
        """Whether ``job`` is the one job waiting in any queue (the lock is held)."""
        waiting = self._waiting
        return len(waiting) == 1 and len(waiting[job.client_id]) == 1

    def _preempt_for(self, client_id: int) -> Job | None:
        """The backlog is full: take back the newest waiting job of the client with the most waiting, if that is
        more than ``client_id`` would have with one more; None if ``client_id`` is itself over its share.
        Called with the lock held; the caller answers the job ``-BUSY``."""
        mine = len(self._waiting.get(client_id, ()))
        greedy = max(self._waiting, key=lambda cid: len(self._waiting[cid]), default=None)
        if greedy is None or greedy == client_id or len(self._waiting[greedy]) <= mine + 1:
            return None
        queue = self._waiting[greedy]
        job = queue.pop()
        if not queue:
            del self._waiting[greedy]
        self._left_queue(job)
        del self._jobs[job.id]
        self._release_slot(job)
        return job

    def _take_ready(self) -> list[list[Job]]:
        """Groups of jobs to submit now: taken round-robin across clients while the executor has room, then cut
        into at most one batch per free submission (single jobs without a ``batch_call``). Called with the lock
        held; the caller submits them after releasing it."""
        # Read each time: a Dask cluster's thread count changes as workers come and go (and may be 0, when
        # one submission is still handed over so that the executor answers it with its own error).
        workers = self.pool.workers
        room = max(SUBMISSIONS_PER_WORKER * workers, 1) - self._in_executor
        waiting = self._waiting
        if room <= 0 or not waiting:
            return []
        if self._batch_call is None:
            taken = [self._next_round_robin() for _ in range(min(room, sum(map(len, waiting.values()))))]
            groups = [[job] for job in taken]
        else:
            if self._in_executor >= max(workers, 1) and self._waiting_units < 1.0 - _EPSILON:
                # Every worker has a submission: one queued behind them only hides the trip back to this loop from
                # a worker with plenty to do. Less than a full batch waiting means the worker is not what limits,
                # and these jobs gather into the batch that goes when a submission comes back (a second, part-full
                # submission halves every batch and doubles the per-call cost the loop pays: issue 12).
                return []
            # Each job takes 1/cap of a submission: cheap commands share one, an unmeasured or heavy one has its own.
            taken, weights, units = [], [], 0.0
            while waiting and units < room:
                job = self._next_round_robin()
                taken.append(job)
                weights.append(job.weight)
                units += job.weight
            groups = _cut(taken, weights, room, workers)
        self._in_executor += len(groups)
        return groups

    def _left_queue(self, job: Job) -> None:
        """``job`` has just left its client's queue (the lock is held): its weight leaves the running sum, which
        restarts from zero whenever no job waits, so float error never builds up."""
        self._waiting_units = self._waiting_units - job.weight if self._waiting else 0.0

    def _next_round_robin(self) -> Job:
        """The next waiting job in round-robin order (the lock is held; ``_waiting`` is not empty)."""
        waiting = self._waiting
        client_id, queue = waiting.popitem(last=False)
        job = queue.popleft()
        if queue:
            waiting[client_id] = queue  # to the back of the round
        self._left_queue(job)
        job.submitted = True
        return job

    def _batch_cap(self, name: str) -> int:
        """How many ``name`` jobs one submission may carry: the batch time budget over its measured run time."""
        cost = self._cost.get(name)
        if cost is None:
            return 1  # not measured yet: alone, so a heavy command is never batched on a guess
        return max(1, min(MAX_BATCH_SIZE, int(BATCH_TIME_BUDGET / max(cost, 1e-7))))

    def _measured(self, name: str, seconds: float) -> None:
        """One more run time of ``name`` (seconds per job), smoothed: what :meth:`_batch_cap` divides by."""
        old = self._cost.get(name)
        self._cost[name] = seconds if old is None else old + COST_SMOOTHING * (seconds - old)
        self._weight[name] = 1.0 / self._batch_cap(name)

    def _hand_out(self) -> None:
        """End of a loop pass: submit what was admitted during it (with :attr:`_defer`)."""
        with self._lock:
            self._hand_out_scheduled = False
            ready = self._take_ready()
        self._submit_ready(ready)

    def _submission_done(self) -> None:
        """A submission left the executor (any outcome): room for the next groups."""
        with self._lock:
            self._in_executor -= 1
            if not self._waiting:  # the common case at low load: nothing to hand out
                return
            if self._defer is not None:
                if not self._hand_out_scheduled:
                    self._hand_out_scheduled = True
                    self._defer(self._hand_out)
                return
            ready = self._take_ready()
        self._submit_ready(ready)

    def abandon(self, job: Job) -> None:
        """The client that asked for ``job`` has gone: its reply is dropped, and it is not resubmitted.

        The job is not cancelled: ProcessPoolExecutor hands queued work to its
        call queue early, where cancelling the front end's future no longer
        stops the worker from running it. Letting it finish keeps the books
        exact (a job slot is free only when no worker can still write to it,
        and the backlog bound counts the work the executor really holds);
        the backlog bound and the timeout bound what a departed client costs.
        A job still waiting in its client's queue never reaches the executor:
        it leaves the books at once.
        """
        with self._lock:
            job.abandoned = True
            queue = self._waiting.get(job.client_id)
            if job.submitted or queue is None or job not in queue:
                return
            queue.remove(job)
            if not queue:
                del self._waiting[job.client_id]
            self._left_queue(job)
            if self._jobs.pop(job.id, None) is not None:
                self._release_slot(job)

    # -- submission and outcomes -------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        pool = self.pool
        for attempt in range(MAX_RESUBMITS + 1):
            executor = pool.executor
            fn, args = pool.job_call(job.id, job.slot, job.action.func, self._shipped_args(job))
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
            except OSError:
                # The executor could not start a worker (descriptors or memory ran out). The request it had
                # already queued would be run with nobody waiting for it: retire that executor (cancelling
                # what it queued; what it runs finishes) and try a fresh one; past the tries, answer now.
                pool.replace_broken(executor)
                continue
            job.future = future
            future.add_done_callback(functools.partial(self._on_done, job))
            return
        self._finish(job, encode_error(POOL_UNAVAILABLE), release=True)
        self._submission_done()  # the submission it had a place for never reached the executor

    def _submit_batch(self, group: list[Job]) -> None:
        """One submission for several jobs (``batch_call``); a pool that cannot take it gets them one by one."""
        pool = self.pool
        executor = pool.executor
        assert self._batch_call is not None
        items = [(job.id, job.slot, job.action.func, self._shipped_args(job)) for job in group]
        fn, args = self._batch_call(items, BATCH_TIME_BUDGET)
        with self._lock:
            for job in group:
                job.executor, job.start, job.deadline = executor, None, None
        try:
            future = self._submit_fn(executor, fn, *args)
        except (concurrent.futures.BrokenExecutor, OSError):
            pool.replace_broken(executor)  # broke (or could not start a worker) before these reached it
            with self._lock:
                self._in_executor += len(group) - 1  # each goes on its own now
            self._submit_ready([[job] for job in group])
            return
        except RuntimeError:  # shut down: the server is stopping
            for job in group:
                self._finish(job, encode_error(POOL_UNAVAILABLE), release=True)
            self._submission_done()
            return
        self.batches += 1
        self.batched_jobs += len(group)
        for job in group:
            job.future = future
        future.add_done_callback(functools.partial(self._on_batch_done, group))

    def _on_batch_done(self, group: list[Job], future: _JobFuture) -> None:
        """A batch came back (perhaps only its first jobs: the time budget), or its executor is gone.

        When a worker died under the batch, only the job it was running (the
        last of the batch with a start mark), if that worker died on its own,
        is answered with the error; the jobs it had finished (their results
        died with it) and those it had not reached are resubmitted: cpu
        commands are pure, running one again is safe.
        """
        live = [job for job in group if job.future is future]  # not since resubmitted alone
        if not future.cancelled():
            error = future.exception()
            if error is None:
                self._answer_batch(group, future, future.result())
                return
            if not isinstance(error, concurrent.futures.BrokenExecutor):
                for job in live:
                    self._finish(job, cpu_failure_reply(error), release=True)
                self._submission_done()
                return
            self.pool.replace_broken(group[0].executor)
        executor = group[0].executor
        running = None
        if executor not in self._stopped:
            started = [job for job in live if self.pool.job_started(executor, job.id, job.slot) is not None]
            if started and not self._innocent(started[-1]):
                running = started[-1]
        self._submission_done()
        for job in live:
            if job.settled or job.abandoned:
                self._finish(job, b"", release=True)
            elif job is running:
                self.worker_failures += 1
                self._finish(job, encode_error(WORKER_DIED), release=True)
            else:
                self._resubmit(job)

    def _answer_batch(self, group: list[Job], future: _JobFuture, results: list[Any]) -> None:
        """A batch came back with the results of its first ``len(results)`` jobs: answer those (one pass over
        the books for the lot), put the jobs it did not reach back in their queues, and hand out what waits."""
        ran = len(results)
        self._note_run_time(group[:ran])
        answers = []
        with self._lock:
            jobs = self._jobs
            for job, tagged in zip(group, results, strict=False):
                if job.future is not future:
                    continue  # resubmitted alone since
                if not job.settled and not job.abandoned:
                    answers.append((job, tagged))
                job.settled = True
                if jobs.pop(job.id, None) is not None:
                    self._release_slot(job)
        for job, tagged in answers:
            job.on_reply(cpu_reply(tagged))
        if ran < len(group):
            self._requeue([job for job in group[ran:] if job.future is future])
        self._submission_done()

    def _note_run_time(self, ran: list[Job]) -> None:
        """Measure what ``ran`` (one submission, in order) cost per job, from the first one's start mark to now."""
        if not ran or self._batch_call is None:
            return
        first, last = ran[0], ran[-1]
        start = self.pool.job_started(first.executor, first.id, first.slot)
        if start is None:
            return
        # The worker's own end mark where the pool keeps one: the work alone, not the trip back to this loop (which
        # a loaded machine stretches, making cheap commands look too dear to batch just when batching pays most).
        ended = self._job_ended(last.executor, last.id, last.slot) if self._job_ended is not None else None
        per_job = max((time.monotonic() if ended is None else ended) - start.started, 0.0) / len(ran)
        if len(ran) == 1:
            self._measured(first.action.name, per_job)
            return
        for name in {job.action.name for job in ran}:
            self._measured(name, per_job)

    def _requeue(self, jobs: list[Job]) -> None:
        """Jobs a batch returned without running (its time budget ran out): back to the front of their queues."""
        if not jobs:
            return
        with self._lock:
            for job in reversed(jobs):
                if job.settled or job.abandoned:
                    if self._jobs.pop(job.id, None) is not None:
                        self._release_slot(job)
                    continue
                job.submitted = False
                job.future = None
                queue = self._waiting.get(job.client_id)
                if queue is None:
                    self._waiting[job.client_id] = queue = deque()
                    self._waiting.move_to_end(job.client_id, last=False)
                queue.appendleft(job)
                self._waiting_units += job.weight

    def _on_done(self, job: Job, future: _JobFuture) -> None:
        self._submission_done()
        if future is not job.future:
            return  # an earlier submission of a job since resubmitted
        if not future.cancelled():
            error = future.exception()
            if error is None:
                self._note_run_time([job])
                self._finish(job, cpu_reply(future.result()), release=True)
                return
            if not isinstance(error, concurrent.futures.BrokenExecutor):
                self._finish(job, cpu_failure_reply(error), release=True)
                return
            self.pool.replace_broken(job.executor)  # once per broken executor, whoever calls first
        # The executor under this job is gone: it was stopped (a timeout), broken, or shut down.
        if job.settled or job.abandoned:
            self._finish(job, b"", release=True)
        elif self._innocent(job):
            self._resubmit(job)
        else:
            self.worker_failures += 1
            self._finish(job, encode_error(WORKER_DIED), release=True)

    def _innocent(self, job: Job) -> bool:
        """Whether ``job``'s executor fell for another job's fault: stopped on purpose (a timeout), or the job
        had not started, or it ran on a worker the executor stopped after another worker died."""
        if job.executor in self._stopped:
            return True
        start = self.pool.job_started(job.executor, job.id, job.slot)
        if start is None:
            return True
        died = self.pool.died_workers(job.executor)
        return died is not None and start.pid not in died

    def _resubmit(self, job: Job) -> None:
        if job.resubmits >= MAX_RESUBMITS:
            self._finish(job, encode_error(WORKER_DIED), release=True)
            return
        job.resubmits += 1
        self.resubmitted += 1
        with self._lock:
            self._in_executor += 1  # a submission of its own, outside the round
        self._submit(job)

    def _finish(self, job: Job, reply: bytes, *, release: bool) -> None:
        """Give ``job`` its reply (once, unless abandoned); with ``release`` also take it off the books."""
        with self._lock:
            deliver = not job.settled and not job.abandoned
            job.settled = True
            if release and self._jobs.pop(job.id, None) is not None:
                self._release_slot(job)
        if deliver:
            job.on_reply(reply)

    def _submit_ready(self, ready: list[list[Job]]) -> None:
        """Submit the groups :meth:`_take_ready` released. A submission that fails at once finishes its jobs,
        which releases the next: those are queued to this thread's loop here instead of recursing, so a failing
        pool answers a long backlog without deepening the stack."""
        if not ready:
            return
        pending: deque[list[Job]] | None = getattr(self._local, "pending", None)
        if pending is not None:  # already submitting on this thread: the loop below takes them
            pending.extend(ready)
            return
        self._local.pending = pending = deque(ready)
        try:
            while pending:
                group = pending.popleft()
                if len(group) == 1:
                    self._submit(group[0])
                else:
                    self._submit_batch(group)
        finally:
            self._local.pending = None

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
            "cpu_rejected_over_share": self.preempted,
            "cpu_timeouts": self.timeouts,
            "cpu_jobs_resubmitted": self.resubmitted,
            "cpu_worker_failures": self.worker_failures,
            "cpu_batches": self.batches,
            "cpu_jobs_batched": self.batched_jobs,
            "cpu_args_shared": self._shared.shared if self._shared is not None else 0,
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
