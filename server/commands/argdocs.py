"""COMMAND DOCS ``arguments``: what redis-cli turns into its hints (``SET key value [NX|XX] ...``).

For the commands Redis has, the arguments are Redis 7.0's own, as
``redis-server``'s ``COMMAND DOCS`` answers them (copied from it;
tests/integration/test_command_docs.py checks each against a live redis-server, so a
difference fails the suite). crossdock's own commands get theirs from
:data:`CROSSDOCK_ARGUMENTS`, and a command with an argspec (every cpu
command, a user's too) from its converters' names (``bounded_int("n", ...)``
is an integer named ``n``). Data only; no I/O.
"""

from __future__ import annotations

from server.commands.registry import Command
from server.protocol.reply import SetReply, SimpleString

#: One argument as COMMAND DOCS describes it: name, type, and optionally token, since, flags, key_spec_index and
#: nested arguments (for ``oneof`` and ``block``), in Redis's order.
Argument = dict[str, object]

#: EXPIRE's and PEXPIRE's NX | XX | GT | LT option (Redis 7.0), one description for both.
_EXPIRE_CONDITION: Argument = {
    "name": "condition",
    "type": "oneof",
    "since": "7.0.0",
    "flags": ("optional",),
    "arguments": (
        {"name": "nx", "type": "pure-token", "token": "NX"},
        {"name": "xx", "type": "pure-token", "token": "XX"},
        {"name": "gt", "type": "pure-token", "token": "GT"},
        {"name": "lt", "type": "pure-token", "token": "LT"},
    ),
}

REDIS_ARGUMENTS: dict[str, tuple[Argument, ...]] = {
    "auth": (
        {"name": "username", "type": "string", "since": "6.0.0", "flags": ("optional",)},
        {"name": "password", "type": "string"},
    ),
    "decr": ({"name": "key", "type": "key", "key_spec_index": 0},),
    "decrby": ({"name": "key", "type": "key", "key_spec_index": 0}, {"name": "decrement", "type": "integer"}),
    "del": ({"name": "key", "type": "key", "key_spec_index": 0, "flags": ("multiple",)},),
    "echo": ({"name": "message", "type": "string"},),
    "exists": ({"name": "key", "type": "key", "key_spec_index": 0, "flags": ("multiple",)},),
    "expire": (
        {"name": "key", "type": "key", "key_spec_index": 0},
        {"name": "seconds", "type": "integer"},
        _EXPIRE_CONDITION,
    ),
    "flushdb": (
        {
            "name": "async",
            "type": "oneof",
            "flags": ("optional",),
            "arguments": (
                {"name": "async", "type": "pure-token", "token": "ASYNC", "since": "4.0.0"},
                {"name": "sync", "type": "pure-token", "token": "SYNC", "since": "6.2.0"},
            ),
        },
    ),
    "get": ({"name": "key", "type": "key", "key_spec_index": 0},),
    "hello": (
        {
            "name": "arguments",
            "type": "block",
            "flags": ("optional",),
            "arguments": (
                {"name": "protover", "type": "integer"},
                {
                    "name": "username_password",
                    "type": "block",
                    "token": "AUTH",
                    "flags": ("optional",),
                    "arguments": ({"name": "username", "type": "string"}, {"name": "password", "type": "string"}),
                },
                {"name": "clientname", "type": "string", "token": "SETNAME", "flags": ("optional",)},
            ),
        },
    ),
    "incr": ({"name": "key", "type": "key", "key_spec_index": 0},),
    "incrby": ({"name": "key", "type": "key", "key_spec_index": 0}, {"name": "increment", "type": "integer"}),
    "info": ({"name": "section", "type": "string", "flags": ("optional", "multiple")},),
    "mget": ({"name": "key", "type": "key", "key_spec_index": 0, "flags": ("multiple",)},),
    "mset": (
        {
            "name": "key_value",
            "type": "block",
            "flags": ("multiple",),
            "arguments": ({"name": "key", "type": "key", "key_spec_index": 0}, {"name": "value", "type": "string"}),
        },
    ),
    "pexpire": (
        {"name": "key", "type": "key", "key_spec_index": 0},
        {"name": "milliseconds", "type": "integer"},
        _EXPIRE_CONDITION,
    ),
    "ping": ({"name": "message", "type": "string", "flags": ("optional",)},),
    "pttl": ({"name": "key", "type": "key", "key_spec_index": 0},),
    "set": (
        {"name": "key", "type": "key", "key_spec_index": 0},
        {"name": "value", "type": "string"},
        {
            "name": "condition",
            "type": "oneof",
            "since": "2.6.12",
            "flags": ("optional",),
            "arguments": (
                {"name": "nx", "type": "pure-token", "token": "NX"},
                {"name": "xx", "type": "pure-token", "token": "XX"},
            ),
        },
        {"name": "get", "type": "pure-token", "token": "GET", "since": "6.2.0", "flags": ("optional",)},
        {
            "name": "expiration",
            "type": "oneof",
            "flags": ("optional",),
            "arguments": (
                {"name": "seconds", "type": "integer", "token": "EX", "since": "2.6.12"},
                {"name": "milliseconds", "type": "integer", "token": "PX", "since": "2.6.12"},
                {"name": "unix-time-seconds", "type": "unix-time", "token": "EXAT", "since": "6.2.0"},
                {"name": "unix-time-milliseconds", "type": "unix-time", "token": "PXAT", "since": "6.2.0"},
                {"name": "keepttl", "type": "pure-token", "token": "KEEPTTL", "since": "6.0.0"},
            ),
        },
    ),
    "ttl": ({"name": "key", "type": "key", "key_spec_index": 0},),
    # Pub/sub, as Redis 7.0 documents it (PSUBSCRIBE's "block" of one pattern included).
    "subscribe": ({"name": "channel", "type": "string", "flags": ("multiple",)},),
    "psubscribe": (
        {
            "name": "pattern",
            "type": "block",
            "flags": ("multiple",),
            "arguments": ({"name": "pattern", "type": "pattern"},),
        },
    ),
    "unsubscribe": ({"name": "channel", "type": "string", "flags": ("optional", "multiple")},),
    "punsubscribe": ({"name": "pattern", "type": "pattern", "flags": ("optional", "multiple")},),
    "publish": ({"name": "channel", "type": "string"}, {"name": "message", "type": "string"}),
}

