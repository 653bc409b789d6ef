"""What the sync client, the asyncio client and the CLI share: defaults, the handshake, reply checks, messages.

No I/O here. RESP itself (encoding requests, parsing replies) lives in
:mod:`server.protocol`, the sans-IO core the servers use too; the clients
never parse RESP on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass
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


#: The protocol a client asks for with ``HELLO`` when not told otherwise: RESP3, as the clients of 2026 do
#: (redis-py 8, node-redis 6, go-redis 9). A server that refuses HELLO 3 gets RESP2 instead, without a warning.
DEFAULT_PROTOCOL: Final = 3
PROTOCOLS: Final = (2, 3)


def check_protocol(protocol: int) -> int:
    """Error handling: anything but 2 or 3 raises :class:`ValueError` before connecting."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 2 or 3, not {protocol!r}")
    return protocol


def hello_payload(username: str | None, password: str | None) -> bytes:
    """``HELLO 3``, with ``AUTH`` in it when a password is given (one round trip, as redis-py does)."""
    if password is None:
        if username is not None:
            raise ValueError("a username needs a password")
        return encode_command("HELLO", 3)
    return encode_command("HELLO", 3, "AUTH", username or "default", password)


def hello_refused(reply: Any) -> bool:
    """Whether a HELLO 3 error leaves the connection usable in RESP2, so the client goes on with RESP2.

    NOPROTO or an unknown HELLO (Redis < 6): the server speaks RESP2 only.
    NOAUTH: a password is required and none was given; the connection stays
    open (and RESP2), its commands answer NOAUTH until an AUTH, as with any
    client that connects without credentials. Any other error (WRONGPASS...)
    is a real failure and is raised.
    """
    if not isinstance(reply, ErrorReply):
        return False
    return reply.code in ("NOPROTO", "NOAUTH") or (reply.code == "ERR" and "unknown command" in reply)


#: The opening exchange without I/O: yields each request to send, takes its reply, returns the protocol in use.
Handshake = Generator[bytes, Any, int]


def handshake(hello: bytes | None, auth: bytes | None) -> Handshake:
    """What a client sends right after connecting and what it makes of the replies; both clients drive this one.

    With ``hello`` (RESP3 asked for): ``HELLO 3``, which carries the AUTH; a
    server that refuses it in a way that leaves the connection usable
    (:func:`hello_refused`) gets RESP2 and a plain AUTH instead. Without:
    AUTH when a password is set. Returns 3 after an accepted HELLO, else 2.
    Error handling: any other refusal of HELLO or AUTH raises :class:`ReplyError`.
    """
    if hello is not None:
        reply = yield hello
        if not hello_refused(reply):
            check_reply(reply)
            return 3
    if auth is not None:
        check_reply((yield auth))
    return 2


@dataclass(frozen=True)
class Message:
    """One pub/sub event: a message (``kind`` ``message`` / ``pmessage``) or a (un)subscribe confirmation.

    ``channel`` is the channel (or the pattern, for ``psubscribe``/``punsubscribe``),
    ``pattern`` the matching pattern of a ``pmessage``, ``data`` the payload of a
    message or the subscription count of a confirmation.
    """

    kind: str
    channel: bytes | str | None
    data: Any
    pattern: bytes | str | None = None


#: Commands whose replies are pub/sub events, not one reply: sent by the clients' subscribe methods only.
SUBSCRIPTION_COMMANDS: Final = frozenset(
    {"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE"}
)


def resets_subscriptions(args: tuple[object, ...]) -> bool:
    """Whether ``args`` is RESET, after which the server has forgotten this connection's subscriptions."""
    name = args[0] if args else None
    return isinstance(name, str | bytes) and name.upper() in ("RESET", b"RESET")


def protocol_after(args: tuple[object, ...], reply: Any, protocol: int) -> int:
    """The connection's protocol after ``args`` answered ``reply``: HELLO says it (its ``proto``), RESET makes it 2."""
    name = args[0] if args else None
    if not isinstance(name, str | bytes):
        return protocol
    name = name.upper()
    if name in ("RESET", b"RESET"):
        return 2
    if name in ("HELLO", b"HELLO") and isinstance(reply, dict | list):
        fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=False))
        for key, value in fields.items():
            if key in ("proto", b"proto") and value in (2, 3):
                return int(value)
    return protocol


def refuse_subscription(args: tuple[object, ...]) -> None:
    """Error handling: a (un)subscribe command through ``execute`` raises ValueError before anything is sent.

    Its confirmations are one per channel (pushes in RESP3, no reply at all),
    so ``execute`` would wait for a reply that never comes or desynchronise
    the connection.
    """
    name = args[0] if args else None
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if isinstance(name, str) and name.upper() in SUBSCRIPTION_COMMANDS:
        raise ValueError(f"use the client's {name.lower()}() method, not execute({name!r}, ...)")


#: The kinds of pub/sub event a subscription command is confirmed with.
CONFIRMATIONS: Final = frozenset({"subscribe", "unsubscribe", "psubscribe", "punsubscribe"})


def as_message(value: Any) -> Message | None:
    """A pub/sub event from a push (RESP3) or array (RESP2 subscribed mode) reply; None if it is not one."""
    if not isinstance(value, list) or len(value) not in (3, 4):
        return None
    head = value[0]
    kind = head.decode(errors="replace") if isinstance(head, bytes) else str(head)
    if kind == "pmessage" and len(value) == 4:
        return Message(kind, value[2], value[3], pattern=value[1])
    if len(value) == 3 and (kind == "message" or kind in CONFIRMATIONS):
        return Message(kind, value[1], value[2])
    return None
