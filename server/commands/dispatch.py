"""Turn one parsed request into a reply or an action: lookup, arity, handler, error wording.

This is the part of command execution the two front ends share. It has no
I/O: it returns encoded reply bytes, or an :mod:`~server.commands.actions`
instruction that the front end carries out (wait, run on the cpu executor).

It is the per-request path, so ``setup.py`` compiles it with mypyc, in one
group with the objects it touches on every request (the counters, the
keyspace, the memory account, the server and client state: see
:mod:`server.protocol.core_modules`), so they are native objects to it;
:mod:`server.protocol.cores` runs this same source interpreted where it was
not built or ``CROSSDOCK_CORE=pure``. What a request
needs of its command (arity, flags, counters) is read once per spelling into
an :class:`_Entry`, whose fields the compiled code reads as C struct fields.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import structlog

from server import security
from server.commands.actions import Action, RunCpu, Sleep
from server.commands.auth import NOAUTH
from server.commands.pubsub import SUBSCRIBED_MODE_COMMANDS, subscribed_mode_error
from server.commands.registry import MAX_CACHED_SPELLINGS, Command, CommandError, Kind, Registry
from server.memory import OOM_ERROR
from server.protocol import ProtocolError, RequestParser
from server.protocol.reply import NULL_BULK, RESP3_NULL, RawReply, encode_error, encode_reply, encode_reply3
from server.store.commandstats import LINEAR_LIMIT_BITS, SUB_BUCKET_BITS, SUB_MASK, CommandStats

if TYPE_CHECKING:
    from server.commands.context import CommandContext
    from server.memory import MemoryAccount
    from server.store.keyspace import Keyspace
    from server.store.state import ClientState, ServerState, Stats

log = structlog.get_logger("crossdock.commands")

#: The clock a Dispatcher reads twice per inline command (taken when it is made; tests put a fake one here).
_perf_counter_ns = time.perf_counter_ns
# Final: compiled, these are C globals rather than a lookup in the module's dict per request.
_RAW_REPLY: Final = RawReply
_BYTES: Final = bytes
_NULL_BULK: Final = NULL_BULK
_CRLF: Final = b"\r\n"
#: Bulk reply headers (``$5\r\n``) made once for the lengths most values have: a 16-byte value is typical of
#: caches and counters, 512 covers session tokens and small JSON; longer ones pay a format (their copy dominates).
_BULK_HEADERS_CACHED: Final = 512
_BULK_HEADERS: Final = [b"$%d\r\n" % size for size in range(_BULK_HEADERS_CACHED)]
_RESP3_NULL: Final = RESP3_NULL

#: Redis quotes at most 128 characters of the unknown name and of its arguments.
UNKNOWN_COMMAND_QUOTE_LIMIT = 128

_NOAUTH_REPLY = encode_error(NOAUTH)
_OOM_REPLY = encode_error(OOM_ERROR)
#: The registry flag of commands that may grow memory (Redis's ``denyoom``): refused with -OOM past maxmemory.
DENYOOM = "denyoom"
#: The registry flag of commands a client may send before AUTH (server.commands.auth.NO_AUTH_FLAGS).
NO_AUTH = "no_auth"
#: Written for an HTTP request (POST / Host:) before the close: nothing, as Redis writes nothing.
_NO_REPLY = b""


def unknown_command_error(args: list[bytes]) -> str:
    """Redis's exact text for an unknown command (server.c processCommand), byte for byte.

    Redis prints the name and arguments with ``%.*s``: at most 128 bytes
    each, cut at the first NUL, quoting arguments until 128 bytes of them are
    written. Bytes that are not UTF-8 are kept as surrogates, which
    :func:`~server.protocol.reply.encode_error` turns back into the same bytes.
    """
    quoted = b""
    for raw in args[1:]:
        if len(quoted) >= UNKNOWN_COMMAND_QUOTE_LIMIT:
            break
        quoted += b"'" + _c_string(raw, UNKNOWN_COMMAND_QUOTE_LIMIT - len(quoted)) + b"' "
    name = _c_string(args[0], UNKNOWN_COMMAND_QUOTE_LIMIT)
    text = b"ERR unknown command '%b', with args beginning with: %b" % (name, quoted)
    return text.decode("utf-8", "surrogateescape")


def _c_string(raw: bytes, limit: int) -> bytes:
    """What C's ``printf("%.*s", limit, raw)`` prints: up to the first NUL, at most ``limit`` bytes."""
    nul = raw.find(b"\0", 0, limit)
    return raw[: nul if nul >= 0 else limit]


