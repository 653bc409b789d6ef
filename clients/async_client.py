"""An asyncio RESP3/RESP2 client: one TCP connection shared safely by any number of tasks.

::

    from clients import AsyncClient

    async with AsyncClient("127.0.0.1", 7379) as c:
        await c.execute("PRIMES", 1_000_000)
        await asyncio.gather(*(c.execute("INCR", "n") for _ in range(1000)))

How replies find their callers
    Each call appends a future to one FIFO queue and its request bytes to the
    write buffer in the same synchronous step (no ``await`` in between), so
    the queue order is the wire order. The server answers in request order,
    so each parsed reply resolves the future at the head of the queue. The
    reading side is an :class:`asyncio.Protocol` whose ``data_received``
    callback plays the reader task's role: the loop calls it with each chunk,
    without a task switch or a stream buffer copy per chunk. Requests issued
    in the same loop iteration are written together (one ``send`` for 1000
    gathered calls), which is what makes many tasks on one connection fast.

Timeouts and cancellation (the redis-py CVE-2023-28858 lesson)
    When a call is cancelled, or its timeout expires, after its request was
    queued for sending, its future is cancelled but stays in the queue: the
    slot is kept, the reply is read when it arrives and dropped, and the
    next reply still goes to the next caller. A reply is therefore never
    handed to the wrong call, and the connection stays open with its state,
    so one slow call does not fail every other task sharing the connection.
    A cancelled command may still run on the server. A call cancelled before
    its request was queued (while waiting for the write buffer to drain)
    sends nothing. A command that never finishes (``BLPOP k 0``) holds up
    every later call on the connection; ``close()`` it, or use a pool.

Error handling
    Error replies raise :class:`~clients.errors.ReplyError` (the connection
    stays usable); a lost connection fails every waiting call with
    :class:`~clients.errors.ConnectionLostError` and the client stays closed
    (make a new one, or let :class:`clients.pool.AsyncClientPool` do it).

Protocol and pub/sub
    As :class:`clients.Client`: ``protocol=3`` (the default) opens with
    ``HELLO 3`` and falls back to RESP2 when the server refuses it. Pub/sub
    needs RESP3, where messages are pushes the connection tells apart from
    replies, so subscribing never stops other tasks' commands::

        await c.subscribe("news")
        async for message in c.messages():   # Message(kind, channel, data, pattern)
            ...

The client works on whatever event loop runs it (asyncio's or uvloop's).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final, cast

from clients._core import (
    CONFIRMATIONS,
    DEFAULT,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_PROTOCOL,
    Message,
    TimeoutArg,
    as_message,
    as_result,
    auth_payload,
    check_protocol,
    check_reply,
    handshake,
    hello_payload,
    make_parser,
    protocol_after,
    refuse_subscription,
    resets_subscriptions,
    resolve_timeout,
)
from clients.errors import (
    ClientConnectionError,
    ClientTimeoutError,
    ConnectFailedError,
    ConnectionLostError,
)
from clients.tls import TlsOptions, resolve_tls
from server.protocol import NOT_ENOUGH_DATA, ReplyParser, encode_command
from server.protocol.reply import PushReply

#: Seconds :meth:`AsyncClient.close` waits for the transport to report the
#: connection closed. Closing a socket is local and immediate; the wait only
#: lets buffered bytes go out, and 1 s bounds it when the peer stopped reading.
CLOSE_TIMEOUT: Final = 1.0

#: Write buffer size (bytes) above which callers wait for it to drain before
#: queueing more requests: asyncio's own default high-water mark for
#: transports (64 KiB), so a server that stops reading cannot make the
#: client buffer unbounded memory.
WRITE_HIGH_WATER: Final = 64 * 1024


class _Confirmation:
    """A (un)subscribe command's slot in the reply queue: answered by its confirmations (pushes), or an error.

    In RESP3 a successful (un)subscribe has no ordinary reply, only one push
    per channel; the slot keeps its place in wire order, so an error reply
    to it is never taken for the next command's reply.
    """

    __slots__ = ("count", "future", "kind", "remaining")

    def __init__(self, future: asyncio.Future[Any], kind: str, expected: int) -> None:
        self.future = future
        self.kind = kind
        self.remaining = expected
        self.count: Any = 0

    def confirmed(self, message: Message) -> None:
        # No channel: "from all" when there was nothing to leave, the only confirmation whatever was expected.
        self.remaining = 0 if message.channel is None else self.remaining - 1
        self.count = message.data
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.count)


class _ReplyProtocol(asyncio.Protocol):
    """The connection: a FIFO of waiting futures, a write buffer, the reply parser."""

    def __init__(self, loop: asyncio.AbstractEventLoop, parser: ReplyParser) -> None:
        self._loop = loop
        self._parser = parser
        self.transport: asyncio.Transport | None = None
        #: One future per request written, in wire order; cancelled ones stay until their reply is dropped.
        self.pending: collections.deque[asyncio.Future[Any] | _Confirmation] = collections.deque()
        self._wbuf: list[bytes] = []
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost: ClientConnectionError | None = None
        self.closed_future: asyncio.Future[None] = loop.create_future()
        #: RESP3 pub/sub messages, in arrival order (None once the connection is lost).
        self.messages: asyncio.Queue[Message | None] = asyncio.Queue()

    # -- asyncio.Protocol callbacks --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport implements asyncio.Transport without subclassing it: cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        pending = self.pending
        while True:
            try:
                reply = parser.next_reply()
            except Exception as exc:  # garbage on the wire: nothing after it can be matched to a request
                self.abort(ConnectionLostError(f"unparseable reply from the server: {exc}"))
                return
            if reply is NOT_ENOUGH_DATA:
                return
            if reply.__class__ is PushReply:  # out of band: a message, or a (un)subscribe confirmation
                self._pushed(reply)
                continue
            if not pending:
                self.abort(ConnectionLostError(f"the server sent a reply nobody asked for: {reply!r}"))
                return
            head = pending.popleft()
            # A subscription's slot answered by an ordinary reply: the command failed (an error reply).
            future = head.future if isinstance(head, _Confirmation) else head
            if not future.done():  # a cancelled caller's reply is dropped here
                future.set_result(reply)

    def _pushed(self, reply: PushReply) -> None:
        """A push: a confirmation counts down the subscription command at the head of the queue."""
        message = as_message(reply)
        if message is None:
            return
        if message.kind not in CONFIRMATIONS:
            self.messages.put_nowait(message)
            return
        head = self.pending[0] if self.pending else None
        if isinstance(head, _Confirmation) and head.kind == message.kind:
            head.confirmed(message)
            if head.remaining == 0:
                self.pending.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            reason = f"connection lost: {exc}" if exc else "connection closed by the server"
            self.lost = ConnectionLostError(reason)
        self._fail_all(self.lost)
        if not self.closed_future.done():
            self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- used by the client ----------------------------------------------

    def send(self, payload: bytes, futures: list[asyncio.Future[Any]] | list[_Confirmation]) -> None:
        """Queue ``futures`` and their requests in one synchronous step; the write happens this loop turn."""
        self.pending.extend(futures)
        if not self._wbuf:
            self._loop.call_soon(self._flush)
        self._wbuf.append(payload)

    def _flush(self) -> None:
        data, self._wbuf = b"".join(self._wbuf), []
        if self.transport is not None and self.lost is None:
            self.transport.write(data)

    async def wait_writable(self) -> None:
        """Wait while the transport's buffer is above the high-water mark.

        Error handling: raises the connection's error if it is lost meanwhile.
        """
        while self._write_paused and self.lost is None:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.lost is not None:
            raise self.lost

    def abort(self, error: ClientConnectionError) -> None:
        """Fail every waiting call with ``error`` and drop the connection at once."""
        if self.lost is None:
            self.lost = error
        self._fail_all(self.lost)
        if self.transport is not None:
            self.transport.abort()

    def close(self, error: ClientConnectionError) -> None:
        """Like :meth:`abort`, but lets already-buffered bytes go out first."""
        if self.lost is None:
            self.lost = error
        self._fail_all(self.lost)
        if self.transport is not None:
            self.transport.close()

    def _fail_all(self, error: ClientConnectionError) -> None:
        self.messages.put_nowait(None)  # ends messages() iterators
        pending, self.pending = self.pending, collections.deque()
        for head in pending:
            future = head.future if isinstance(head, _Confirmation) else head
            if not future.done():
                # A fresh instance per caller: one exception object raised in many tasks
                # would collect every task's traceback.
                future.set_exception(type(error)(str(error)))
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class AsyncClient:
    """An asyncio connection to a crossdock (or any Redis) server.

    Use it as ``async with AsyncClient(...) as c`` or call :meth:`connect`
    first. Parameters are those of :class:`clients.Client`: ``timeout`` is
    the default per-command timeout (``None``: wait forever), ``decode=True``
    returns bulk strings as ``str``, ``username``/``password`` send AUTH on
    connect, ``tls`` (``True`` or a :class:`~clients.tls.TlsOptions`) speaks
    TLS. See the module docstring for how cancellation is handled.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        decode: bool = False,
        username: str | None = None,
        password: str | None = None,
        core: str | None = None,
        tls: TlsOptions | bool | None = None,
        protocol: int = DEFAULT_PROTOCOL,
    ) -> None:
        self.host = host
        self.tls = resolve_tls(tls)
        self.port = port
        self.timeout = resolve_timeout(timeout, None)
        self.connect_timeout = connect_timeout
        self.decode = decode
        #: The protocol in use: 3 after a successful HELLO 3, else 2.
        self.protocol = check_protocol(protocol)
        self._auth = auth_payload(username, password)
        self._hello = hello_payload(username, password) if protocol == 3 else None
        #: What this client subscribed to, so "unsubscribe from all" knows how many confirmations to await.
        self._subscribed: dict[str, set[object]] = {"subscribe": set(), "psubscribe": set()}
        self._core = core
        self._protocol: _ReplyProtocol | None = None
        self._closed = False

    async def connect(self) -> AsyncClient:
        """Open the connection (and AUTH if a password was given); return ``self``.

        Error handling: :class:`~clients.errors.ConnectFailedError` when the
        connect fails, :class:`~clients.errors.ClientTimeoutError` after
        ``connect_timeout`` seconds, :class:`~clients.errors.ReplyError` when
        AUTH is refused; the socket is closed in every failure case. Calling
        it on a client that is already connected or closed raises
        :class:`RuntimeError`: a client is connected once.
        """
        if self._protocol is not None or self._closed:
            raise RuntimeError("an AsyncClient connects once; make a new one to reconnect")
        loop = asyncio.get_running_loop()
        parser = make_parser(self.decode, self._core)
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl": self.tls.context(), "server_hostname": self.tls.server_hostname(self.host)}
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _ReplyProtocol(loop, parser), self.host, self.port, **tls
                )
        except TimeoutError as exc:
            raise ClientTimeoutError(
                f"connect to {self.host}:{self.port} timed out after {self.connect_timeout} s"
            ) from exc
        except OSError as exc:
            raise ConnectFailedError(f"could not connect to {self.host}:{self.port}: {exc}") from exc
        self._protocol = protocol
        steps = handshake(self._hello, self._auth)
        try:
            request = next(steps)
            while True:
                request = steps.send(await self._send(request, self.connect_timeout))
        except StopIteration as done:
            self.protocol = done.value
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with :class:`ConnectionLostError`. Idempotent."""
        self._closed = True
        protocol = self._protocol
        if protocol is None:
            return
        protocol.close(ConnectionLostError("the client is closed"))
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(protocol.closed_future)
        except TimeoutError:
            if protocol.transport is not None:
                protocol.transport.abort()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the connection was lost (not before connecting)."""
        return self._closed or (self._protocol is not None and self._protocol.lost is not None)

    @property
    def connected(self) -> bool:
        """True while the connection can carry commands."""
        return self._protocol is not None and not self.closed

    @property
    def in_flight(self) -> int:
        """Requests sent whose replies have not arrived yet (cancelled ones included until drained)."""
        return 0 if self._protocol is None else len(self._protocol.pending)

    async def __aenter__(self) -> AsyncClient:
        if self._protocol is None:
            await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._protocol else "not connected"
        return f"<AsyncClient {self.host}:{self.port} {state} in_flight={self.in_flight}>"

    # -- commands --------------------------------------------------------

    async def execute(self, *args: object, timeout: TimeoutArg = DEFAULT) -> Any:
        """Send one command and return its reply (types as for :meth:`clients.Client.execute`).

        Safe to call from many tasks at once: replies are matched to calls
        in order.

        Error handling: :class:`~clients.errors.ReplyError` for an error reply;
        :class:`~clients.errors.ClientTimeoutError` past ``timeout`` (the late
        reply is dropped when it arrives); :class:`~clients.errors.ConnectionLostError`
        if the client is closed, not connected, or the connection breaks;
        :class:`TypeError` for an argument that cannot be sent, before
        anything is sent.
        """
        refuse_subscription(args)
        payload = encode_command(*args)
        reply = check_reply(await self._send(payload, resolve_timeout(timeout, self.timeout)))
        if resets_subscriptions(args):
            for family in self._subscribed.values():
                family.clear()
        self.protocol = protocol_after(args, reply, self.protocol)
        return reply

    def pipeline(self, *, timeout: TimeoutArg = DEFAULT) -> AsyncPipeline:
        """A batch of commands written at once; see :class:`AsyncPipeline`."""
        resolved = resolve_timeout(timeout, self.timeout)

        async def this_connection() -> tuple[AsyncClient, float | None]:
            return self, resolved

        return AsyncPipeline(this_connection)

    # -- pub/sub (RESP3) ---------------------------------------------------

    async def subscribe(self, *channels: object, timeout: TimeoutArg = DEFAULT) -> int:
        """SUBSCRIBE; return the subscription count once the server confirmed every channel."""
        return await self._subscription("SUBSCRIBE", channels, timeout)

    async def psubscribe(self, *patterns: object, timeout: TimeoutArg = DEFAULT) -> int:
        """PSUBSCRIBE; return the subscription count once the server confirmed every pattern."""
        return await self._subscription("PSUBSCRIBE", patterns, timeout)

    async def unsubscribe(self, *channels: object, timeout: TimeoutArg = DEFAULT) -> int:
        """UNSUBSCRIBE (all channels without arguments); return the subscriptions left."""
        return await self._subscription("UNSUBSCRIBE", channels, timeout)

    async def punsubscribe(self, *patterns: object, timeout: TimeoutArg = DEFAULT) -> int:
        """PUNSUBSCRIBE (all patterns without arguments); return the subscriptions left."""
        return await self._subscription("PUNSUBSCRIBE", patterns, timeout)

    async def messages(self) -> AsyncIterator[Message]:
        """Every published message (``message``/``pmessage``) as it arrives; ends when the connection does."""
        queue = self._ready_protocol().messages
        while (message := await queue.get()) is not None:
            yield message
        queue.put_nowait(None)  # for any other iterator

    async def _subscription(self, command: str, names: tuple[object, ...], timeout: TimeoutArg) -> int:
        """Send a (un)subscribe command; return the subscription count once every confirmation arrived.

        Error handling: :class:`RuntimeError` on a RESP2 connection; the
        server's error reply as :class:`~clients.errors.ReplyError`; a
        timeout as :class:`~clients.errors.ClientTimeoutError` (the slot is
        kept until the confirmations come, as for any late reply).
        """
        if self.protocol != 3:
            raise RuntimeError("the asyncio client's pub/sub needs RESP3 (protocol=3); use clients.Client on RESP2")
        kind = command.lower()
        family = self._subscribed["psubscribe" if kind in ("psubscribe", "punsubscribe") else "subscribe"]
        # "From all" is confirmed once per subscription, or once when there is none.
        expected = len(names) or max(1, len(family))
        protocol = self._ready_protocol()
        if protocol._write_paused:
            await protocol.wait_writable()
            protocol = self._ready_protocol()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.send(encode_command(command, *names), [_Confirmation(future, kind, expected)])
        wait = resolve_timeout(timeout, self.timeout)
        try:
            async with asyncio.timeout(wait):
                count = check_reply(await future)
        except TimeoutError:
            raise ClientTimeoutError(f"{command} not confirmed within {wait} s") from None
        finally:
            _release([future])
        # As the server names them (bytes), so "a" and b"a" are one subscription here as there.
        keys = {encode_command(name).split(b"\r\n", 2)[2][:-2] for name in names}
        if not kind.endswith("unsubscribe"):
            family.update(keys)
        elif names:
            family.difference_update(keys)
        else:
            family.clear()
        return int(count)

    def _ready_protocol(self) -> _ReplyProtocol:
        protocol = self._protocol
        if protocol is None:
            if self._closed:
                raise ConnectionLostError("the client is closed")
            raise ConnectionLostError("not connected: use 'async with AsyncClient(...)' or await connect()")
        if protocol.lost is not None:
            raise type(protocol.lost)(str(protocol.lost))
        return protocol

    async def _send(self, payload: bytes, timeout: float | None) -> Any:
        protocol = self._ready_protocol()
        if protocol._write_paused:
            await protocol.wait_writable()  # nothing is queued yet: cancelling here sends nothing
            protocol = self._ready_protocol()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.send(payload, [future])
        try:
            if timeout is None:
                return await future
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise ClientTimeoutError(f"no reply within {timeout} s") from None
        finally:
            _release([future])

    async def _send_many(self, payload: bytes, count: int, timeout: float | None) -> list[Any]:
        protocol = self._ready_protocol()
        if protocol._write_paused:
            await protocol.wait_writable()
            protocol = self._ready_protocol()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(count)]
        protocol.send(payload, futures)
        try:
            async with asyncio.timeout(timeout):
                return [await future for future in futures]
        except TimeoutError:
            raise ClientTimeoutError(f"{count} pipelined commands not answered within {timeout} s") from None
        finally:
            _release(futures)


