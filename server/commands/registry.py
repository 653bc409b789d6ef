"""The command registry: every command declared once, with its name, arity and kind.

A command is one of two kinds:

* ``inline``: cheap and I/O-shaped. Its handler runs where the request was
  read (on the event loop, or in the connection's thread) and returns a reply
  value, or an :class:`Action` the driver carries out without blocking
  (see :mod:`server.commands.actions`).
* ``cpu``: heavy. A plain module-level function of plain arguments, so it
  pickles by reference and runs in a worker process. Its arguments are
  converted and bounds-checked on the front end first (``argspec``), so a bad
  request is answered at once and never reaches the pool; the function gets
  Python values, never raw client bytes, and nothing from a client is ever
  unpickled.

Arity follows Redis: a positive number is the exact argument count including
the command name, a negative number ``-N`` means "at least N".

Adding a command is the same for users as for the built-ins::

    from server.commands import registry, inline_command, cpu_command, bounded_int

    @inline_command("HELLOWORLD", arity=1)
    def helloworld(ctx, args):
        return "hello, world"

    @cpu_command("FIB", arity=2, argspec=(bounded_int("n", 0, 10_000),))
    def fib(n: int) -> int:
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.errors import CommandError
from server.integers import parse_int


class Kind(enum.Enum):
    """Where a command runs: on the front end (``INLINE``) or on the cpu executor (``CPU``)."""

    INLINE = "inline"
    CPU = "cpu"




#: Converts one raw argument to the value a cpu function receives; raises CommandError.
ArgConverter = Callable[[bytes], Any]
#: ``handler(ctx, args)``; ctx is a server.commands.context.CommandContext (not imported: context imports this).
InlineHandler = Callable[[Any, list[bytes]], Any]


@dataclass(frozen=True)
class Command:
    """One registered command. ``name`` is lower case, as Redis reports names in COMMAND."""

    name: str
    #: Redis's convention, name included: N = exactly N arguments, -N = at least N (Dispatcher.execute checks it).
    arity: int
    kind: Kind
    handler: Callable[..., Any]
    argspec: tuple[ArgConverter, ...] = ()
    summary: str = ""
    group: str = "generic"
    since: str = "1.0.0"
    flags: tuple[str, ...] = ()
    subcommands: tuple[str, ...] = field(default=())
    #: Position of the first key, last key and step, for COMMAND INFO (0 = no keys).
    key_spec: tuple[int, int, int] = (0, 0, 0)

    def convert_args(self, args: Sequence[bytes]) -> tuple[Any, ...]:
        """Run the argspec converters over the arguments after the name (cpu commands).

        Error handling: a converter raises :class:`CommandError` with the
        reply text; it propagates to the dispatcher, which answers it.
        """
        return tuple(convert(raw) for convert, raw in zip(self.argspec, args[1:], strict=False))


#: Case spellings of command names remembered for fast lookup. Clients use one or two spellings per
#: command (redis-cli and the libraries send upper case, people type lower case); a client cycling
#: through case variants on purpose fills this and then pays the ordinary lookup, nothing more.
MAX_CACHED_SPELLINGS = 4096


class _Declarations:
    """The two decorators, shared by :class:`Registry` (registers at once) and :class:`CommandSet` (collects)."""

    def _take(self, command: Command) -> None:
        raise NotImplementedError

    def inline(self, name: str, arity: int, **meta: Any) -> Callable[[InlineHandler], InlineHandler]:
        """Decorator: an inline handler ``handler(ctx, args) -> reply``."""

        def decorate(handler: InlineHandler) -> InlineHandler:
            self._take(Command(name.lower(), arity, Kind.INLINE, handler, **meta))
            return handler

        return decorate

    def cpu(
        self, name: str, arity: int, argspec: Sequence[ArgConverter], **meta: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: a module-level cpu function; ``argspec`` converts each argument."""

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            self._take(Command(name.lower(), arity, Kind.CPU, func, argspec=tuple(argspec), **meta))
            return func

        return decorate


class Registry(_Declarations):
    """A name -> :class:`Command` table. Lookups are by lower-cased name, as Redis's are case-insensitive."""

    def __init__(self) -> None:
        self._commands: dict[bytes, Command] = {}
        #: Every spelling clients have used for a registered name (``PING``, ``ping``, ``Ping``) -> its
        #: command: one dict lookup per request instead of a miss, ``lower()`` and a second lookup.
        self._spellings: dict[bytes, Command] = {}

    def add(self, command: Command) -> Command:
        """Register ``command``; a second registration of the same name is a programming error."""
        key = command.name.lower().encode()
        if key in self._commands:
            raise ValueError(f"command {command.name!r} is already registered")
        if command.kind is Kind.CPU and "<locals>" in getattr(command.handler, "__qualname__", ""):
            raise ValueError(f"cpu command {command.name!r} must be a module-level function so it pickles")
        self._commands[key] = command
        return command

    def lookup(self, name: bytes) -> Command | None:
        """The command called ``name`` (any case), or None."""
        command = self._spellings.get(name)
        if command is None:
            command = self._commands.get(name.lower())
            if command is not None and len(self._spellings) < MAX_CACHED_SPELLINGS:
                self._spellings[name] = command
        return command

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._commands)

    def __contains__(self, name: str) -> bool:
        return name.lower().encode() in self._commands

    def add_all(self, commands: CommandSet) -> None:
        """Register every command of ``commands`` (a module's declarations)."""
        for command in commands:
            self.add(command)

    def _take(self, command: Command) -> None:
        self.add(command)

class CommandSet(_Declarations):
    """Commands declared by a module without registering them anywhere yet: ``Registry.add_all`` does that.

    The built-ins declare themselves this way, so importing a handler module
    has no side effect and the servers install them by one explicit call
    (:func:`server.commands.default_registry`).
    """

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)

    def _take(self, command: Command) -> None:
        self.commands.append(command)


#: The registry the servers use. A user's module registers into it when imported (``--modules``), through
#: ``inline_command`` / ``cpu_command``; the built-ins are added by :func:`server.commands.default_registry`.
registry = Registry()
inline_command = registry.inline
cpu_command = registry.cpu


def bounded_int(name: str, low: int, high: int) -> ArgConverter:
    """An argspec converter: a base-10 integer in ``[low, high]``.

    The bound is part of the command's contract (documented in the README):
    past it the request is refused on the front end with
    ``ERR <name> must be between <low> and <high>``.
    """

    def convert(raw: bytes) -> int:
        value = parse_int(raw)
        if not low <= value <= high:
            raise CommandError(f"ERR {name} must be between {low} and {high}")
        return value

    convert.__name__ = f"bounded_int_{name}"
    return convert


def bounded_bytes(name: str, max_length: int) -> ArgConverter:
    """An argspec converter: a byte string of at most ``max_length`` bytes."""

    def convert(raw: bytes) -> bytes:
        if len(raw) > max_length:
            raise CommandError(f"ERR {name} must be at most {max_length} bytes")
        return bytes(raw)

    convert.__name__ = f"bounded_bytes_{name}"
    return convert


