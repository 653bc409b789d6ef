"""The built-in inline commands: connection, server introspection, and the keyspace.

Every handler is ``handler(ctx, args) -> reply value`` (see
:mod:`server.protocol.reply` for the value -> RESP mapping) and registers
itself with the same decorator a user's command would use.
"""

from __future__ import annotations

import fnmatch
import time

from server import REDIS_COMPAT_VERSION
from server.commands.actions import Sleep
from server.commands.auth import HELLO_NOAUTH, NO_AUTH_FLAGS, authenticate
from server.commands.context import CommandContext
from server.commands.registry import CommandError, CommandSet, parse_int
from server.protocol.reply import NULL_BULK, OK, PONG, ErrorReply, RawReply, SimpleString, Verbatim
from server.store.keyspace import now_ms

#: The commands this module declares; server.commands.default_registry installs them.
COMMANDS = CommandSet()

#: SLEEP ms: longest wait. It stands in for a slow upstream call; a minute is
#: far past any sane upstream timeout and keeps a forgotten SLEEP bounded.
SLEEP_MAX_MS = 60_000

#: The protocol versions HELLO accepts, as Redis 7: RESP2 and RESP3.
PROTOCOL_VERSIONS = (2, 3)

_SYNTAX = "ERR syntax error"


def _upper(raw: bytes) -> bytes:
    return raw.upper()


def _c_word(raw: bytes) -> bytes:
    """An option word as Redis's C code compares it (strcasecmp, ``%s``): up to its first NUL byte."""
    return raw.split(b"\0", 1)[0] if b"\0" in raw else raw


#: SET's expire options; EXPIRE's conditions.
_SET_EXPIRE_OPTIONS = (b"EX", b"PX", b"EXAT", b"PXAT")
_EXPIRE_OPTIONS = (b"NX", b"XX", b"GT", b"LT")


# ---------------------------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------------------------
@COMMANDS.inline("PING", arity=-1, summary="Ping the server.", group="connection", since="1.0.0")
def ping(ctx: CommandContext, args: list[bytes]) -> object:
    if len(args) > 2:
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    if ctx.client.subscriptions and ctx.client.resp == 2:  # Redis: a subscribed RESP2 client gets a pong array
        return [b"pong", args[1] if len(args) == 2 else b""]
    return PONG if len(args) == 1 else args[1]


@COMMANDS.inline("ECHO", arity=2, summary="Echo the given string.", group="connection", since="1.0.0")
def echo(ctx: CommandContext, args: list[bytes]) -> object:
    return args[1]


@COMMANDS.inline(
    "QUIT", arity=-1, summary="Close the connection.", group="connection", since="1.0.0", flags=NO_AUTH_FLAGS
)
def quit_(ctx: CommandContext, args: list[bytes]) -> object:
    ctx.client.close_requested = True
    return OK


@COMMANDS.inline(
    "SLEEP",
    arity=2,
    summary=f"Wait ms milliseconds (0..{SLEEP_MAX_MS}) without blocking other clients, then reply OK.",
    group="crossdock",
)
def sleep(ctx: CommandContext, args: list[bytes]) -> object:
    milliseconds = parse_int(args[1])
    if not 0 <= milliseconds <= SLEEP_MAX_MS:
        raise CommandError(f"ERR ms must be between 0 and {SLEEP_MAX_MS}")
    return Sleep(milliseconds / 1000, OK)


