"""Worker-side code of the process pool: what runs inside each worker process, nothing of the server's side.

Workers ignore SIGINT (a Ctrl-C in the terminal reaches the whole process
group; the server decides when workers stop), configure their own logging,
import the command modules so functions unpickle by reference, and end when
the server process ends.

Workers return plain values only: :func:`run_cpu` turns every exception into
an error string, and :func:`run_job` (what the pool actually runs) also
encodes the reply in the worker, so only ``(int, bytes | str)`` ever crosses
back: nothing that fails to unpickle can reach the front end and break the
pool. Each job records its start in a shared-memory slot table (job id, pool
generation, worker pid, start time) that the server side reads without a
message or a lock (server.cpu.pool, server.cpu.jobs).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import shared_memory
from typing import Any, NamedTuple

import structlog

from server.errors import CommandError
from server.protocol import encode_reply

#: How long each pre-warm task holds its worker, so every worker is busy at
#: once and the pool must start all of them (ProcessPoolExecutor starts
#: workers on demand with forkserver/spawn).
PREWARM_HOLD_SECONDS = 0.05

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

#: int64 fields per job slot in the shared table: job id + 1 (0 = never used), pool generation,
#: worker pid, start time and end time (time.monotonic_ns, one clock for every process on Linux; the
#: end is 0 until the job has run, so its cost is read as work alone, without the trip back).
_SLOT_FIELDS = 5

#: Reply for a cpu command whose return value is not something RESP can carry.
CANNOT_SEND = "ERR cpu command returned a value that cannot be sent"


#: Shared-memory blocks a worker keeps mapped between jobs, at most this many (the server reuses a few blocks
#: for its large arguments, server.cpu.sharedargs) ...
MAX_KEPT_BLOCKS = 16
#: ... and only blocks up to this size: a larger one is unmapped after its job, so a worker never holds more
#: than MAX_KEPT_BLOCKS x 4 MiB of blocks the server has since let go.
MAX_KEPT_BLOCK_BYTES = 4 * 1024 * 1024


class SharedBytes(NamedTuple):
    """A ``bytes`` argument the server put in a shared-memory block (server.cpu.sharedargs): name and length."""

    name: str
    length: int


#: Blocks this worker has mapped, by name, oldest first.
_kept_blocks: dict[str, shared_memory.SharedMemory] = {}


def _attach(name: str) -> shared_memory.SharedMemory:
    block = _kept_blocks.pop(name, None)
    if block is None:
        # Python 3.11 registers an attached block with the resource tracker too; workers share the server's
        # tracker (forkserver and spawn pass it on), where the block is already registered, so that is a no-op
        # and the server's registration (which removes the block if the server is killed) stays.
        block = shared_memory.SharedMemory(name=name)
    if block.size <= MAX_KEPT_BLOCK_BYTES:
        _kept_blocks[name] = block  # newest last
        while len(_kept_blocks) > MAX_KEPT_BLOCKS:
            _kept_blocks.pop(next(iter(_kept_blocks))).close()
    return block


def _read_shared(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with each :class:`SharedBytes` read back into ``bytes`` (a command gets plain arguments)."""
    out = []
    for arg in args:
        if arg.__class__ is SharedBytes:
            block = _attach(arg.name)
            buf = block.buf
            assert buf is not None  # None only once closed
            out.append(bytes(buf[: arg.length]))
            if arg.name not in _kept_blocks:
                block.close()
        else:
            out.append(arg)
    return tuple(out)


#: The shared job-slot table, this worker's pool generation and its pid (read once: ``os.getpid`` is a system
#: call, and a job's start mark needs it), set by :func:`_worker_init`.
_job_slots: Any = None
_generation = 0
_pid = 0


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
    global _job_slots, _generation, _pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE_INCREMENT)
    if server_pid:
        threading.Thread(target=_exit_with_server, args=(server_pid,), name="exit-with-server", daemon=True).start()
    _job_slots, _generation, _pid = job_slots, generation, os.getpid()
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
    last, so a reader that sees the id sees the rest), and its end mark once
    the reply is encoded: the policy reads a command's cost of work from the
    two, not from when the result reaches the loop. Encoding the reply in
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
        slots[base + 2] = _pid
        slots[base + 3] = time.monotonic_ns()
        slots[base + 4] = 0
        slots[base] = job_id + 1
    try:
        for arg in args:  # a loop, not any() over a generator: most cpu requests have one small argument
            if arg.__class__ is SharedBytes:
                args = _read_shared(args)
                break
        tag, value = run_cpu(func, args)
        if tag == OK_TAG:
            try:
                tag, value = REPLY_TAG, encode_reply(value)
            except TypeError:
                tag, value = ERROR_TAG, CANNOT_SEND
        if slots is not None:
            slots[base + 4] = time.monotonic_ns()
        return tag, value
    except BaseException as exc:
        structlog.get_logger("crossdock.worker").warning(
            "cpu_command_failed", function=getattr(func, "__name__", "?"), exc_info=True
        )
        return ERROR_TAG, f"ERR {type(exc).__name__}: {_describe(exc)}"


def run_batch(
    items: list[tuple[int, int, Callable[..., Any], tuple[Any, ...]]], budget: float = 0.0
) -> list[tuple[int, Any]]:
    """What the pool runs for cpu requests handed out together: :func:`run_job` for each, in order.

    One submission, one pickle each way and one result for the lot, instead of
    one per request: per-call machinery, not computation, is what a small cpu
    request costs (issue 12). Each job still marks its own start, so timeouts
    count each request's own running time and a worker that dies costs only
    the job it was running (server.cpu.jobs reruns the others of the batch).
    Once ``budget`` seconds have gone (0: no budget) the results so far are
    returned; the server hands the jobs not reached out again.
    """
    results: list[tuple[int, Any]] = []
    started = time.monotonic()
    for job_id, slot, func, args in items:
        results.append(run_job(job_id, slot, func, args))
        if budget and time.monotonic() - started >= budget:
            break
    return results
