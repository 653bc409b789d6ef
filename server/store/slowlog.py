"""The slow log: the newest slow commands, their arguments truncated and secrets redacted as Redis does.

The dispatcher adds an entry for every command that takes ``--slowlog-threshold-ms``
or longer; SLOWLOG (server.commands.slowlog) reads it. Under the threaded front
end entries are added from many threads: ids come from ``itertools.count`` and
the entries live in a bounded ``deque``, both safe to use from several threads in
CPython without a lock.
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass
from typing import Protocol


class SlowLogClient(Protocol):
    """What an entry records of the client that sent the command."""

    addr: str
    name: bytes


#: Entries kept: Redis's slowlog-max-len default. Older entries are dropped as new ones arrive.
SLOWLOG_MAX_LEN = 128

#: Arguments kept per entry (Redis's SLOWLOG_ENTRY_MAX_ARGC); the last kept one says how many more there were.
SLOWLOG_ENTRY_MAX_ARGC = 32

#: Bytes kept per argument (Redis's SLOWLOG_ENTRY_MAX_STRING); a longer one ends "... (N more bytes)".
SLOWLOG_ENTRY_MAX_STRING = 128

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

    def add(self, args: list[bytes], duration_us: int, client: SlowLogClient | None) -> None:
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