@COMMANDS.inline(
    "HELLO",
    arity=-1,
    summary="Handshake: protocol version (2 or 3), optional AUTH and SETNAME.",
    group="connection",
    since="6.0.0",
    flags=NO_AUTH_FLAGS,
)
def hello(ctx: CommandContext, args: list[bytes]) -> object:
    position = 1
    version = 0  # none asked for: keep the connection's
    if len(args) > 1:
        try:
            version = parse_int(args[1])
        except CommandError:
            raise CommandError("ERR Protocol version is not an integer or out of range") from None
        if version not in PROTOCOL_VERSIONS:
            raise CommandError("NOPROTO unsupported protocol version")
        position = 2
    new_name: bytes | None = None
    credentials: tuple[bytes, bytes] | None = None
    while position < len(args):
        option = _upper(args[position])
        remaining = len(args) - position - 1
        if option == b"AUTH" and remaining >= 2:
            credentials = (args[position + 1], args[position + 2])
            position += 3
        elif option == b"SETNAME" and remaining >= 1:
            new_name = _validated_client_name(args[position + 1])
            position += 2
        else:
            raise CommandError(f"ERR Syntax error in HELLO option '{args[position].decode(errors='replace')}'")
    # Redis's order: options parsed, then AUTH (WRONGPASS), then "must be authenticated", then SETNAME.
    if credentials is not None:
        authenticate(ctx, *credentials)
    if not ctx.client.authenticated:
        raise CommandError(HELLO_NOAUTH)
    if new_name is not None:
        ctx.client.name = new_name
    if version:
        ctx.client.resp = version  # this very reply already goes out in the new protocol, as Redis's does
    return {
        "server": "redis",
        "version": REDIS_COMPAT_VERSION,
        "proto": ctx.client.resp,
        "id": ctx.client.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


def _validated_client_name(name: bytes) -> bytes:
    # Redis: names must be printable ASCII without spaces (validateClientName).
    if any(byte < 0x21 or byte > 0x7E for byte in name):
        raise CommandError("ERR Client names cannot contain spaces, newlines or special characters.")
    return name


_CLIENT_SUBCOMMANDS = {b"ID": 2, b"SETNAME": 3, b"GETNAME": 2, b"LIST": -2, b"INFO": 2, b"SETINFO": 4, b"HELP": 2}


@COMMANDS.inline(
    "CLIENT",
    arity=-2,
    summary="Connection introspection: ID, SETNAME, GETNAME, LIST, INFO, SETINFO.",
    group="connection",
    since="2.4.0",
    subcommands=("id", "setname", "getname", "list", "info", "setinfo", "help"),
)
def client(ctx: CommandContext, args: list[bytes]) -> object:
    sub = _upper(args[1])
    arity = _CLIENT_SUBCOMMANDS.get(sub)
    if arity is None:
        raise CommandError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CLIENT HELP.")
    if (arity >= 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
        raise CommandError(f"ERR wrong number of arguments for 'client|{sub.decode().lower()}' command")
    me = ctx.client
    if sub == b"ID":
        return me.id
    if sub == b"SETNAME":
        me.name = _validated_client_name(args[2])
        return OK
    if sub == b"GETNAME":
        return me.name or None
    if sub == b"INFO":
        return Verbatim(me.describe() + "\n")
    if sub == b"SETINFO":
        attribute = _upper(args[2])
        if attribute == b"LIB-NAME":
            me.lib_name = _validated_client_name(args[3])
        elif attribute == b"LIB-VER":
            me.lib_ver = _validated_client_name(args[3])
        else:
            raise CommandError(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        return OK
    if sub == b"LIST":
        clients = ctx.server.client_list()
        if len(args) > 2:
            if _upper(args[2]) != b"ID" or len(args) < 4:
                raise CommandError(_SYNTAX)
            wanted = {parse_int(raw) for raw in args[3:]}
            clients = [c for c in clients if c.id in wanted]
        return Verbatim("".join(c.describe() + "\n" for c in clients))
    return [
        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "ID", "    Return the ID of the current connection.",
        "GETNAME", "    Return the name of the current connection.",
        "SETNAME <name>", "    Assign the name <name> to the current connection.",
        "LIST [ID <id> ...]", "    Return information about client connections.",
        "INFO", "    Return information about the current client connection.",
        "SETINFO <LIB-NAME|LIB-VER> <value>", "    Set client library name or version.",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Server introspection
# ---------------------------------------------------------------------------------------------
@COMMANDS.inline("TIME", arity=1, summary="Server time: [unix seconds, microseconds].", group="server", since="2.6.0")
def time_(ctx: CommandContext, args: list[bytes]) -> object:
    now_us = time.time_ns() // 1000
    return [str(now_us // 1_000_000), str(now_us % 1_000_000)]


@COMMANDS.inline(
    "INFO",
    arity=-1,
    summary="Server information and statistics, Redis INFO format.",
    group="server",
    since="1.0.0",
)
def info(ctx: CommandContext, args: list[bytes]) -> object:
    from server.observability.info import render_info  # local import: info.py imports the registry for COMMAND counts

    sections = [raw.decode(errors="replace").lower() for raw in args[1:]]
    return Verbatim(render_info(ctx.server, sections))


@COMMANDS.inline(
    "COMMAND",
    arity=-1,
    summary="Command table introspection: COUNT, INFO, DOCS, LIST.",
    group="server",
    since="2.8.13",
    subcommands=("count", "info", "docs", "list"),
)
def command(ctx: CommandContext, args: list[bytes]) -> object:
    from server.commands.introspection import command_docs, command_info

    registry = ctx.registry
    if len(args) == 1:
        return [command_info(c) for c in registry]
    sub = _upper(args[1])
    if sub == b"COUNT" and len(args) == 2:
        return len(registry)
    if sub == b"LIST" and len(args) == 2:
        return [c.name for c in registry]
    if sub == b"INFO":
        wanted = args[2:] or [c.name.encode() for c in registry]
        return [command_info(found) if (found := registry.lookup(n)) else None for n in wanted]
    if sub == b"DOCS":
        wanted_commands = (
            [c for n in args[2:] if (c := registry.lookup(n)) is not None] if len(args) > 2 else list(registry)
        )
        return {found.name: command_docs(found) for found in wanted_commands}
    if sub in (b"COUNT", b"LIST"):
        raise CommandError(f"ERR wrong number of arguments for 'command|{sub.decode().lower()}' command")
    raise CommandError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try COMMAND HELP.")


@COMMANDS.inline(
    "CONFIG",
    arity=-2,
    summary="CONFIG GET parameter [parameter ...] (read-only view of the running configuration).",
    group="server",
    since="2.0.0",
    subcommands=("get", "resetstat"),
)
def config(ctx: CommandContext, args: list[bytes]) -> object:
    sub = _upper(args[1])
    if sub == b"GET":
        if len(args) < 3:
            raise CommandError("ERR wrong number of arguments for 'config|get' command")
        from server.observability.info import config_parameters

        parameters = config_parameters(ctx.server)
        found: dict[str, object] = {}  # a map in RESP3, name/value pairs in RESP2, as Redis 7
        for raw in args[2:]:
            pattern = raw.decode(errors="replace").lower()
            for name, value in parameters.items():
                if name not in found and fnmatch.fnmatchcase(name, pattern):
                    found[name] = value
        return found
    if sub == b"RESETSTAT" and len(args) == 2:
        ctx.server.reset_stats()
        return OK
    if sub in (b"SET", b"REWRITE"):
        raise CommandError("ERR CONFIG SET is not supported: crossdock is configured by flags and environment")
    raise CommandError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CONFIG HELP.")


# ---------------------------------------------------------------------------------------------
# Keyspace
# ---------------------------------------------------------------------------------------------
_KEYSPACE = {"group": "string", "key_spec": (1, 1, 1)}
#: The string writes Redis flags ``denyoom`` (they may grow memory): refused with -OOM past maxmemory.
_GROWS = {**_KEYSPACE, "flags": ("write", "denyoom")}
_GROWS_FAST = {**_KEYSPACE, "flags": ("write", "denyoom", "fast")}


#: C's LLONG_MAX and LLONG_MIN: Redis's expire arithmetic is 64-bit and refuses what would overflow.
_LLONG_MAX = 2**63 - 1
_LLONG_MIN = -(2**63)


def _c_div(value: int, divisor: int) -> int:
    """C's integer division (truncates toward zero), as in Redis's ``LLONG_MIN / 1000``."""
    quotient = abs(value) // divisor
    return quotient if value >= 0 else -quotient


def _set_deadline(amount: int, unit_ms: int, now_ms: int, absolute: bool) -> int:
    """SET's EX/PX/EXAT/PXAT amount as an absolute deadline (t_string.c getExpireMillisecondsOrReply)."""
    if amount <= 0 or amount > _LLONG_MAX // unit_ms:
        raise CommandError("ERR invalid expire time in 'set' command")
    deadline = amount * unit_ms + (0 if absolute else now_ms)
    if deadline > _LLONG_MAX:  # C's addition would wrap below zero, which Redis then refuses
        raise CommandError("ERR invalid expire time in 'set' command")
    return deadline


def _expire_deadline(amount: int, unit_ms: int, command: str, now_ms: int) -> int:
    """EXPIRE/PEXPIRE's amount as an absolute deadline (expire.c expireGenericCommand): negative is allowed (the key
    is deleted), only overflow of the unit conversion or of the addition is refused."""
    if unit_ms != 1 and not _c_div(_LLONG_MIN, unit_ms) <= amount <= _LLONG_MAX // unit_ms:
        raise CommandError(f"ERR invalid expire time in '{command}' command")
    amount *= unit_ms
    if amount > _LLONG_MAX - now_ms:
        raise CommandError(f"ERR invalid expire time in '{command}' command")
    return amount + now_ms


@COMMANDS.inline("GET", arity=2, summary="Get the value of a key.", since="1.0.0", **_KEYSPACE)
def get(ctx: CommandContext, args: list[bytes]) -> object:
    value = ctx.server.keyspace.get(args[1])
    return NULL_BULK if value is None else value


@COMMANDS.inline(
    "SET",
    arity=-3,
    summary="Set a key: SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts-ms|KEEPTTL].",
    since="1.0.0",
    **_GROWS,
)
def set_(ctx: CommandContext, args: list[bytes]) -> object:
    """SET as Redis 7 parses it (t_string.c): every option is checked first, then the expire amount.

    An expire option may repeat (``EX 100 EX 200``: the last wins) but not mix
    with another (``EX 1 PX 1``, ``KEEPTTL EX 1``: syntax error); the amount
    is parsed only once the options are known to be well-formed, so
    ``SET k v EX ET k`` is a syntax error, not an integer error.
    """
    if len(args) == 3:  # the common case, no options
        ctx.server.keyspace.put(args[1], args[2])
        return OK
    nx = xx = keep_ttl = get_old = False
    expire_option: bytes | None = None
    expire_amount: bytes | None = None
    position = 3
    while position < len(args):
        option = _c_word(args[position]).upper()
        has_next = position + 1 < len(args)
        if option == b"NX" and not xx:
            nx = True
        elif option == b"XX" and not nx:
            xx = True
        elif option == b"GET":
            get_old = True
        elif option == b"KEEPTTL" and expire_option in (None, option):
            keep_ttl = True
            expire_option = option
        elif option in _SET_EXPIRE_OPTIONS and expire_option in (None, option) and has_next:
            expire_option = option
            expire_amount = args[position + 1]
            position += 1
        else:
            raise CommandError(_SYNTAX)
        position += 1
    expire_at: int | None = None
    if expire_option is not None and expire_amount is not None:
        unit = 1000 if expire_option in (b"EX", b"EXAT") else 1
        absolute = expire_option.endswith(b"AT")
        expire_at = _set_deadline(parse_int(expire_amount), unit, now_ms(), absolute)
    written, old = ctx.server.keyspace.set(
        args[1],
        args[2],
        expire_at_ms=expire_at,
        only_if_missing=nx,
        only_if_present=xx,
        keep_ttl=keep_ttl,
        get_old=get_old,
    )
    if get_old:
        return old
    return OK if written else NULL_BULK


@COMMANDS.inline("MGET", arity=-2, summary="Get the values of several keys.", since="1.0.0", group="string")
def mget(ctx: CommandContext, args: list[bytes]) -> object:
    keyspace = ctx.server.keyspace
    return [keyspace.get(key) for key in args[1:]]


@COMMANDS.inline(
    "MSET", arity=-3, summary="Set several keys.", since="1.0.1", group="string", flags=("write", "denyoom")
)
def mset(ctx: CommandContext, args: list[bytes]) -> object:
    if len(args) % 2 == 0:
        raise CommandError("ERR wrong number of arguments for 'mset' command")
    keyspace = ctx.server.keyspace
    for index in range(1, len(args), 2):
        keyspace.set(args[index], args[index + 1])
    return OK


@COMMANDS.inline("DEL", arity=-2, summary="Delete keys; replies how many existed.", since="1.0.0", group="generic")
def delete(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.delete(args[1:])


@COMMANDS.inline("EXISTS", arity=-2, summary="Count how many of the keys exist.", since="1.0.0", group="generic")
def exists(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.exists(args[1:])


@COMMANDS.inline("INCR", arity=2, summary="Increment the integer value of a key by one.", since="1.0.0", **_GROWS_FAST)
def incr(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.incr_by(args[1], 1)


@COMMANDS.inline("DECR", arity=2, summary="Decrement the integer value of a key by one.", since="1.0.0", **_GROWS_FAST)
def decr(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.incr_by(args[1], -1)


@COMMANDS.inline("INCRBY", arity=3, summary="Increment the integer value of a key.", since="1.0.0", **_GROWS_FAST)
def incrby(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.incr_by(args[1], parse_int(args[2]))


@COMMANDS.inline("DECRBY", arity=3, summary="Decrement the integer value of a key.", since="1.0.0", **_GROWS_FAST)
def decrby(ctx: CommandContext, args: list[bytes]) -> object:
    delta = parse_int(args[2])
    if delta == -(2**63):
        raise CommandError("ERR decrement would overflow")
    return ctx.server.keyspace.incr_by(args[1], -delta)


def _expire_conditions(options: list[bytes]) -> frozenset[str]:
    """EXPIRE's NX|XX|GT|LT as Redis 7 parses them (expire.c): each option in order, all before the amount.

    An unknown option is quoted as the client sent it, up to a NUL byte (C's
    ``%s``), and the first unknown one is named.
    """
    flags: set[str] = set()
    for raw in options:
        word = _c_word(raw)
        flag = word.upper()
        if flag not in _EXPIRE_OPTIONS:
            raise CommandError("ERR Unsupported option " + word.decode("utf-8", "surrogateescape"))
        flags.add(flag.decode())
    if "NX" in flags and len(flags) > 1:
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if "GT" in flags and "LT" in flags:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    return frozenset(flags)


def _expire(ctx: CommandContext, args: list[bytes], unit_ms: int, name: str) -> object:
    conditions = _expire_conditions(args[3:])
    amount = parse_int(args[2])
    deadline = _expire_deadline(amount, unit_ms, name, now_ms())
    return int(ctx.server.keyspace.expire_at(args[1], deadline, conditions))


@COMMANDS.inline(
    "EXPIRE", arity=-3, summary="Set a key's time to live in seconds.", since="1.0.0", group="generic",
    key_spec=(1, 1, 1),
)  # fmt: skip
def expire(ctx: CommandContext, args: list[bytes]) -> object:
    return _expire(ctx, args, 1000, "expire")


@COMMANDS.inline(
    "PEXPIRE", arity=-3, summary="Set a key's time to live in milliseconds.", since="2.6.0", group="generic",
    key_spec=(1, 1, 1),
)  # fmt: skip
def pexpire(ctx: CommandContext, args: list[bytes]) -> object:
    return _expire(ctx, args, 1, "pexpire")


@COMMANDS.inline(
    "TTL", arity=2, summary="Time to live in seconds (-1 no expiry, -2 no key).", since="1.0.0", group="generic",
    key_spec=(1, 1, 1),
)  # fmt: skip
def ttl(ctx: CommandContext, args: list[bytes]) -> object:
    remaining = ctx.server.keyspace.ttl_ms(args[1])
    return remaining if remaining < 0 else (remaining + 500) // 1000


@COMMANDS.inline(
    "PTTL", arity=2, summary="Time to live in milliseconds.", since="2.6.0", group="generic", key_spec=(1, 1, 1)
)
def pttl(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.ttl_ms(args[1])


@COMMANDS.inline("DBSIZE", arity=1, summary="Number of keys.", since="1.0.0", group="server")
def dbsize(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.keyspace.size()


@COMMANDS.inline("FLUSHDB", arity=-1, summary="Delete every key: FLUSHDB [ASYNC|SYNC].", since="1.0.0", group="server")
def flushdb(ctx: CommandContext, args: list[bytes]) -> object:
    if len(args) > 2 or (len(args) == 2 and _upper(args[1]) not in (b"ASYNC", b"SYNC")):
        raise CommandError(_SYNTAX)
    ctx.server.memory.released(ctx.server.keyspace.flush())  # give the freed heap back to the OS
    return OK


__all__ = ["ErrorReply", "RawReply", "SimpleString"]
