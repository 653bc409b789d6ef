"""The process pool that runs cpu commands: start method, pre-warm, worker set-up, recovery.

Created once at start-up with forkserver (or spawn), never fork: forking a
process that runs an event loop and threads copies their locks in whatever
state they are in. Workers ignore SIGINT (a Ctrl-C in the terminal reaches
the whole process group; the server decides when workers stop), configure
their own logging, and import the command modules so functions unpickle by
reference.

Workers return plain values only: :func:`run_cpu` turns every exception into
an error string, and :func:`run_job` (what the pool actually runs) also
encodes the reply in the worker, so only ``(int, bytes | str)`` ever crosses
back: nothing that fails to unpickle can reach the front end and break the
pool (ProcessPoolExecutor marks itself broken for good when a result does
not unpickle).

Each job also records, at its start, which worker runs it: a shared-memory
table of job slots (job id, pool generation, worker pid, start and end time) that the
front-end process reads without any message or lock. The cpu-job policy
(:mod:`server.cpu.jobs`) uses it to time out a request on its running time,
not its queueing time, to stop the right worker, and to tell a request that
was running on a crashed pool from one that was still waiting.

Error handling: a dead worker breaks the whole ProcessPoolExecutor; the pool
swaps in a fresh executor once per broken one (under a lock, whoever notices
first), starts and pre-warms its workers in a background thread so the event
loop never waits for process start-up, and logs ``pool_replaced`` once. When
the replacement cannot be built because descriptors (or memory) ran out, the
broken executor stays current and ``pool_replace_failed`` is logged once;
each later cpu request tries the replacement again (and gets an error reply
at once while it fails), so the pool comes back as soon as descriptors do.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from server.cpu.backend import JobStart
from server.cpu.sharedargs import SharedArgs
from server.cpu.worker import _SLOT_FIELDS, _warm_up, _worker_init, run_batch, run_job

if TYPE_CHECKING:
    from server.config import Config

log = structlog.get_logger("crossdock.pool")

#: Pre-warm rounds before giving up on seeing every worker answer (each round
#: normally suffices; more only on a machine too loaded to start them in time).
PREWARM_MAX_ROUNDS = 5

#: Job slots per worker when the pool is built without an explicit count: the default cpu queue
#: bound (64 waiting per worker, :data:`server.config.DEFAULT_CPU_QUEUE_PER_WORKER`) plus the one
#: each worker is running. The policy never admits more jobs than there are slots.
DEFAULT_JOB_SLOTS_PER_WORKER = 65


class _Executor(concurrent.futures.ProcessPoolExecutor):
    """A ProcessPoolExecutor that knows its generation (which replacement of the pool it is)."""

    generation = 0


class CpuPool:
    """Owns the ProcessPoolExecutor; replaces it when a worker dies and the executor breaks."""

    kind = "process"
    address = ""

    def __init__(
        self,
        workers: int,
        *,
        start_method: str = "forkserver",
        log_format: str = "json",
        log_level: str = "info",
        modules: Sequence[str] = (),
        job_slots: int | None = None,
    ) -> None:
        self.workers = workers
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(["server.commands", *modules])
        self._initargs = (log_format, log_level, tuple(modules))
        #: How many jobs may be outstanding at once (each needs a slot in the shared table).
        self.job_slots = job_slots or DEFAULT_JOB_SLOTS_PER_WORKER * workers
        self._slots: Any = self._context.RawArray("q", self.job_slots * _SLOT_FIELDS)
        self.restarts = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._closed = False
        #: True from a replacement that failed (descriptors or memory ran out) until one succeeds.
        self.replace_failing = False
        #: Broken executor -> pids of the workers that died on their own (see :meth:`died_workers`).
        self._culprits: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()
        self.executor: concurrent.futures.ProcessPoolExecutor = self._new_executor()
        #: Large bytes arguments go to the workers through shared memory (server.cpu.sharedargs).
        self.shared_args = SharedArgs()

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        executor = _Executor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_worker_init,
            initargs=(*self._initargs, self._slots, self._generation, os.getpid()),
        )
        executor.generation = self._generation
        return executor

    def prewarm(self, executor: concurrent.futures.ProcessPoolExecutor | None = None) -> set[int]:
        """Start every worker now, so the first request pays no start-up. Returns the worker pids."""
        executor = executor or self.executor
        seen: set[int] = set()
        for _ in range(PREWARM_MAX_ROUNDS):
            futures = [executor.submit(_warm_up) for _ in range(self.workers)]
            seen.update(future.result() for future in futures)
            if len(seen) >= self.workers:
                break
        return seen

    # -- the job surface the cpu-job policy uses (server.cpu.jobs.JobPool) ------------------------
    def job_call(
        self, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The callable and arguments to submit to :attr:`executor` for one job (``0 <= slot < job_slots``)."""
        return run_job, (job_id, slot, func, args)

    def batch_call(
        self, items: list[tuple[int, int, Callable[..., Any], tuple[Any, ...]]], budget: float
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """What to submit for several jobs at once (``(job_id, slot, func, args)`` each): back after ``budget`` s."""
        return run_batch, (items, budget)

    def job_started(self, executor: object, job_id: int, slot: int) -> JobStart | None:
        """Whether job ``job_id`` has started on ``executor``, and on which worker since when; else None."""
        slots = self._slots
        base = slot * _SLOT_FIELDS
        if slots[base] != job_id + 1 or slots[base + 1] != getattr(executor, "generation", -1):
            return None
        return JobStart(slots[base + 2], slots[base + 3] / 1e9)

    def job_ended(self, executor: object, job_id: int, slot: int) -> float | None:
        """When job ``job_id`` ended its run on ``executor`` (``time.monotonic()``, its worker's mark); else None."""
        slots = self._slots
        base = slot * _SLOT_FIELDS
        if slots[base] != job_id + 1 or slots[base + 1] != getattr(executor, "generation", -1) or not slots[base + 4]:
            return None
        return float(slots[base + 4]) / 1e9

    def stop_job(self, executor: concurrent.futures.ProcessPoolExecutor, start: JobStart) -> None:
        """Stop the worker that runs a job (it timed out): replace the executor, then SIGKILL that worker.

        ProcessPoolExecutor cannot lose one worker and go on, so the whole
        executor is replaced; when the kill lands it marks itself broken,
        terminates its other workers and fails their futures with
        BrokenProcessPool (the policy resubmits those: they did nothing wrong).

        Error handling: a worker that already exited is not an error; a pid
        that is not one of ``executor``'s workers is never signalled.
        """
        processes = dict(getattr(executor, "_processes", None) or {})
        self._replace(executor, reason="cpu_timeout", shutdown_old=False)
        if start.pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(start.pid, signal.SIGKILL)
        executor.shutdown(wait=False, cancel_futures=True)

    def worker_count(self) -> int:
        """Live worker processes (INFO ``executor_workers``)."""
        return len(self.worker_pids())

    def worker_pids(self) -> list[int]:
        """The pids of the live worker processes (for tests and INFO)."""
        processes = getattr(self.executor, "_processes", None) or {}
        return [pid for pid, process in processes.items() if process.is_alive()]

    def replace_broken(self, broken: concurrent.futures.ProcessPoolExecutor) -> bool:
        """Swap in a new executor if ``broken`` is still the current one (a worker died). True if it did.

        Safe to call from many threads and callbacks at once for the same
        broken executor: one replacement, one log line.

        Error handling: requests already in flight on the broken executor fail
        with BrokenProcessPool; the cpu-job policy answers or resubmits them.
        New requests go to the replacement.
        """
        self._note_culprits(broken)
        return self._replace(broken, reason="worker_died", shutdown_old=True)

    def died_workers(self, broken: concurrent.futures.ProcessPoolExecutor) -> frozenset[int] | None:
        """The pids of ``broken``'s workers that died on their own; None if none can be told apart.

        A ProcessPoolExecutor that sees one worker die fails every future it
        holds and SIGTERMs its other workers: the request that was running on
        a survivor did nothing wrong. A worker that died on its own shows an
        exit status other than SIGTERM's (SIGKILL from the OOM killer or a
        person, a segfault, an ``os._exit``), read once when the break is first
        noticed; when every worker shows SIGTERM (someone SIGTERMed a worker)
        the culprit cannot be told and None says "any of them".
        """
        self._note_culprits(broken)
        return self._culprits.get(broken) or None

    def _note_culprits(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if broken in self._culprits:
                return
            processes = dict(getattr(broken, "_processes", None) or {})  # None once shut down
            self._culprits[broken] = frozenset(
                pid for pid, process in processes.items() if process.exitcode not in (None, -signal.SIGTERM)
            )

    def _replace(self, old: concurrent.futures.ProcessPoolExecutor, *, reason: str, shutdown_old: bool) -> bool:
        with self._lock:
            if old is not self.executor or self._closed:
                return False
            self._generation += 1
            try:
                new = self._new_executor()  # its queues need pipes; no process starts here (the pre-warm's job)
            except OSError as exc:  # EMFILE/ENFILE/ENOMEM: keep the old one; the next request tries again
                self._generation -= 1
                failing_before, self.replace_failing = self.replace_failing, True
                if not failing_before:  # one line per episode
                    log.warning("pool_replace_failed", reason=reason, error=f"{type(exc).__name__}: {exc}")
                return False
            self.executor = new
            self.restarts += 1
            recovered, self.replace_failing = self.replace_failing, False
        if recovered:
            log.info("pool_replace_recovered", restarts=self.restarts)
        log.warning("pool_replaced", reason=reason, restarts=self.restarts, workers=self.workers)
        if shutdown_old:
            old.shutdown(wait=False, cancel_futures=True)
        threading.Thread(target=self._prewarm_replacement, args=(new,), name="pool-prewarm", daemon=True).start()
        return True

    def _prewarm_replacement(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        """Start a replacement's workers off the event loop; log ``pool_ready`` with their pids."""
        try:
            pids = self.prewarm(executor)
        except Exception as exc:  # broken again or shut down meanwhile: the next failure is handled as usual
            log.warning("pool_prewarm_failed", error=f"{type(exc).__name__}: {exc}")
            return
        log.info("pool_ready", workers=self.workers, pids=sorted(pids), restarts=self.restarts)

    def shutdown(self, *, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            executor = self.executor
        executor.shutdown(wait=wait, cancel_futures=True)
        self.shared_args.close()


def start_process_pool(config: Config) -> CpuPool:
    """Start the local process pool, pre-warmed (every worker answers once); logs its worker pids."""
    pool = CpuPool(
        config.workers,
        start_method=config.start_method,
        log_format="json" if config.log_format == "auto" else config.log_format,
        log_level=config.log_level,
        modules=config.modules,
        job_slots=config.effective_cpu_queue_limit + config.workers,
    )
    pids = pool.prewarm()
    log.info("pool_ready", workers=config.workers, start_method=config.start_method, pids=sorted(pids))
    return pool
