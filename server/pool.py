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
table of job slots (job id, pool generation, worker pid, start time) that the
front-end process reads without any message or lock. The cpu-job policy
(:mod:`server.cpu_jobs`) uses it to time out a request on its running time,
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
import importlib
import multiprocessing
import os
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import structlog

from server.commands.registry import CommandError
from server.protocol import encode_error, encode_reply

if TYPE_CHECKING:
    from server.config import Config

log = structlog.get_logger("crossdock.pool")

#: How long each pre-warm task holds its worker, so every worker is busy at
#: once and the pool must start all of them (ProcessPoolExecutor starts
#: workers on demand with forkserver/spawn).
PREWARM_HOLD_SECONDS = 0.05

#: Pre-warm rounds before giving up on seeing every worker answer (each round
#: normally suffices; more only on a machine too loaded to start them in time).
PREWARM_MAX_ROUNDS = 5

#: Workers run this much nicer than the front end. When cpu work saturates every core, the scheduler
#: then runs the front end as soon as a request arrives instead of letting it wait out a worker's time
#: slice (several ms): inline requests stay fast while the pool is busy. 10 gives a worker about a tenth
#: of the weight of the front end on a contested core (CFS weights 1024 vs 110); alone on a core it
#: loses nothing.
WORKER_NICE_INCREMENT = 10

#: Seconds between checks that the server is still alive, where a pidfd cannot be had (not Linux).
ORPHAN_POLL_INTERVAL = 1.0

#: Result tags: a worker returns (OK_TAG, value) or (ERROR_TAG, "ERR message"), and
#: :func:`run_job` returns (REPLY_TAG, encoded reply bytes).
OK_TAG = 0
ERROR_TAG = 1
REPLY_TAG = 2

#: Job slots per worker when the pool is built without an explicit count: the default cpu queue
#: bound (64 waiting per worker, :data:`server.config.DEFAULT_CPU_QUEUE_PER_WORKER`) plus the one
#: each worker is running. The policy never admits more jobs than there are slots.
DEFAULT_JOB_SLOTS_PER_WORKER = 65

#: int64 fields per job slot in the shared table: job id + 1 (0 = never used), pool generation,
#: worker pid, start time (time.monotonic_ns, one clock for every process on Linux).
_SLOT_FIELDS = 4


class JobStart(NamedTuple):
    """Where and when a job started: the worker's pid and its ``time.monotonic()`` at the start."""

    pid: int
    started: float


# -- in the worker process -------------------------------------------------------------------------
#: The shared job-slot table and this worker's pool generation, set by :func:`_worker_init`.
_job_slots: Any = None
_generation = 0


def _exit_with_server(server_pid: int) -> None:
    """Block until the server process ``server_pid`` is gone, then end this worker at once.

    A server that is SIGKILLed (or leaves through ``os._exit`` on a second
    signal) cannot shut its pool down, and a worker waits on its call queue
    for ever: without this, every such exit would leak a core's worth of
    processes. A pidfd (Linux 5.3+) becomes readable when the process exits,
    with no polling and no pid-reuse race; elsewhere the pid is polled.
    """
    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        while True:
            time.sleep(ORPHAN_POLL_INTERVAL)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid now belongs to another user's process: ours is gone
                os._exit(0)
    select.select([pidfd], [], [])
    os._exit(0)


def _worker_init(
    log_format: str,
    log_level: str,
    modules: Sequence[str],
    job_slots: Any = None,
    generation: int = 0,
    server_pid: int = 0,
) -> None:
    global _job_slots, _generation
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE_INCREMENT)
    if server_pid:
        threading.Thread(target=_exit_with_server, args=(server_pid,), name="exit-with-server", daemon=True).start()
    _job_slots, _generation = job_slots, generation
    from server.logging import configure_logging

    configure_logging(log_format, log_level, process_role="worker")
    importlib.import_module("server.commands")
    for module in modules:
        importlib.import_module(module)


def _warm_up() -> int:
    time.sleep(PREWARM_HOLD_SECONDS)
    return os.getpid()