#: Arguments of the commands Redis does not have.
CROSSDOCK_ARGUMENTS: dict[str, tuple[Argument, ...]] = {
    "sleep": ({"name": "milliseconds", "type": "integer"},),
}

#: Converter name prefixes (server.commands.registry.bounded_int / bounded_bytes) and the argument type they take.
_CONVERTER_TYPES = (("bounded_int_", "integer"), ("bounded_bytes_", "string"))


def _from_argspec(command: Command) -> tuple[Argument, ...]:
    arguments: list[Argument] = []
    for convert in command.argspec:
        name = getattr(convert, "__name__", "")
        for prefix, kind in _CONVERTER_TYPES:
            if name.startswith(prefix):
                arguments.append({"name": name[len(prefix) :], "type": kind})
                break
        else:
            return ()  # a converter we cannot describe: no hints rather than wrong ones
    return tuple(arguments)


def arguments_for(command: Command) -> tuple[Argument, ...]:
    """The ``arguments`` of ``command``'s COMMAND DOCS entry (empty: none known)."""
    known = REDIS_ARGUMENTS.get(command.name) or CROSSDOCK_ARGUMENTS.get(command.name)
    return known if known is not None else _from_argspec(command)


def encode_arguments(arguments: tuple[Argument, ...]) -> list[object]:
    """Arguments as COMMAND DOCS sends them: a list of maps (flat ``key, value`` lists in RESP2, as the encoder
    writes every dict there), nested for ``arguments``; ``flags`` is a set of status strings, as in Redis 7.0."""
    encoded: list[object] = []
    for argument in arguments:
        entry: dict[str, object] = {}
        for key, value in argument.items():
            if key == "arguments":
                assert isinstance(value, tuple)
                entry[key] = encode_arguments(value)
            elif key == "flags":
                assert isinstance(value, tuple)
                entry[key] = SetReply(SimpleString(flag) for flag in value)
            else:
                entry[key] = value
        encoded.append(entry)
    return encoded
