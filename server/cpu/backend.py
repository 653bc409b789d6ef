"""What the server side needs from a cpu executor, whichever backend runs it: the protocols, errors and replies.

The process pool (server.cpu.pool) and the Dask executor (server.cpu.dask)
both implement :class:`CpuBackend`; the cpu-job policy (server.cpu.jobs) and
the front ends see only this.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple, Protocol

from server.cpu.worker import CANNOT_SEND, ERROR_TAG, REPLY_TAG
from server.errors import CrossdockError
from server.protocol import encode_error, encode_reply


class JobStart(NamedTuple):
    """Where and when a job started: the worker's pid and its ``time.monotonic()`` at the start."""

    pid: int
    started: float


class JobPool(Protocol):
    """What :class:`server.cpu.jobs.CpuJobs` needs from an executor-owning pool (:class:`CpuPool` has it).

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

    :class:`CpuPool` here, or ``server.cpu.dask.DaskPool``.
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


class PoolStartError(CrossdockError, RuntimeError):
    """The cpu executor could not start (unreachable cluster, missing extra); the CLI logs it and exits 1."""


class ExecutorError(CrossdockError):
    """A cpu request the executor failed for a reason of its own; ``str(error)`` is the whole reply text.

    Not a ``BrokenExecutor``: nothing local is broken and there is nothing to
    resubmit to; the cpu-job policy answers it with
    :func:`cpu_failure_reply`, which uses its text as it is.
    """


#: Reply for a cpu request whose worker died (or whose executor was shut down) before it finished.
WORKER_DIED = "ERR cpu worker died while running this request; the pool has been replaced"


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
