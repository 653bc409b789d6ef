"""What the sync client, the asyncio client and the CLI share: defaults, the reply parser, reply checks.

No I/O here. RESP2 itself (encoding requests, parsing replies) lives in
:mod:`server.protocol`, the sans-IO core the servers use too; the clients
never parse RESP on their own.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from clients.errors import ReplyError
from server.protocol import ErrorReply, ReplyParser, cores, encode_command

#: Where a client connects when not told otherwise: crossdock's own port
#: (``crossdock serve`` listens on 7379 by default; Redis's 6379 plus 1000, so
#: both can run side by side on a developer machine).
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7379

#: Seconds a TCP connect (plus AUTH, when a password is given) may take.
#: On a LAN or loopback a connect takes well under a millisecond; 5 s covers a
#: congested network or a busy server's accept backlog, yet a dead host or a
#: black-holed port still fails fast enough for a person or a retry loop.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0

#: Default per-command timeout: none. Commands here legitimately take long
#: (``SLEEP``, ``PRIMES``, Redis's ``BLPOP key 0``), and only the caller knows
#: how long its command may take; redis-py makes the same choice.
DEFAULT_COMMAND_TIMEOUT: Final = None

#: Bytes asked of the socket per read. 64 KiB is the common socket receive
#: buffer size, so one read usually empties the kernel buffer, and it is small
#: enough that a read never holds much memory beyond the reply itself.
READ_CHUNK_SIZE: Final = 64 * 1024


class _Default(enum.Enum):
    """Sentinel type for "use the client's default timeout" (``None`` already means "no timeout")."""

    TOKEN = "DEFAULT"


#: Pass as ``timeout=`` (or leave it out) to use the client's own default.
DEFAULT: Final = _Default.TOKEN

TimeoutArg = float | None | _Default


def resolve_timeout(timeout: TimeoutArg, default: float | None) -> float | None:
    """Turn a call's ``timeout`` argument into seconds or ``None``.

    Error handling: a negative timeout is a caller's bug and raises
    :class:`ValueError` before anything is sent.
    """
    if timeout is DEFAULT:
        return default
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return timeout


def make_parser(decode: bool, core: str | None) -> ReplyParser:
    """One reply parser per connection: it keeps the partial reply between reads.

    ``core`` names the parser core (``"pure"`` or ``"mypyc"``; ``None``: the one this process runs).
    Error handling: a core not built here raises :class:`RuntimeError`.
    """
    if core is None:
        return ReplyParser(decode=decode)
    return cores.select(core).reply_parser.ReplyParser(decode=decode)


def check_reply(reply: Any) -> Any:
    """Return ``reply``, or raise it as :class:`ReplyError` when it is a top-level error reply.

    Errors nested inside an array reply (one failed command inside ``EXEC``,
    say) are left in place as :class:`server.protocol.ErrorReply` values (a
    ``str`` with ``.code``): raising would throw away the other elements.
    """
    if isinstance(reply, ErrorReply):
        raise ReplyError(str(reply))
    return reply


def as_result(reply: Any) -> Any:
    """A pipeline's view of one reply: error replies become :class:`ReplyError` instances, not raised."""
    if isinstance(reply, ErrorReply):
        return ReplyError(str(reply))
    return reply


def auth_payload(username: str | None, password: str | None) -> bytes | None:
    """The AUTH request sent right after connecting, or ``None`` when no password is set.

    ``AUTH password`` for a password alone (Redis's ``requirepass``),
    ``AUTH username password`` with a username (Redis 6 ACL users).

    Error handling: a username without a password raises :class:`ValueError`,
    since AUTH has no form for it.
    """
    if password is None:
        if username is not None:
            raise ValueError("a username needs a password")
        return None
    if username is None:
        return encode_command("AUTH", password)
    return encode_command("AUTH", username, password)
