"""COMMAND INFO and COMMAND DOCS entries, in the shapes redis-cli and client libraries parse.

redis-cli (7.x) asks ``COMMAND DOCS`` when its interactive mode starts and
asserts on the shape of the reply: in RESP2 a flat list of ``name, [key,
value, ...]`` where summary/since/group are strings and subcommands is again
a flat ``name, docs`` list; in RESP3 the same as maps. The values here are
dicts and :class:`~server.protocol.reply.SetReply` lists, which the encoder
sends as Redis 7.0 does in either protocol (COMMAND INFO's flags, ACL
categories, tips, key specs and subcommands are RESP3 sets in 7.0).
``arguments`` (server.commands.argdocs) is what redis-cli's hints are built from.
"""

from __future__ import annotations

from server.commands.argdocs import arguments_for, encode_arguments
from server.commands.registry import Command, Kind
from server.protocol.reply import SetReply, SimpleString

_WRITE_COMMANDS = frozenset({"set", "mset", "del", "incr", "decr", "incrby", "decrby", "expire", "pexpire", "flushdb"})


def _flags(command: Command) -> SetReply:
    flags = list(command.flags)
    if not flags:
        if command.name in _WRITE_COMMANDS:
            flags = ["write", "denyoom"] if command.name != "del" else ["write"]
        elif command.group in ("string", "generic"):
            flags = ["readonly", "fast"]
        elif command.kind is Kind.CPU:
            flags = ["readonly"]
        else:
            flags = ["fast"] if command.name in ("ping", "echo", "time") else []
    return SetReply(SimpleString(flag) for flag in flags)


def command_info(command: Command) -> list[object]:
    """The COMMAND INFO entry: name, arity, flags, first key, last key, step, ACL categories, tips, key specs, subcommands."""  # noqa: E501
    first, last, step = command.key_spec
    return [
        command.name,
        command.arity,
        _flags(command),
        first,
        last,
        step,
        SetReply([SimpleString(f"@{command.group}")]),
        SetReply(),
        SetReply(),
        # Redis 7.0's quirk, kept: no subcommands is an empty set, some are an array.
        [
            [f"{command.name}|{sub}", -2, SetReply(), 0, 0, 0, SetReply(), SetReply(), SetReply(), SetReply()]
            for sub in command.subcommands
        ]
        if command.subcommands
        else SetReply(),
    ]


def command_docs(command: Command) -> dict[str, object]:
    """The COMMAND DOCS entry for one command (a map in RESP3, a flat key/value list in RESP2)."""
    docs: dict[str, object] = {
        "summary": command.summary or command.name.upper(),
        "since": command.since,
        "group": command.group,
        "complexity": "O(1)" if command.kind is Kind.INLINE else "depends on the argument (cpu command)",
    }
    arguments = arguments_for(command)
    if arguments:
        docs["arguments"] = encode_arguments(arguments)
    if command.subcommands:
        docs["subcommands"] = {
            f"{command.name}|{sub}": {
                "summary": f"{command.name.upper()} {sub.upper()}",
                "since": command.since,
                "group": command.group,
            }
            for sub in command.subcommands
        }
    return docs
