"""The Dask executor: cpu commands run on a Dask distributed cluster (``--executor dask://HOST:PORT``).

:class:`DaskPool` has the surface of the process pool
(:class:`server.cpu.backend.CpuBackend`: an ``executor`` the cpu-job policy hands
to ``loop.run_in_executor`` or ``submit``, the job hooks ``job_call``,
``job_started``, ``stop_job``, and ``shutdown``, ``restarts``...), backed by
``distributed.Client(...).get_executor()``, distributed's
``concurrent.futures`` interface. Workers run the same
:func:`server.cpu.worker.run_job` the process pool runs (the reply is encoded on
the worker), so replies are the same bytes; functions pickle by reference
(cloudpickle), so the workers must be able to import ``server`` and every
``--modules`` module (start them from the same environment). ``distributed``
is imported only when this executor is chosen: the default server starts
without it.

Error handling:

- Start-up: the scheduler must answer within :data:`CONNECT_TIMEOUT`, and if
  workers are present one probe task must import the command modules on
  them; otherwise :class:`~server.cpu.backend.PoolStartError` and crossdock exits 1
  with a clear log line (a wrong address shows at once, not as a server that
  answers every cpu request with an error). A cluster with no workers yet is
  accepted: cpu requests get an error until one joins.
- Scheduler lost while serving: the Client cancels every future in flight
  (dask/distributed#413, #5667); each of those requests, and every new one
  until the scheduler is back, is answered at once with
  ``-ERR cpu executor unavailable: dask scheduler at tcp://HOST:PORT
  unreachable``. Nothing waits on a dead scheduler. Inline commands are not
  touched. The Client reconnects by itself for :data:`CONNECT_TIMEOUT` and
  then closes (dask/distributed#2582, PR #2639); from then on a supervisor
  thread opens a new Client until the scheduler answers again, so cpu
  requests work again without restarting crossdock.
- No workers: new cpu requests get ``-ERR cpu executor unavailable: dask
  cluster at ... has no workers``, and so do requests still queued when the
  supervisor sees the last worker gone (they would wait for one with no
  bound: the cpu timeout counts running time only). A request that had
  started is rescheduled by Dask and bounded by ``--cpu-timeout``.
- Any other failure of a task in the cluster (``KilledWorker`` after the task
  killed its workers ``allowed-failures`` times, a result that cannot be
  deserialised) is answered ``-ERR cpu task failed on the dask cluster: ...``.
- Every failure reaches the cpu-job policy (:mod:`server.cpu.jobs`) as a
  future failed with :class:`~server.cpu.backend.ExecutorError`, whose text is the
  reply; the executor's ``submit`` never raises. It is not a
  ``BrokenExecutor``: there is no local pool to replace and nothing to gain
  from resubmitting to an unreachable cluster.

The cpu timeout: each job announces its start from the worker (a Dask event,
:data:`START_TOPIC`), so ``--cpu-timeout`` counts running time, as with the
process pool. When it passes, the policy answers the timeout error and
:meth:`DaskPool.stop_job` cancels the Dask future. What that can and cannot
stop: a task still queued never runs; a task already running on a worker
thread runs to its end there (Python threads cannot be interrupted; Dask only
drops the result), so that thread stays busy until the function returns. A
client that goes away does not cancel its job (the policy's choice, as for
the process pool); its reply is dropped.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from server.cpu.backend import ExecutorError, JobStart, PoolStartError
from server.cpu.worker import run_cpu, run_job

if TYPE_CHECKING:
    from server.config import Config

log = structlog.get_logger("crossdock.dask")

#: Seconds to reach the scheduler: at start-up, for the Client's own reconnect after a loss, and for each
#: supervisor attempt after that. distributed's default is 30 s; 5 s is ample for a scheduler on a LAN to
#: accept and short enough that a wrong address fails start-up promptly.
CONNECT_TIMEOUT = 5.0

#: Seconds between supervisor checks of the scheduler connection and the worker count. A cpu request sees a
#: lost scheduler at once (the Client's status changes when the connection drops); this bounds only how
#: stale the worker count is, and how soon a restarted scheduler is picked up after the Client gave up.
SUPERVISE_INTERVAL = 0.5

#: Seconds the start-up probe may take on a worker. A shared cluster may be busy; past this the server
#: starts anyway (logged), as the probe checks imports, not capacity.
PROBE_TIMEOUT = 15.0

#: Seconds to close the Client at shutdown (the scheduler may already be gone).
CLOSE_TIMEOUT = 5.0

#: The Dask event topic a job's start is announced on (worker -> scheduler -> this server's Client), so the
#: cpu timeout counts running time, as with the process pool, not time queued on the scheduler.
START_TOPIC = "crossdock-job-start"

#: The reply a timed-out job gets if its cancellation outruns the timeout reply (threaded front end only;
#: the cpu-job policy's own timeout reply normally comes first and this is never sent).
STOPPED = "ERR cpu command timed out (cpu-timeout); its dask task was cancelled"

#: The URL scheme of ``--executor``.
SCHEME = "dask://"

MISSING_EXTRA = "--executor dask needs the dask extra: pip install 'crossdock[dask]' (distributed is not installed)"


def scheduler_address(executor: str) -> str:
    """``dask://HOST:PORT`` -> ``tcp://HOST:PORT`` (IPv6 as ``[::1]:PORT``).

    Error handling: anything else raises :class:`PoolStartError` naming the expected form.
    """
    rest = executor.removeprefix(SCHEME) if executor.startswith(SCHEME) else ""
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise PoolStartError(f"--executor must be dask://HOST:PORT, not {executor!r}")
    return f"tcp://{host}:{port}"


def run_dask_job(token: str, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """What a Dask worker runs for one cpu request: announce its start, then :func:`server.cpu.worker.run_job`.

    The announcement is a Dask event (``log_event``: batched to the
    scheduler, forwarded to the subscribed Client), tagged with the server's
    ``token`` so several crossdock servers can share one cluster.
    """
    try:
        from distributed import get_worker

        get_worker().log_event(START_TOPIC, [token, job_id, slot, os.getpid()])
    except Exception:  # not on a worker (a test calling it directly): nothing to announce to
        pass
    return run_job(job_id, slot, func, args)


def _probe(modules: Sequence[str]) -> tuple[str, int]:
    """Run on a worker at start-up: the command modules import there, and where it is."""
    importlib.import_module("server.commands")
    for module in modules:
        importlib.import_module(module)
    return socket.gethostname(), os.getpid()


class DaskExecutor(concurrent.futures.Executor):
    """The executor the front ends see: the current Client's executor, with crossdock's failure rules.

    It stays the same object when the supervisor replaces the Client, so a
    front end that captured ``pool.executor`` keeps working. Its futures
    resolve with the task's result or fail with :class:`ExecutorError`; they
    are never left hanging on a lost scheduler.
    """

    def __init__(self, pool: DaskPool) -> None:
        self._pool = pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Submit to the cluster. Never raises: when the cluster cannot take work the future fails at once."""
        # Left PENDING (not RUNNING) so that cancelling it, as asyncio does when the awaiting future is
        # cancelled, still works and reaches the Dask future.
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        pool = self._pool
        try:
            inner = pool.usable_executor().submit(fn, *args, **kwargs)
        except ExecutorError as exc:
            outer.set_exception(exc)
            return outer
        except Exception:  # the Client closed between the check and the submit
            outer.set_exception(pool.unavailable())
            return outer
        if fn is run_dask_job:
            pool.track(args[1], args[2], inner, outer)
        outer.add_done_callback(lambda done: inner.cancel() if done.cancelled() else None)
        inner.add_done_callback(lambda done: pool.settle(outer, done))
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The pool owns the Client; shutting the pool down closes it."""


class DaskPool:
    """The cpu executor on a Dask cluster: the process pool's surface, a supervised distributed.Client."""

    kind = "dask"

    def __init__(self, address: str, *, job_slots: int, modules: Sequence[str] = ()) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise PoolStartError(MISSING_EXTRA) from exc
        self._distributed = distributed
        self.address = address
        self.modules = tuple(modules)
        #: Clients opened after the first one gave up reconnecting (INFO ``pool_restarts``).
        self.restarts = 0
        #: Jobs outstanding at once (the cpu-job policy's slots), and the cluster's threads at the last check.
        self.job_slots = job_slots
        self.workers = 0
        #: Tags this server's job-start events on a cluster other servers may share.
        self._token = uuid.uuid4().hex
        #: slot -> (job id, where and since when it runs), from the job-start events.
        self._starts: dict[int, tuple[int, JobStart]] = {}
        #: slot -> (job id, the Dask executor's future, the front end's future), while the job is outstanding.
        self._jobs: dict[int, tuple[int, concurrent.futures.Future[Any], concurrent.futures.Future[Any]]] = {}
        #: Front-end futures of jobs stopped for a timeout.
        self._stopped: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        #: Cancelling a Dask future is a round trip to the scheduler: done here, never on the event loop.
        self._canceller = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dask-cancel")
        self._subscribed_on: Any = None
        #: (the scheduler connection it was counted on, worker count): a count from before a reconnect is stale.
        self._workers: tuple[Any, int] = (None, 0)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reconnect_failure_logged = False
        client = self._connect()
        #: (Client, its executor), swapped as one attribute so a reader never sees a mix of two Clients.
        self._current: tuple[Any, concurrent.futures.Executor] = (client, client.get_executor(pure=False))
        self._workers = self._count_workers(client)
        self._subscribe(client)
        self.executor = DaskExecutor(self)
        self._supervisor = threading.Thread(target=self._supervise, name="dask-supervisor", daemon=True)

    # -- the surface the front ends use --------------------------------------------------
    def usable_executor(self) -> concurrent.futures.Executor:
        """The current Client's executor, or :class:`ExecutorError` when the cluster cannot take work now.

        A status read and an integer check: no round trip to the scheduler.
        """
        client, executor = self._current
        counted_on, workers = self._workers
        if client.status != "running":
            raise self.unavailable()
        if counted_on is not client.scheduler_comm:  # the Client reconnected since the last count
            self._wake.set()
            raise self.unavailable(f"dask scheduler at {self.address} is back, its workers not counted yet")
        if workers == 0:
            raise self.unavailable(f"dask cluster at {self.address} has no workers")
        return executor

    def unavailable(self, reason: str | None = None) -> ExecutorError:
        """The error for a request the cluster cannot take; the reason defaults to an unreachable scheduler."""
        reason = reason or f"dask scheduler at {self.address} unreachable"
        return ExecutorError(f"ERR cpu executor unavailable: {reason}")

    def settle(self, outer: concurrent.futures.Future[Any], inner: concurrent.futures.Future[Any]) -> None:
        """Copy the Dask outcome to the front end's future, turning every failure into :class:`ExecutorError`."""
        if outer in self._stopped:
            error: BaseException | None = ExecutorError(STOPPED)
        elif inner.cancelled():  # distributed cancels every future in flight when the scheduler connection drops
            lost = f"dask scheduler at {self.address} lost while this request ran"
            error = self.unavailable(lost)
        else:
            error = inner.exception()
            if error is not None and not isinstance(error, ExecutorError):
                error = ExecutorError(f"ERR cpu task failed on the dask cluster: {type(error).__name__}: {error}")
        try:
            if error is None:
                outer.set_result(inner.result())
            else:
                outer.set_exception(error)
        except concurrent.futures.InvalidStateError:  # the front end cancelled it meanwhile: nobody is waiting
            pass

    def replace_broken(self, broken: concurrent.futures.Executor) -> bool:
        """Nothing local to replace (never called for this executor's own errors, which are not BrokenExecutor)."""
        return False

    # -- the job surface of the cpu-job policy (server.cpu.jobs.JobPool) -----------------------------
    def job_call(
        self, job_id: int, slot: int, func: Callable[..., Any], args: tuple[Any, ...]
    ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """Submit :func:`run_dask_job`: the job announces its start from the worker."""
        self._starts.pop(slot, None)
        return run_dask_job, (self._token, job_id, slot, func, args)

    def track(
        self, job_id: int, slot: int, inner: concurrent.futures.Future[Any], outer: concurrent.futures.Future[Any]
    ) -> None:
        """Remember a submitted job's futures until it is done, so a timeout can cancel it."""
        entry = (job_id, inner, outer)
        self._jobs[slot] = entry
        outer.add_done_callback(lambda _done: self._jobs.pop(slot, None) if self._jobs.get(slot) is entry else None)

    def died_workers(self, broken: object) -> frozenset[int] | None:
        """Which worker broke the client is not known here: any job that had started may be the cause."""
        return None

    def job_started(self, executor: object, job_id: int, slot: int) -> JobStart | None:
        """When job ``job_id`` started on a worker (its start event arrived), and the worker's pid; else None."""
        entry = self._starts.get(slot)
        return entry[1] if entry is not None and entry[0] == job_id else None

    def stop_job(self, executor: object, start: JobStart) -> None:
        """A job timed out: cancel its Dask future.

        A task still queued never runs; one already running on a worker
        thread runs to its end there (Python threads cannot be interrupted)
        and its result is dropped. The cancellation, a round trip to the
        scheduler, happens on a helper thread, never on the event loop.
        """
        for slot, (job_id, started) in list(self._starts.items()):
            if started is start:
                entry = self._jobs.get(slot)
                if entry is not None and entry[0] == job_id:
                    self._stopped.add(entry[2])
                    self._canceller.submit(entry[1].cancel)
                return

    def worker_count(self) -> int:
        """Dask workers the scheduler knew at the last check (0 while it is unreachable)."""
        client = self._current[0]
        counted_on, workers = self._workers
        return workers if client.status == "running" and counted_on is client.scheduler_comm else 0

    def worker_pids(self) -> list[int]:
        """Dask workers are not local processes: there are no pids to report."""
        return []

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the supervisor and close the Client (tasks still running on workers finish there, unread)."""
        self._stop.set()
        self._wake.set()
        if self._supervisor.is_alive():
            self._supervisor.join(CLOSE_TIMEOUT)
        self._canceller.shutdown(wait=False, cancel_futures=True)
        self._close_client(self._current[0])

    # -- start-up ------------------------------------------------------------------------
    def start(self) -> None:
        """Probe one worker (when there is one) and start the supervisor.

        Error handling: a probe that fails (the workers cannot import the
        command modules) raises :class:`PoolStartError`; one that does not
        finish within :data:`PROBE_TIMEOUT` is logged and start-up goes on.
        """
        if self._workers[1]:
            future = self.executor.submit(run_cpu, _probe, (self.modules,))
            try:
                tag, value = future.result(PROBE_TIMEOUT)
                log.debug("dask_probe_done", address=self.address, worker=value)
            except concurrent.futures.TimeoutError:
                future.cancel()
                log.warning("dask_probe_slow", address=self.address, timeout=PROBE_TIMEOUT)
            except ExecutorError as exc:
                self._close_client(self._current[0])
                raise PoolStartError(f"dask workers at {self.address} cannot run cpu commands: {exc}") from exc
            else:
                if tag != 0:
                    self._close_client(self._current[0])
                    raise PoolStartError(f"dask workers at {self.address} cannot import the command modules: {value}")
        else:
            log.warning("dask_no_workers", address=self.address, detail="cpu requests get an error until one joins")
        self._supervisor.start()

    def _connect(self) -> Any:
        """A new Client; ``distributed`` is in charge of retrying a refused connection within the timeout."""
        return self._distributed.Client(self.address, timeout=CONNECT_TIMEOUT, set_as_default=False)

    def _count_workers(self, client: Any) -> tuple[Any, int]:
        """(the Client's current scheduler connection, the workers the scheduler has): one round trip.

        Also sets :attr:`workers` to the cluster's threads (how many jobs run at once).
        """
        counted_on = client.scheduler_comm
        info = client.scheduler_info(n_workers=0)
        self.workers = int(info.get("total_threads", 0))
        return counted_on, int(info.get("n_workers", 0))

    def _subscribe(self, client: Any) -> None:
        """Receive job-start events on this Client's current scheduler connection (again after a reconnect)."""
        self._subscribed_on = client.scheduler_comm
        client.subscribe_topic(START_TOPIC, self._on_job_start)

    def _on_job_start(self, event: tuple[float, Any]) -> None:
        """On the Client's thread: a worker started one of this server's jobs."""
        _scheduler_time, message = event
        try:
            token, job_id, slot, pid = message
        except (TypeError, ValueError):
            return
        if token == self._token:
            self._starts[int(slot)] = (int(job_id), JobStart(int(pid), time.monotonic()))

    def _close_client(self, client: Any) -> None:
        try:
            client.close(timeout=CLOSE_TIMEOUT)
        except Exception:  # already closed, or the scheduler is gone: nothing left to release
            log.debug("dask_client_close_failed", exc_info=True)

    # -- supervision ---------------------------------------------------------------------
    def _supervise(self) -> None:
        """Keep the worker count fresh; open a new Client when the old one gave up reconnecting.

        Error handling: every failure here is logged once per state change and
        retried at the next tick; the thread ends only at shutdown.
        """
        reachable = True
        while not self._stop.is_set():
            self._wake.wait(SUPERVISE_INTERVAL)
            self._wake.clear()
            if self._stop.is_set():
                return
            client = self._current[0]
            status = client.status
            if status == "running":
                try:
                    workers = self._count_workers(client)
                except Exception:
                    continue
                if workers[1] == 0 and workers[0] is client.scheduler_comm:
                    self._fail_queued_jobs()
                if not reachable:
                    log.info("dask_scheduler_back", address=self.address, workers=workers[1])
                    reachable = True
                if workers[1] != self._workers[1]:
                    log.info("dask_workers_changed", address=self.address, workers=workers[1], before=self._workers[1])
                if client.scheduler_comm is not self._subscribed_on:  # the Client reconnected by itself
                    self._subscribe(client)
                self._workers = workers
                continue
            if reachable:
                log.warning("dask_scheduler_lost", address=self.address, detail="cpu requests get an error until back")
                reachable = False
            if status in ("closing", "closed"):  # the Client gave up its own reconnect
                self._reconnect(client)

    def _fail_queued_jobs(self) -> None:
        """No workers: answer the jobs that have not started, rather than let them wait for one unbounded."""
        error = self.unavailable(f"dask cluster at {self.address} has no workers")
        for slot, (job_id, inner, outer) in list(self._jobs.items()):
            started = self._starts.get(slot)
            if started is not None and started[0] == job_id:
                continue  # it ran and lost its worker: Dask reschedules it, the cpu timeout bounds it
            try:
                outer.set_exception(error)
            except concurrent.futures.InvalidStateError:  # done meanwhile
                continue
            self._canceller.submit(inner.cancel)

    def _reconnect(self, old: Any) -> None:
        try:
            client = self._connect()
        except (OSError, TimeoutError):
            return
        except Exception:
            if not self._reconnect_failure_logged:  # once per outage: this runs every few seconds
                log.warning("dask_reconnect_failed", address=self.address, exc_info=True)
                self._reconnect_failure_logged = True
            return
        self._reconnect_failure_logged = False
        if self._stop.is_set():
            self._close_client(client)
            return
        try:
            workers = self._count_workers(client)
        except Exception:
            workers = (None, 0)
        self._workers = workers
        self._subscribe(client)
        self._current = (client, client.get_executor(pure=False))
        self.restarts += 1
        self._close_client(old)


def start_dask_pool(config: Config) -> DaskPool:
    """Connect to the cluster ``config.executor`` names, probe a worker, log ``pool_ready``.

    Error handling: an unreachable scheduler, a missing ``distributed``, or
    workers that cannot import the commands raise :class:`PoolStartError`,
    which the CLI logs before exiting 1.
    """
    address = scheduler_address(config.executor)
    try:
        pool = DaskPool(address, modules=config.modules, job_slots=config.effective_cpu_queue_limit + config.workers)
    except PoolStartError:
        raise
    except (OSError, TimeoutError) as exc:
        raise PoolStartError(f"dask scheduler at {address} unreachable: {exc}") from exc
    pool.start()
    log.info("pool_ready", executor="dask", address=address, workers=pool.worker_count())
    return pool


__all__ = ["CONNECT_TIMEOUT", "DaskExecutor", "DaskPool", "scheduler_address", "start_dask_pool"]
