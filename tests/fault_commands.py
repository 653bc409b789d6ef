"""Test-only commands for tests/integration/test_cpu_faults.py, loaded with ``--modules tests.fault_commands``.

They misbehave on purpose, in the ways a user's command module can: run for
a set wall-clock time (so a timeout or a backlog does not depend on how busy
the machine is), wait for a file the test creates, raise exceptions that
cannot cross a process boundary, return values RESP cannot carry, and fail
inside an inline command.
"""

from __future__ import annotations

import hashlib
import os
import time

from server.commands import bounded_bytes, bounded_int, cpu_command, inline_command

#: Longest BURN / WAITFILE in milliseconds: longer than any cpu timeout the tests set, short enough
#: that a test that goes wrong ends.
MAX_MS = 120_000

#: Seconds between checks for WAITFILE's file.
WAITFILE_POLL = 0.01


#: Largest DIGEST argument: past the 1 MiB the shared-memory tests send.
MAX_DIGEST_BYTES = 8 * 1024 * 1024


@cpu_command(
    "DIGEST",
    arity=3,
    argspec=(bounded_bytes("data", MAX_DIGEST_BYTES), bounded_int("ms", 0, MAX_MS)),
    summary="Busy-loop for ms, then the hex SHA-256 of data (a cpu command with a large argument).",
)
def digest(data: bytes, ms: int) -> str:
    burn(ms)
    return hashlib.sha256(data).hexdigest()


@cpu_command("BURN", arity=2, argspec=(bounded_int("ms", 0, MAX_MS),), summary="Busy-loop for ms of wall time.")
def burn(ms: int) -> int:
    end = time.monotonic() + ms / 1000
    spins = 0
    while time.monotonic() < end:
        spins += 1
    return ms


@cpu_command(
    "TRACE",
    arity=3,
    argspec=(bounded_bytes("path", 4096), bounded_int("ms", 0, MAX_MS)),
    summary="Append a line to path (proof the job reached a worker), then BURN ms.",
)
def trace(path: bytes, ms: int) -> int:
    with open(path, "a") as out:
        out.write(f"{os.getpid()}\n")
    return burn(ms)


@cpu_command(
    "WAITFILE",
    arity=3,
    argspec=(bounded_bytes("path", 4096), bounded_int("ms", 0, MAX_MS)),
    summary="Wait until path exists (1) or ms pass (0).",
)
def wait_file(path: bytes, ms: int) -> int:
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        if os.path.exists(path):
            return 1
        time.sleep(WAITFILE_POLL)
    return 0


class UnpicklableError(Exception):
    """Pickles (args = one message) but cannot be rebuilt: ``__init__`` wants two arguments."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


class UnpicklableBaseError(BaseException):
    """The same, outside ``Exception``: an ``except Exception`` in the worker does not catch it."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


@cpu_command("BADPICKLE", arity=1, argspec=(), summary="Raise an exception that cannot be unpickled.")
def bad_pickle() -> int:
    raise UnpicklableError("cannot", "unpickle")


@cpu_command("BADBASE", arity=1, argspec=(), summary="Raise a BaseException that cannot be unpickled.")
def bad_base() -> int:
    raise UnpicklableBaseError("cannot", "unpickle")


class _Opaque:
    pass


@cpu_command("BADVALUE", arity=1, argspec=(), summary="Return a value RESP cannot carry.")
def bad_value() -> object:
    return _Opaque()


@inline_command("BOOM", arity=1, summary="Fail inside an inline command.")
def boom(ctx: object, args: list[bytes]) -> object:
    raise RuntimeError("boom on purpose")