def _release(futures: list[asyncio.Future[Any]]) -> None:
    """A call is leaving: cancel its unanswered futures so their replies are dropped when they arrive.

    A future already holding an exception (the connection broke) has it
    marked as retrieved, so asyncio does not log "exception was never
    retrieved" for the pipeline entries nobody awaited.
    """
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


class AsyncPipeline:
    """Commands queued by :meth:`execute`, written at once when the ``async with`` block ends.

    ::

        async with client.pipeline() as p:
            for i in range(1000):
                p.execute("ECHO", i)           # not awaited: it only queues
        p.results                              # 1000 replies, in order

    As with :class:`clients.sync_client.Pipeline`, error replies are stored
    in ``results`` as :class:`~clients.errors.ReplyError` instances, not
    raised; nothing is sent if the block raises; :meth:`flush` does the
    sending explicitly and returns the results. Other tasks' commands on the
    same client may be written before or after the batch, never inside it.

    ``pick_connection`` is awaited at flush time and names the client the
    batch goes out on and its timeout: the client itself for
    :meth:`AsyncClient.pipeline`, the least busy connection for
    :meth:`clients.pool.AsyncClientPool.pipeline`.

    Error handling: :class:`~clients.errors.ClientTimeoutError` if the whole
    batch is not answered within ``timeout``,
    :class:`~clients.errors.ConnectionLostError` if the connection breaks;
    ``results`` is then empty, and replies still owed are dropped.
    """

    def __init__(self, pick_connection: Callable[[], Awaitable[tuple[AsyncClient, float | None]]]) -> None:
        self._pick_connection = pick_connection
        self._queued: list[bytes] = []
        self.results: list[Any] = []

    def execute(self, *args: object) -> int:
        """Queue a command (no await); return its index in :attr:`results`.

        Error handling: an argument that cannot be sent raises
        :class:`TypeError` at once and nothing is queued.
        """
        self._queued.append(encode_command(*args))
        return len(self._queued) - 1

    def __len__(self) -> int:
        return len(self._queued)

    async def flush(self) -> list[Any]:
        """Send the queued commands, await every reply, store and return them as :attr:`results`."""
        queued, self._queued = self._queued, []
        self.results = []
        if queued:
            client, timeout = await self._pick_connection()
            replies = await client._send_many(b"".join(queued), len(queued), timeout)
            self.results = [as_result(reply) for reply in replies]
        return self.results

    async def __aenter__(self) -> AsyncPipeline:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.flush()
        else:
            self._queued = []


__all__ = ["CLOSE_TIMEOUT", "WRITE_HIGH_WATER", "AsyncClient", "AsyncPipeline"]
