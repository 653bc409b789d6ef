"""Commands: the registry, the built-ins (inline and cpu) and the dispatcher.

Importing this package registers the built-ins in :data:`registry`. A user's
module that adds commands imports the same decorators::

    from server.commands import inline_command, cpu_command, bounded_int
"""

from server.commands import auth as _auth  # noqa: F401  (registers AUTH)
from server.commands import builtins as _builtins  # noqa: F401  (registers the inline built-ins)
from server.commands import cpu as _cpu  # noqa: F401  (registers the cpu built-ins)
from server.commands import slowlog as _slowlog  # noqa: F401  (registers SLOWLOG)
from server.commands.actions import Action, RunCpu, Sleep
from server.commands.context import CommandContext
from server.commands.dispatch import Dispatcher
from server.commands.registry import (
    Command,
    CommandError,
    Kind,
    Registry,
    bounded_bytes,
    bounded_int,
    cpu_command,
    inline_command,
    parse_int,
    registry,
)

__all__ = [
    "Action",
    "Command",
    "CommandContext",
    "CommandError",
    "Dispatcher",
    "Kind",
    "Registry",
    "RunCpu",
    "Sleep",
    "bounded_bytes",
    "bounded_int",
    "cpu_command",
    "inline_command",
    "parse_int",
    "registry",
]
