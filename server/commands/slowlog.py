"""SLOWLOG GET/LEN/RESET/HELP as Redis has it; the log itself is :mod:`server.store.slowlog`.

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

from typing import TYPE_CHECKING

from server.commands.registry import CommandError, CommandSet, parse_int
from server.protocol.reply import OK

#: The commands this module declares; server.commands.default_registry installs them.
COMMANDS = CommandSet()

if TYPE_CHECKING:
    from server.commands.context import CommandContext

#: Entries SLOWLOG GET returns without a count, as Redis.
SLOWLOG_GET_DEFAULT = 10

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


@COMMANDS.inline(
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
