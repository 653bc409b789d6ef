"""Commands: the registry, the built-ins (inline and cpu) and the dispatcher.

Importing this package registers nothing. The servers take their table from
:func:`default_registry`, which installs the built-ins by one explicit call;
a user's module adds commands with the same decorators the README shows::

    from server.commands import inline_command, cpu_command, bounded_int

Where a command lives: its handler is in one of the modules listed in
:data:`BUILTIN_MODULES` (``builtins`` for the generic and keyspace commands,
``cpu`` for PRIMES/FACTOR/PBKDF2, ``pubsub`` for (P)(UN)SUBSCRIBE/PUBLISH/PUBSUB/RESET,
``auth`` and ``slowlog``).
"""

from server.commands import auth, builtins, cpu, pubsub, slowlog
from server.commands.actions import Action, RunCpu, Sleep
from server.commands.context import CommandContext
from server.commands.dispatch import Dispatcher
from server.commands.registry import (
    Command,
    CommandError,
    CommandSet,
    Kind,
    Registry,
    bounded_bytes,
    bounded_int,
    cpu_command,
    inline_command,
    parse_int,
    registry,
)

#: The modules whose ``COMMANDS`` make up the built-in command table.
BUILTIN_MODULES = (auth, builtins, cpu, pubsub, slowlog)


def install_builtins(target: Registry) -> Registry:
    """Add every built-in command to ``target`` (once: a second call on the same registry does nothing)."""
    if "ping" not in target:
        for module in BUILTIN_MODULES:
            target.add_all(module.COMMANDS)
    return target


def default_registry() -> Registry:
    """The registry the servers use: :data:`registry` (user commands included) with the built-ins installed."""
    return install_builtins(registry)


__all__ = [
    "BUILTIN_MODULES",
    "Action",
    "Command",
    "CommandContext",
    "CommandError",
    "CommandSet",
    "Dispatcher",
    "Kind",
    "Registry",
    "RunCpu",
    "Sleep",
    "bounded_bytes",
    "bounded_int",
    "cpu_command",
    "default_registry",
    "inline_command",
    "install_builtins",
    "parse_int",
    "registry",
]