#: How Redis's wrong-arity error starts; a handler raising it for a subcommand makes a rejected call.
WRONG_ARITY_PREFIX = "ERR wrong number of arguments for "

#: How a shed cpu request's reply starts (server.cpu.jobs.busy_error): a rejected call, not a failed one.
BUSY_REPLY_PREFIX = b"-BUSY "

#: A slow threshold no duration reaches (the slow log is off).
SLOW_LOG_OFF = 1 << 62


def wrong_arity_error(name: str) -> str:
    """Redis's text for a wrong argument count; ``name`` is lower case (``client|setname`` for subcommands)."""
    return f"{WRONG_ARITY_PREFIX}'{name}' command"


def subcommand_name(command: Command, sub: bytes) -> str:
    """``config|get`` for a known subcommand, as Redis names its commandstats; the command's name otherwise."""
    lowered = sub.decode(errors="replace").lower()
    return f"{command.name}|{lowered}" if lowered in command.subcommands else command.name


class _Entry:
    """What the request path needs of one command, read once from its :class:`Command` and kept per spelling.

    The flags become booleans and the counters are held here, so a request
    costs one dict lookup for all of it (RESETSTAT zeroes the counters in place).
    """

    def __init__(self, command: Command, counters: CommandStats) -> None:
        self.command = command
        self.name: str = command.name
        self.kind: str = command.kind.value
        self.arity: int = command.arity
        self.cpu: bool = command.kind is Kind.CPU
        self.handler: Callable[[CommandContext, list[bytes]], Any] = command.handler
        self.has_subcommands: bool = bool(command.subcommands)
        self.no_auth: bool = NO_AUTH in command.flags
        self.denyoom: bool = DENYOOM in command.flags
        self.subscribed_ok: bool = command.name in SUBSCRIBED_MODE_COMMANDS
        self.counters = counters