def run_cpu(func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[int, Any]:
    """Run a cpu command in the worker and tag the outcome; never raises.

    Error handling: :class:`CommandError` becomes its reply text; any other
    exception is logged here (in the worker, with its traceback) and becomes
    ``ERR <type>: <message>``. Only plain strings cross back to the server.
    """
    try:
        return OK_TAG, func(*args)
    except CommandError as exc:
        return ERROR_TAG, exc.message
    except Exception as exc:
        structlog.get_logger("crossdock.worker").warning(
            "cpu_command_failed", function=getattr(func, "__name__", "?"), exc_info=True
        )
        return ERROR_TAG, f"ERR {type(exc).__name__}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception's own ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return "(unprintable exception)"


def run_job(job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[int, Any]:
    """What the pool runs for one cpu request: mark the job started, run it, encode its reply here.

    The start mark goes into the shared slot table first (job id written
    last, so a reader that sees the id sees the rest). Encoding the reply in
    the worker keeps the loop free of the work and means only bytes or an
    error string cross back.

    Error handling: never raises. A :class:`BaseException` that is not an
    :class:`Exception` (``SystemExit`` from a command, say) becomes an error
    string like any other; a value that cannot be encoded becomes
    ``ERR cpu command returned a value that cannot be sent``.
    """
    slots = _job_slots
    if slots is not None:
        base = slot * _SLOT_FIELDS
        slots[base + 1] = _generation
        slots[base + 2] = os.getpid()
        slots[base + 3] = time.monotonic_ns()
        slots[base] = job_id + 1
    try:
        tag, value = run_cpu(func, args)
        if tag != OK_TAG:
            return tag, value
        try:
            return REPLY_TAG, encode_reply(value)
        except TypeError:
            return ERROR_TAG, CANNOT_SEND
    except BaseException as exc:
        structlog.get_logger("crossdock.worker").warning(
            "cpu_command_failed", function=getattr(func, "__name__", "?"), exc_info=True
        )
        return ERROR_TAG, f"ERR {type(exc).__name__}: {_describe(exc)}"


class _Executor(concurrent.futures.ProcessPoolExecutor):
    """A ProcessPoolExecutor that knows its generation (which replacement of the pool it is)."""

    generation = 0


class JobPool(Protocol):
    """What :class:`server.cpu_jobs.CpuJobs` needs from an executor-owning pool (:class:`CpuPool` has it).

    ``executor`` is the current executor (replaced when broken); ``job_slots``
    bounds the jobs outstanding at once; ``job_call`` wraps one request for
    submission so that it marks its start; ``job_started`` reads that mark;
    ``stop_job`` stops the worker running a job (whatever else that costs the
    executor, its other jobs fail with an executor error and are resubmitted);
    ``replace_broken`` swaps in a fresh executor once per broken one;
    ``died_workers`` names the workers whose own death broke an executor
    (None when that cannot be told), so only the job running on one of them
    is failed and the others, stopped by the executor's fall, are rerun.
    """

    workers: int
    job_slots: int

    @property
    def executor(self) -> Any: ...

    def job_call(
        self, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]: ...

    def job_started(self, executor: Any, job_id: int, slot: int) -> JobStart | None: ...

    def stop_job(self, executor: Any, start: JobStart) -> None: ...

    def replace_broken(self, broken: Any) -> bool: ...

    def died_workers(self, broken: Any) -> frozenset[int] | None: ...


class CpuBackend(JobPool, Protocol):
    """What the front ends need from a cpu executor besides :class:`JobPool`: what INFO and the lifecycle use.

    :class:`CpuPool` here, or ``server.dask_executor.DaskPool``.
    """

    #: ``process`` or ``dask`` (INFO).
    kind: str
    #: Where the work goes: empty for the local pool, the scheduler's ``tcp://HOST:PORT`` for Dask.
    address: str
    #: How many times the executor (or the Dask client) was replaced after a failure.
    restarts: int

    def worker_count(self) -> int: ...

    def worker_pids(self) -> list[int]: ...

    def shutdown(self, *, wait: bool = True) -> None: ...


class PoolStartError(RuntimeError):
    """The cpu executor could not start (unreachable cluster, missing extra); the CLI logs it and exits 1."""


class ExecutorError(Exception):
    """A cpu request the executor failed for a reason of its own; ``str(error)`` is the whole reply text.

    Not a ``BrokenExecutor``: nothing local is broken and there is nothing to
    resubmit to; the cpu-job policy answers it with
    :func:`cpu_failure_reply`, which uses its text as it is.
    """


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

    # -- the job surface the cpu-job policy uses (server.cpu_jobs.JobPool) ------------------------
    def job_call(
        self, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The callable and arguments to submit to :attr:`executor` for one job (``0 <= slot < job_slots``)."""
        return run_job, (job_id, slot, func, args)

    def job_started(self, executor: object, job_id: int, slot: int) -> JobStart | None:
        """Whether job ``job_id`` has started on ``executor``, and on which worker since when; else None."""
        slots = self._slots
        base = slot * _SLOT_FIELDS
        if slots[base] != job_id + 1 or slots[base + 1] != getattr(executor, "generation", -1):
            return None
        return JobStart(slots[base + 2], slots[base + 3] / 1e9)

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


#: Reply for a cpu request whose worker died (or whose executor was shut down) before it finished.
WORKER_DIED = "ERR cpu worker died while running this request; the pool has been replaced"

#: Reply for a cpu command whose return value is not something RESP can carry.
CANNOT_SEND = "ERR cpu command returned a value that cannot be sent"


def cpu_reply(tagged: tuple[int, Any]) -> bytes:
    """Encode a worker's ``(tag, value)`` outcome from :func:`run_cpu` as reply bytes."""
    tag, value = tagged
    if tag == REPLY_TAG:
        return bytes(value)
    if tag == ERROR_TAG:
        return encode_error(value)
    try:
        return encode_reply(value)
    except TypeError:
        return encode_error(CANNOT_SEND)


def cpu_failure_reply(error: BaseException) -> bytes:
    """The error reply for a cpu request that never produced an outcome (its worker or executor is gone)."""
    if isinstance(error, ExecutorError):
        return encode_error(str(error))
    if isinstance(error, BrokenProcessPool | concurrent.futures.CancelledError):
        return encode_error(WORKER_DIED)
    return encode_error(f"ERR {type(error).__name__}: {error}")


def start_pool(config: Config) -> CpuBackend:
    """Create the executor the configuration asks for; the process pool is pre-warmed and logs its worker pids.

    ``--executor dask://HOST:PORT`` imports ``server.dask_executor`` (and
    ``distributed``) only then, so the default server starts without them.

    Error handling: a Dask cluster that cannot be used raises :class:`PoolStartError`.
    """
    if config.executor != "process":
        from server.dask_executor import start_dask_pool

        return start_dask_pool(config)
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


__all__ = [
    "CANNOT_SEND",
    "ERROR_TAG",
    "OK_TAG",
    "REPLY_TAG",
    "WORKER_DIED",
    "BrokenProcessPool",
    "CpuBackend",
    "CpuPool",
    "ExecutorError",
    "JobStart",
    "PoolStartError",
    "cpu_failure_reply",
    "cpu_reply",
    "run_cpu",
    "run_job",
    "start_pool",
]
