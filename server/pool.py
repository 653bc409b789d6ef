"""The process pool that runs cpu commands: start method, pre-warm, worker set-up, recovery.

Created once at start-up with forkserver (or spawn), never fork: forking a
process that runs an event loop and threads copies their locks in whatever
state they are in. Workers ignore SIGINT (a Ctrl-C in the terminal reaches
the whole process group; the server decides when workers stop), configure
their own logging, and import the command modules so functions unpickle by
reference.

Workers return plain values only: :func:`run_cpu` turns every exception into
an error string, so nothing that fails to unpickle can reach the front end
and break the pool.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

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

#: Result tags: a worker returns (OK_TAG, value) or (ERROR_TAG, "ERR message").
OK_TAG = 0
ERROR_TAG = 1


def _worker_init(log_format: str, log_level: str, modules: Sequence[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
        return ERROR_TAG, f"ERR {type(exc).__name__}: {exc}"


class CpuPool:
    """Owns the ProcessPoolExecutor; replaces it when a worker dies and the executor breaks."""

    def __init__(
        self,
        workers: int,
        *,
        start_method: str = "forkserver",
        log_format: str = "json",
        log_level: str = "info",
        modules: Sequence[str] = (),
    ) -> None:
        self.workers = workers
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(["server.commands", *modules])
        self._initargs = (log_format, log_level, tuple(modules))
        self.restarts = 0
        self.executor = self._new_executor()

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_worker_init,
            initargs=self._initargs,
        )

    def prewarm(self) -> set[int]:
        """Start every worker now, so the first request pays no start-up. Returns the worker pids."""
        seen: set[int] = set()
        for _ in range(PREWARM_MAX_ROUNDS):
            futures = [self.executor.submit(_warm_up) for _ in range(self.workers)]
            seen.update(future.result() for future in futures)
            if len(seen) >= self.workers:
                break
        return seen

    def worker_pids(self) -> list[int]:
        """The pids of the live worker processes (for tests and INFO)."""
        processes = getattr(self.executor, "_processes", None) or {}
        return [pid for pid, process in processes.items() if process.is_alive()]

    def replace_broken(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        """Swap in a new executor if ``broken`` is still the current one (a worker died).

        Error handling: requests already in flight on the broken executor fail
        with BrokenProcessPool and are answered with an error by their front
        end; new requests go to the replacement.
        """
        if broken is not self.executor:
            return
        log.warning("pool_broken_replacing", workers=self.workers)
        self.executor = self._new_executor()
        self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, *, wait: bool = True) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=True)


#: Reply for a cpu request whose worker died (or whose executor was shut down) before it finished.
WORKER_DIED = "ERR cpu worker died while running this request; the pool has been replaced"


def cpu_reply(tagged: tuple[int, Any]) -> bytes:
    """Encode a worker's ``(tag, value)`` outcome from :func:`run_cpu` as reply bytes."""
    tag, value = tagged
    if tag == ERROR_TAG:
        return encode_error(value)
    try:
        return encode_reply(value)
    except TypeError:
        return encode_error("ERR cpu command returned a value that cannot be sent")


def cpu_failure_reply(error: BaseException) -> bytes:
    """The error reply for a cpu request that never produced an outcome (its worker or executor is gone)."""
    if isinstance(error, BrokenProcessPool | concurrent.futures.CancelledError):
        return encode_error(WORKER_DIED)
    return encode_error(f"ERR {type(error).__name__}: {error}")


def start_pool(config: Config) -> CpuPool:
    """Create the pool the configuration asks for, pre-warm it and log its worker pids."""
    pool = CpuPool(
        config.workers,
        start_method=config.start_method,
        log_format="json" if config.log_format == "auto" else config.log_format,
        log_level=config.log_level,
        modules=config.modules,
    )
    pids = pool.prewarm()
    log.info("pool_ready", workers=config.workers, start_method=config.start_method, pids=sorted(pids))
    return pool


__all__ = [
    "ERROR_TAG",
    "OK_TAG",
    "WORKER_DIED",
    "BrokenProcessPool",
    "CpuPool",
    "cpu_failure_reply",
    "cpu_reply",
    "run_cpu",
    "start_pool",
]