class Dispatcher:
    """Executes requests against a registry for one server."""

    def __init__(self, registry: Registry, server: ServerState) -> None:
        self.registry = registry
        self.server = server
        threshold_ms = server.config.slowlog_threshold_ms
        #: Redis's slowlog-log-slower-than: a negative threshold turns the slow log off.
        self._slow_ns: int = int(threshold_ms * 1_000_000) if threshold_ms >= 0 else SLOW_LOG_OFF
        self._stats: Stats = server.stats
        self._lookup = registry.lookup
        self._table = server.command_stats
        self._memory: MemoryAccount = server.memory
        #: An attribute, not the module global: compiled, a global is a dict lookup on each of two reads per request.
        self._clock: Callable[[], int] = _perf_counter_ns
        self._dataset: Keyspace = server.keyspace
        #: Each spelling of a command name clients sent (``GET``, ``get``) -> its entry; bounded as the registry's
        #: own spelling cache is. Only found commands are kept, and a registered command is never replaced.
        self._entries: dict[bytes, _Entry] = {}

    def _entry(self, spelling: bytes) -> _Entry | None:
        """The entry of the command called ``spelling`` (any case), made and kept on its first request."""
        command = self._lookup(spelling)
        if command is None:
            return None
        entry = _Entry(command, self._table.get(command.name, command.kind.value))
        if len(self._entries) < MAX_CACHED_SPELLINGS:
            self._entries[spelling] = entry
        return entry

    def execute(self, ctx: CommandContext, args: list[bytes]) -> bytes | Action:
        """Run one request. Returns encoded reply bytes, or an action for the front end.

        Statistics: one clock read before and after an inline handler feed the
        command's calls, time and latency histogram (:mod:`server.store.commandstats`),
        the slow log and the Prometheus metrics; a cpu command is counted when
        its reply arrives (:meth:`finish_cpu`).

        Error handling: unknown commands, wrong arity and :class:`CommandError`
        become error replies with Redis's wording, checked in Redis's order
        (unknown, arity, then ``-NOAUTH`` before AUTH when a password is set,
        then the RESP2 subscribed-mode rule of :mod:`server.commands.pubsub`, then ``-OOM`` for a command
        flagged ``denyoom`` when used memory is past maxmemory and the policy cannot evict enough:
        Redis's processCommand).
        A request whose first word is ``POST`` or ``Host:`` is an HTTP request
        sent to this port: it gets no reply, the client is marked to be closed
        and the attempt is logged (see :mod:`server.security`). Any other
        exception is a bug in a command: it is logged once at warning with its
        traceback and answered ``-ERR internal error``; the connection and the
        server go on.
        """
        stats = self._stats
        stats.total_commands_processed += 1
        entry = self._entries.get(args[0])
        if entry is None:
            entry = self._entry(args[0])
        client = ctx.client
        if entry is None:
            if security.is_http_request(args[0]):
                security.log_security_attack(client.addr)
                client.close_requested = True
                return _NO_REPLY
            stats.total_error_replies += 1
            return encode_error(unknown_command_error(args))
        name = entry.name
        counters = entry.counters
        if entry.has_subcommands and len(args) > 1:
            name = subcommand_name(entry.command, args[1])
            counters = self._table.get(name, entry.kind)
        client.last_command = name  # CLIENT LIST's cmd=, Redis's full name (client|info)
        arity = entry.arity
        if (len(args) != arity) if arity >= 0 else (len(args) < -arity):  # Redis arity: exact, or -N = at least N
            stats.total_error_replies += 1
            counters.rejected += 1
            return encode_error(wrong_arity_error(entry.name))
        if not entry.no_auth and not client.authenticated:
            stats.total_error_replies += 1
            counters.rejected += 1  # Redis: NOAUTH is a rejected call of the command
            return _NOAUTH_REPLY
        if not entry.subscribed_ok and client.subscriptions and client.resp == 2:
            stats.total_error_replies += 1
            counters.rejected += 1  # Redis: a rejected call, like NOAUTH
            return encode_error(subscribed_mode_error(name))
        memory = self._memory
        # MemoryAccount.over_limit, inlined: two attribute loads, an addition and a comparison per request.
        if (
            self._dataset.used_bytes + memory.client_output_bytes > memory.bound
            and not memory.make_room()
            and entry.denyoom
        ):
            stats.total_error_replies += 1
            counters.rejected += 1  # Redis: an OOM refusal is a rejected call
            return _OOM_REPLY
        started: int = self._clock()
        if entry.cpu:
            try:
                converted = entry.command.convert_args(args)
            except CommandError as exc:
                stats.total_error_replies += 1
                self._count_failure(counters, started, exc.message, ctx, args)
                return encode_error(exc.message)
            stats.total_cpu_commands += 1
            return RunCpu(name, entry.handler, converted, args)
        try:
            result = entry.handler(ctx, args)
        except CommandError as exc:
            stats.total_error_replies += 1
            self._count_failure(counters, started, exc.message, ctx, args)
            return encode_error(exc.message)
        except Exception:
            stats.total_error_replies += 1
            self._count_failure(counters, started, "ERR", ctx, args)
            log.warning("command_failed", command=entry.name, client_id=client.id, exc_info=True)
            return encode_error(f"ERR internal error while running '{entry.name}'")
        elapsed: int = self._clock() - started
        counters.ns += elapsed
        bits = elapsed.bit_length()  # server.store.commandstats.histogram_slot, inlined
        counters.histogram[
            (bits << SUB_BUCKET_BITS) | ((elapsed >> (bits - LINEAR_LIMIT_BITS)) & SUB_MASK)
            if bits > LINEAR_LIMIT_BITS
            else elapsed
        ] += 1
        if elapsed >= self._slow_ns:
            self.note_slow(name, elapsed, client, args)
        cls = result.__class__
        if cls is _RAW_REPLY:  # constants such as +PONG and +OK: already encoded, the same in RESP3...
            return result if result is not _NULL_BULK or client.resp == 2 else _RESP3_NULL  # ...but for the null
        if cls is _BYTES:  # a bulk string (GET, ECHO): encode_reply's first case, inlined
            size = len(result)
            if size < _BULK_HEADERS_CACHED:  # one join, no %-formatting (a generic call, compiled or not)
                return b"".join((_BULK_HEADERS[size], result, _CRLF))
            return b"$%d\r\n%b\r\n" % (size, result)
        if isinstance(result, Sleep):
            return result
        try:
            return encode_reply(result) if client.resp == 2 else encode_reply3(result)
        except TypeError:
            log.warning("reply_not_encodable", command=entry.name, exc_info=True)
            return encode_error(f"ERR internal error while running '{entry.name}'")

    def _count_failure(
        self, counters: CommandStats, started_ns: int, message: str, ctx: CommandContext, args: list[bytes]
    ) -> None:
        """A command that answered an error: Redis counts wrong arity as rejected, anything else as failed."""
        if message.startswith(WRONG_ARITY_PREFIX):
            counters.rejected += 1
            return
        elapsed = self._clock() - started_ns
        counters.record(elapsed)
        counters.failed += 1
        if elapsed >= self._slow_ns:
            self.note_slow(counters.name, elapsed, ctx.client, args)

    def note_rejected(self, name: str, kind: str = "inline") -> None:
        """Count a call refused before it ran, for refusals made outside :meth:`execute`: Redis's rejected_calls."""
        self._table.get(name, kind).rejected += 1

    def run_chunk(self, ctx: CommandContext, parser: RequestParser, data: bytes) -> Iterator[bytes | Action]:
        """Feed one chunk read from the client; yield each request's reply bytes or action, in request order.

        This is the per-chunk loop both front ends share: they only decide how
        to write replies and carry out actions.

        Until the client has authenticated (a password is set and AUTH has
        not yet succeeded) the parser applies Redis's pre-AUTH caps; they are
        lifted as soon as AUTH succeeds, for the very next request of the
        same chunk, as Redis parses one request at a time. An authenticated
        client pays one bool check per chunk for this.

        Error handling: a protocol error yields its Redis error reply last and
        marks the client to be closed (Redis answers, then drops the
        connection); QUIT also stops the chunk after its own reply.
        """
        client = ctx.client
        self._stats.total_net_input_bytes += len(data)
        execute = self.execute
        try:
            if not client.authenticated:
                parser.feed(data)
                data = b""  # fed: parse_chunk below takes what is left of it after AUTH
                # Redis's pre-AUTH caps, lifted as soon as AUTH succeeds, even mid-chunk: parse one at a time.
                parser.auth_required = True
                while not client.authenticated:
                    if (args := parser.next_request()) is None:
                        return
                    yield execute(ctx, args)
                    if client.close_requested:
                        return
                parser.auth_required = False
            # One parser pass for the whole chunk. Requests after a QUIT are parsed but never run.
            for args in parser.parse_chunk(data):
                yield execute(ctx, args)
                if client.close_requested:
                    return
            if parser.error is not None:
                raise parser.error  # the error that followed the good requests
        except ProtocolError as exc:
            # The message may hold the client's raw bytes as surrogates: escape them for the log.
            log.debug("protocol_error", error=exc.message.encode("utf-8", "backslashreplace").decode())
            client.close_requested = True
            yield encode_error(exc.message)

    def finish_cpu(self, action: RunCpu, started_ns: int, client_id: int, reply: bytes) -> None:
        """A cpu command's reply has arrived: count it (time includes its wait for a worker) and log it if slow.

        Both front ends call this once per :class:`RunCpu` answered, whatever
        the outcome: an error reply counts as a failed call, ``-BUSY`` (shed
        by the cpu backlog bound, it never ran) as a rejected one, as Redis
        counts its own BUSY refusals. A job whose client left is not answered,
        so not counted.
        """
        elapsed = time.perf_counter_ns() - started_ns
        counters = self._table.get(action.name, "cpu")
        if reply[:1] == b"-":
            if reply.startswith(BUSY_REPLY_PREFIX):
                counters.rejected += 1
                return
            counters.failed += 1
        counters.record(elapsed)
        if elapsed >= self._slow_ns:
            client = self.server.clients.get(client_id)
            self.note_slow(action.name, elapsed, client, action.argv or [action.name.encode()])

    def note_slow(self, name: str, elapsed_ns: int, client: ClientState | None, args: list[bytes]) -> None:
        """A command took at least the slow threshold: one log line and one SLOWLOG entry per such execution."""
        self.server.stats.slow_commands += 1
        self.server.slowlog.add(args, elapsed_ns // 1000, client)
        log.info(
            "slow_command",
            command=name,
            duration_ms=round(elapsed_ns / 1e6, 3),
            client_id=client.id if client is not None else None,
        )
