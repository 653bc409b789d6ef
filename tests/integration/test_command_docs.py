"""COMMAND DOCS ``arguments`` as Redis 7 answers them, so redis-cli shows its argument hints (issue 16).

Differential: for every command crossdock and redis-server both have, the
``arguments`` of COMMAND DOCS must be the same reply; and redis-cli, typing
``SET `` in a terminal, shows the same hint against both.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import termios
import time

import pytest

from server.commands import default_registry
from server.commands.argdocs import REDIS_ARGUMENTS
from tests.client_fixtures import RedisServer
from tests.support import RespSocket, ServerProcess

#: Seconds redis-cli gets to start and to draw a hint before the test fails.
HINT_TIMEOUT = 10.0

#: Seconds without output after which redis-cli is taken to have finished drawing (it redraws per key typed).
QUIET = 0.5

#: The terminal redis-cli draws in: wide enough for SET's whole hint line.
TERMINAL_COLUMNS = 200


def _docs(host: str, port: int, names: list[str]) -> dict[str, dict[str, object]]:
    with RespSocket(host, port) as conn:
        reply = conn.call("COMMAND", "DOCS", *names)
    assert isinstance(reply, list)
    docs: dict[str, dict[str, object]] = {}
    for name, fields in zip(reply[::2], reply[1::2], strict=True):
        assert isinstance(fields, list)
        docs[name.decode() if isinstance(name, bytes) else str(name)] = {
            (key.decode() if isinstance(key, bytes) else str(key)): value
            for key, value in zip(fields[::2], fields[1::2], strict=True)
        }
    return docs


def test_arguments_are_redis_s(front_end: ServerProcess, redis_server: RedisServer) -> None:
    ours = sorted(command.name for command in default_registry())
    theirs = _docs(redis_server.host, redis_server.port, ours)
    mine = _docs(front_end.host, front_end.port, ours)
    shared = sorted(name for name in theirs if "arguments" in theirs[name])
    assert shared == sorted(REDIS_ARGUMENTS), "the argument table and redis-server disagree on which commands have any"
    for name in shared:
        assert mine[name].get("arguments") == theirs[name]["arguments"], name


def test_cpu_command_arguments_come_from_the_argspec(front_end: ServerProcess) -> None:
    docs = _docs(front_end.host, front_end.port, ["primes", "pbkdf2", "sleep"])
    assert docs["primes"]["arguments"] == [[b"name", b"n", b"type", b"integer"]]
    assert [argument[1] for argument in docs["pbkdf2"]["arguments"]] == [b"password", b"salt", b"iterations"]
    assert docs["sleep"]["arguments"] == [[b"name", b"milliseconds", b"type", b"integer"]]


def _hint(port: int, typed: bytes) -> str:
    """What redis-cli draws after ``typed`` in a terminal: the grey hint text."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: redis-cli on the pty
        os.execvp("redis-cli", ["redis-cli", "-p", str(port)])
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, TERMINAL_COLUMNS, 0, 0))
        output = b""
        deadline = time.monotonic() + HINT_TIMEOUT
        sent = False
        while time.monotonic() < deadline:
            if not sent and b"> " in output:
                os.write(fd, typed)
                sent = True
            ready, _, _ = select.select([fd], [], [], QUIET)
            if ready:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    break
                continue
            # Quiet: redis-cli has drawn the line for everything typed; its last hint is the one for ``typed``.
            hints = re.findall(rb"\x1b\[0;90;49m(.*?)\x1b\[0m", output)
            if sent and hints:
                return hints[-1].decode()
        raise AssertionError(f"redis-cli drew no hint within {HINT_TIMEOUT} s: {output[-300:]!r}")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli_shows_the_same_hints(front_end: ServerProcess, redis_server: RedisServer) -> None:
    for typed in (b"SET ", b"EXPIRE "):
        hint = _hint(front_end.port, typed)
        assert hint == _hint(redis_server.port, typed)
    assert _hint(front_end.port, b"SET ").startswith("key value [NX|XX] [GET] [EX seconds|PX milliseconds")
