"""COMMAND INFO and COMMAND DOCS entries, in the RESP2 shapes redis-cli and client libraries parse.

redis-cli (7.x) asks ``COMMAND DOCS`` when its interactive mode starts and
asserts on the shape of the reply: a flat list of ``name, [key, value, ...]``
where summary/since/group are strings and subcommands is again a flat
``name, docs`` list. ``arguments`` (server.commands.argdocs) is what its
hints are built from.
"""

from __future__ import annotations

from server.commands.argdocs import arguments_for, encode_arguments
from server.commands.registry import Command, Kind

_WRITE_COMMANDS = frozenset({"set", "mset", "del", "incr", "decr", "incrby", "decrby", "expire", "pexpire", "flushdb"})


def _flags(command: Command) -> list[object]:
    from server.protocol.reply import SimpleString

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
    return [SimpleString(flag) for flag in flags]


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
        [f"@{command.group}"],
        [],
        [],
        [[f"{command.name}|{sub}", -2, [], 0, 0, 0, [], [], [], []] for sub in command.subcommands],
    ]


def command_docs(command: Command) -> list[object]:
    """The COMMAND DOCS entry for one command (a flat key/value list in RESP2)."""
    docs: list[object] = [
        "summary", command.summary or command.name.upper(),
        "since", command.since,
        "group", command.group,
        "complexity", "O(1)" if command.kind is Kind.INLINE else "depends on the argument (cpu command)",
    ]  # fmt: skip
    arguments = arguments_for(command)
    if arguments:
        docs.extend(["arguments", encode_arguments(arguments)])
    if command.subcommands:
        subs: list[object] = []
        for sub in command.subcommands:
            subs.extend(
                [
                    f"{command.name}|{sub}",
                    [
                        "summary", f"{command.name.upper()} {sub.upper()}",
                        "since", command.since,
                        "group", command.group,
                    ],
                ]
            )
        docs.extend(["subcommands", subs])
    return docs
