"""SLOWLOG GET/LEN/RESET/HELP as Redis has it, and the log it reads.

Every command that takes ``--slowlog-threshold-ms`` or longer (Redis's
``slowlog-log-slower-than``; a negative threshold turns it off) gets an entry
from the dispatcher, at the same place the ``slow_command`` log line is
written; a cpu command's duration is measured when its reply arrives, so it
includes its wait for a worker. An entry is Redis's six fields: id, unix
time, duration in microseconds, the arguments (truncated as Redis truncates
them), the client's address and its name. The newest
:data:`SLOWLOG_MAX_LEN` entries are kept.

Under the threaded front end entries are added from many threads: ids come
from ``itertools.count`` and the entries live in a bounded ``deque``, both
safe to use from several threads in CPython without a lock.
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.commands.registry import CommandError, inline_command, parse_int
from server.protocol.reply import OK

if TYPE_CHECKING:
    from server.commands.context import CommandContext
    from server.state import ClientState

#: Entries kept: Redis's slowlog-max-len default. Older entries are dropped as new ones arrive.
SLOWLOG_MAX_LEN = 128

#: Arguments kept per entry (Redis's SLOWLOG_ENTRY_MAX_ARGC); the last kept one says how many more there were.
SLOWLOG_ENTRY_MAX_ARGC = 32

#: Bytes kept per argument (Redis's SLOWLOG_ENTRY_MAX_STRING); a longer one ends "... (N more bytes)".
SLOWLOG_ENTRY_MAX_STRING = 128

#: Entries SLOWLOG GET returns without a count, as Redis.
SLOWLOG_GET_DEFAULT = 10

#: What Redis logs in place of a secret argument.
REDACTED = b"(redacted)"


def _redact(args: list[bytes]) -> list[bytes]:
    """Passwords never reach the slow log: AUTH's arguments and HELLO's ``AUTH user pass``, as Redis redacts them."""
    name = args[0].lower()
    if name == b"auth":
        return [args[0], *([REDACTED] * (len(args) - 1))]
    if name == b"hello":
        redacted = list(args)
        for index, arg in enumerate(args):
            if arg.lower() == b"auth":
                redacted[index + 1 : index + 3] = [REDACTED] * len(redacted[index + 1 : index + 3])
        return redacted
    return args


def entry_args(args: list[bytes]) -> list[bytes]:
    """The arguments as a slow-log entry keeps them: at most 32, each at most 128 bytes plus a note."""
    args = _redact(args)
    kept = min(len(args), SLOWLOG_ENTRY_MAX_ARGC)
    out: list[bytes] = []
    for index in range(kept):
        if kept != len(args) and index == kept - 1:
            out.append(b"... (%d more arguments)" % (len(args) - kept + 1))
            break
        arg = args[index]
        if len(arg) > SLOWLOG_ENTRY_MAX_STRING:
            arg = arg[:SLOWLOG_ENTRY_MAX_STRING] + b"... (%d more bytes)" % (len(arg) - SLOWLOG_ENTRY_MAX_STRING)
        out.append(bytes(arg))
    return out


@dataclass(frozen=True, slots=True)
class SlowLogEntry:
    id: int
    timestamp: int
    duration_us: int
    args: list[bytes]
    client_addr: str
    client_name: bytes

    def reply(self) -> list[object]:
        """The entry as SLOWLOG GET sends it."""
        return [self.id, self.timestamp, self.duration_us, self.args, self.client_addr, self.client_name]


class SlowLog:
    """The newest :data:`SLOWLOG_MAX_LEN` slow commands, newest first."""

    def __init__(self, max_len: int = SLOWLOG_MAX_LEN) -> None:
        self._entries: collections.deque[SlowLogEntry] = collections.deque(maxlen=max_len)
        self._ids = itertools.count()

    def add(self, args: list[bytes], duration_us: int, client: ClientState | None) -> None:
        """Log one command that took ``duration_us``; ``client`` is None when it has gone away meanwhile."""
        self._entries.appendleft(
            SlowLogEntry(
                id=next(self._ids),
                timestamp=int(time.time()),
                duration_us=duration_us,
                args=entry_args(args),
                client_addr=client.addr if client is not None else "",
                client_name=client.name if client is not None else b"",
            )
        )

    def newest(self, count: int) -> list[SlowLogEntry]:
        return list(itertools.islice(list(self._entries), count))

    def reset(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_HELP = [
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Print this help.",
]

#: Subcommand -> Redis 7 arity (command name included).
_ARITY = {b"GET": -2, b"LEN": 2, b"RESET": 2, b"HELP": 2}


@inline_command(
    "SLOWLOG",
    arity=-2,
    summary="A container for slow log commands: GET [count], LEN, RESET, HELP.",
    group="server",
    since="2.2.12",
    subcommands=("get", "len", "reset", "help"),
)
def slowlog(ctx: CommandContext, args: list[bytes]) -> object:
    """SLOWLOG with Redis 7's container-command errors (unknown subcommand, ``slowlog|get`` arity)."""
    sub = args[1].upper()
    arity = _ARITY.get(sub)
    if arity is None:
        raise CommandError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try SLOWLOG HELP.")
    if arity >= 0 and len(args) != arity:
        raise CommandError(f"ERR wrong number of arguments for 'slowlog|{sub.decode().lower()}' command")
    if len(args) > 3:  # slowlog|get passes Redis's arity check (-2), then its own: at most a count
        raise CommandError(
            f"ERR unknown subcommand or wrong number of arguments for '{args[1].decode(errors='replace')}'. "
            "Try SLOWLOG HELP."
        )
    log = ctx.server.slowlog
    if sub == b"LEN":
        return len(log)
    if sub == b"RESET":
        log.reset()
        return OK
    if sub == b"HELP":
        return _HELP
    count = SLOWLOG_GET_DEFAULT
    if len(args) == 3:
        try:
            count = parse_int(args[2])
        except CommandError:
            raise CommandError("ERR count should be greater than or equal to -1") from None
        if count < -1:
            raise CommandError("ERR count should be greater than or equal to -1")
        if count == -1:
            count = len(log)
    return [entry.reply() for entry in log.newest(count)]
