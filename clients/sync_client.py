"""A blocking RESP3/RESP2 client: one TCP connection, one command (or one pipeline) at a time.

::

    from clients import Client

    with Client("127.0.0.1", 7379, timeout=5) as c:
        c.execute("SET", "k", "v")          # -> "OK"
        c.execute("GET", "k")               # -> b"v"
        with c.pipeline() as p:             # one write, one round trip
            for i in range(1000):
                p.execute("ECHO", i)
        p.results                           # [b"0", b"1", ...], in request order

Requests are encoded and replies parsed by the sans-IO core in
:mod:`server.protocol`; this module only moves bytes.

Protocol
    ``protocol=3`` (the default) opens with ``HELLO 3`` (AUTH inside it) and
    falls back to RESP2 (plain AUTH) when the server refuses HELLO 3;
    :attr:`Client.protocol` says which one is in use. ``protocol=2`` never
    sends HELLO. RESP3 replies arrive as maps (``dict``), sets, doubles,
    booleans (see :mod:`server.protocol.reply_parser`).

Pub/sub
    ::

        c.subscribe("news")                  # returns once the server confirmed
        c.psubscribe("alerts.*")
        message = c.get_message(timeout=1)   # Message(kind="message", channel=b"news", data=b"...") or None
        for message in c.listen(): ...       # blocks for each message

    In RESP3 messages are pushes, so the connection still runs commands
    between them; in RESP2 the server allows only the (un)subscribe
    commands, PING and QUIT until the last subscription is gone.

Timeouts and interruption
    A call that times out (or is interrupted by ``KeyboardInterrupt`` or any
    other exception) after its request was completely written leaves its
    reply owed on the connection. The client counts such replies and, on the
    next call, reads and drops them before reading that call's own reply, so a
    reply is never handed to the wrong call and the connection keeps its state
    (AUTH, CLIENT SETNAME, the selected db). The price: the next call waits
    for the slow command to finish on the server, which it would anyway,
    because a server answers one connection's commands in order. A command
    that never finishes (``BLPOP k 0``) therefore blocks the connection for
    good: ``close()`` the client and make a new one. If the request was only
    partly written, the byte stream cannot be repaired and the connection is
    closed instead.

Thread safety
    Calls hold a lock, so a ``Client`` may be shared between threads, but
    they are served one after the other; use one client per thread for
    parallelism.
"""

from __future__ import annotations

import collections
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Final

from clients._core import (
    DEFAULT,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_PROTOCOL,
    READ_CHUNK_SIZE,
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
    ClientTimeoutError,
    ConnectFailedError,
    ConnectionLostError,
    ReplyError,
)
from clients.tls import TlsOptions, resolve_tls
from server.protocol import NOT_ENOUGH_DATA, ErrorReply, encode_command
from server.protocol.reply import PushReply

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE


class Client:
    """A blocking connection to a crossdock (or any Redis) server.

    ``timeout`` is the default per-command timeout in seconds (``None``: wait
    forever); each call may override it. ``decode=True`` returns bulk strings
    as ``str`` (UTF-8) instead of ``bytes``; status replies (``+OK``) are
    always ``str``. ``username``/``password`` send AUTH right after
    connecting. ``core`` picks the reply parser's core (``"pure"`` or
    ``"mypyc"``; ``None``: the one :data:`server.protocol.CORE` names).
    ``tls``: ``True`` or a
    :class:`~clients.tls.TlsOptions` (redis-cli's ``--tls --cacert --cert
    --key --sni --insecure``) to speak TLS; the handshake is part of the connect.
    ``protocol``: 3 (RESP3, falling back to 2 when the server refuses it)
    or 2; see the module docstring.

    Error handling: the constructor connects, and raises
    :class:`~clients.errors.ConnectFailedError` (refused, unreachable),
    :class:`~clients.errors.ClientTimeoutError` (no answer within
    ``connect_timeout``) or :class:`~clients.errors.ReplyError` (AUTH refused,
    code ``WRONGPASS`` or ``ERR``); no socket is left open on failure.
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
        self.decode = decode
        #: The protocol in use: 3 after a successful HELLO 3, else 2.
        self.protocol = check_protocol(protocol)
        #: Pushes (RESP3) read while waiting for a reply, and pub/sub messages read while waiting for a
        #: confirmation: handed out by get_message, oldest first.
        self._pushes: collections.deque[Any] = collections.deque()
        self._subscribed: dict[str, set[Any]] = {"subscribe": set(), "psubscribe": set()}
        #: The confirmations of the last (un)subscribe call, one per channel or pattern, in order.
        self.confirmations: list[Message] = []
        self._lock = threading.Lock()
        self._parser = make_parser(decode, core)
        #: Replies still to arrive for calls that gave up waiting (timeout, interrupt); read and dropped.
        self._stale = 0
        self._closed_reason = "the client is closed"
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._events = 0
        auth = auth_payload(username, password)
        hello = hello_payload(username, password) if self.protocol == 3 else None
        self._connect(connect_timeout)
        steps = handshake(hello, auth)
        try:
            request = next(steps)
            while True:
                request = steps.send(self._transact(request, 1, connect_timeout)[0])
        except StopIteration as done:
            self.protocol = done.value
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------

    def _connect(self, connect_timeout: float | None) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=connect_timeout)
        except TimeoutError as exc:
            raise ClientTimeoutError(f"connect to {self.host}:{self.port} timed out after {connect_timeout} s") from exc
        except OSError as exc:
            raise ConnectFailedError(f"could not connect to {self.host}:{self.port}: {exc}") from exc
        if self.tls is not None:
            sock = self._handshake(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            selector = selectors.DefaultSelector()
            selector.register(sock, _READ)
        except BaseException:
            sock.close()
            raise
        self._sock, self._selector, self._events = sock, selector, _READ

    def _handshake(self, sock: socket.socket) -> socket.socket:
        """Wrap ``sock`` in TLS and finish the handshake (blocking, within the connect timeout).

        Error handling: a certificate that does not verify, or a server that
        does not speak TLS, raises :class:`ConnectFailedError`; the socket is closed.
        """
        assert self.tls is not None
        try:
            context = self.tls.context()
        except OSError as exc:  # a missing certificate file, or one that is not PEM
            sock.close()
            raise ConnectFailedError(f"cannot load the TLS files: {exc}") from exc
        try:
            return context.wrap_socket(sock, server_hostname=self.tls.server_hostname(self.host))
        except TimeoutError as exc:
            sock.close()
            raise ClientTimeoutError(f"TLS handshake with {self.host}:{self.port} timed out") from exc
        except OSError as exc:  # ssl.SSLError and a reset during the handshake
            sock.close()
            raise ConnectFailedError(f"TLS handshake with {self.host}:{self.port} failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection. Idempotent; later calls raise :class:`ConnectionLostError`."""
        self._shutdown("the client is closed")

    def _shutdown(self, reason: str) -> None:
        sock, selector = self._sock, self._selector
        self._sock = self._selector = None
        self._closed_reason = reason
        if selector is not None:
            selector.close()
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is closed or was lost."""
        return self._sock is None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Client {self.host}:{self.port} {state}>"

    # -- commands --------------------------------------------------------

    def execute(self, *args: object, timeout: TimeoutArg = DEFAULT) -> Any:
        """Send one command and return its reply.

        Arguments are ``bytes``, ``str`` (sent as UTF-8), ``int`` or ``float``
        (sent as decimal text). The reply is ``bytes`` (``str`` with
        ``decode=True``), ``int``, ``str`` for a status reply, ``None`` for a
        null, or a ``list`` of those.

        Error handling: an error reply raises
        :class:`~clients.errors.ReplyError` and the connection stays usable;
        :class:`~clients.errors.ClientTimeoutError` when the reply is later
        than ``timeout`` (see the module's "Timeouts and interruption");
        :class:`~clients.errors.ConnectionLostError` when the connection is
        closed or breaks; :class:`TypeError` for an argument that cannot be
        sent, before anything is sent.
        """
        refuse_subscription(args)
        payload = encode_command(*args)
        reply = check_reply(self._transact(payload, 1, resolve_timeout(timeout, self.timeout))[0])
        if resets_subscriptions(args):
            for family in self._subscribed.values():
                family.clear()
        self.protocol = protocol_after(args, reply, self.protocol)
        return reply

    def pipeline(self, *, timeout: TimeoutArg = DEFAULT) -> Pipeline:
        """A batch of commands sent in one write; see :class:`Pipeline`."""
        return Pipeline(self, resolve_timeout(timeout, self.timeout))

    # -- the I/O loop ----------------------------------------------------

    def _transact(self, payload: bytes, count: int, timeout: float | None, *, raw: bool = False) -> list[Any]:
        """Write ``payload`` (``count`` requests) and return the ``count`` replies, in order.

        RESP3 pushes read meanwhile are kept for :meth:`get_message`, not
        counted as replies; with ``raw`` every value counts, pushes included,
        and a timeout leaves nothing owed (pub/sub reads: nothing was asked).

        Writes and reads interleave (a selector waits for whichever the
        socket allows), so a pipeline far bigger than the socket buffers
        cannot deadlock against a server that stops reading while its own
        replies are not being read.

        Error handling: see :meth:`execute`. On a timeout or any other
        exception the replies not yet read are counted as stale and dropped
        later, or the connection is closed if the payload was not fully sent.
        """
        with self._lock:
            sock, selector = self._sock, self._selector
            if sock is None or selector is None:
                raise ConnectionLostError(self._closed_reason)
            deadline = None if timeout is None else time.monotonic() + timeout
            parser = self._parser
            view = memoryview(payload)
            total = len(view)
            sent = 0
            replies: list[Any] = []
            try:
                while True:
                    while len(replies) < count:
                        try:
                            reply = parser.next_reply()
                        except Exception as exc:  # the stream is garbage: nothing after it can be trusted
                            raise self._lost(f"unparseable reply from the server: {exc}") from exc
                        if reply is NOT_ENOUGH_DATA:
                            break
                        if reply.__class__ is PushReply and not raw:
                            self._pushes.append(reply)
                        elif self._stale:
                            self._stale -= 1
                        else:
                            replies.append(reply)
                    if sent == total and len(replies) == count:
                        return replies
                    events = _READ
                    if sent < total:
                        try:
                            sent += sock.send(view[sent:])
                        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                            pass
                        except OSError as exc:
                            raise self._lost(f"connection lost while sending: {exc}") from exc
                        if sent < total:
                            events = _READ | _WRITE
                    if sent == total and len(replies) == count:
                        continue  # replies were already buffered; let the top of the loop return them
                    if not self._wait(selector, sock, events, deadline) & _READ:
                        continue
                    try:
                        data = sock.recv(READ_CHUNK_SIZE)
                        # TLS: bytes already decrypted are invisible to the selector; take them now.
                        while isinstance(sock, ssl.SSLSocket) and data and sock.pending():
                            data += sock.recv(READ_CHUNK_SIZE)
                    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                    except OSError as exc:
                        raise self._lost(f"connection lost while reading: {exc}") from exc
                    if not data:
                        raise self._lost("connection closed by the server")
                    parser.feed(data)
            except ConnectionLostError:
                raise
            except BaseException as exc:
                # Timeout, KeyboardInterrupt, anything: never let a late reply reach the next call.
                if self._sock is not None:
                    if sent < total:
                        self._shutdown("the connection was closed because a request was only partly sent")
                    elif not raw:
                        self._stale += count - len(replies)
                if isinstance(exc, TimeoutError) and not isinstance(exc, ClientTimeoutError):
                    raise ClientTimeoutError(f"no reply within {timeout} s") from None
                raise

    # -- pub/sub ---------------------------------------------------------

    def subscribe(self, *channels: object, timeout: TimeoutArg = DEFAULT) -> int:
        """SUBSCRIBE; return the subscription count once the server confirmed every channel."""
        return self._subscription("SUBSCRIBE", channels, timeout)

    def psubscribe(self, *patterns: object, timeout: TimeoutArg = DEFAULT) -> int:
        """PSUBSCRIBE; return the subscription count once the server confirmed every pattern."""
        return self._subscription("PSUBSCRIBE", patterns, timeout)

    def unsubscribe(self, *channels: object, timeout: TimeoutArg = DEFAULT) -> int:
        """UNSUBSCRIBE (from all channels without arguments); return the subscriptions left."""
        return self._subscription("UNSUBSCRIBE", channels, timeout)

    def punsubscribe(self, *patterns: object, timeout: TimeoutArg = DEFAULT) -> int:
        """PUNSUBSCRIBE (from all patterns without arguments); return the subscriptions left."""
        return self._subscription("PUNSUBSCRIBE", patterns, timeout)

    def get_message(self, timeout: float | None = None) -> Message | None:
        """The next published message (``message`` or ``pmessage``), or None after ``timeout`` seconds.

        ``timeout=None`` waits for as long as it takes, ``0`` only takes what already arrived.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                value = self._next_event(remaining)
            except ClientTimeoutError:
                return None
            message = as_message(value)
            if message is not None and message.kind in ("message", "pmessage"):
                return message

    def listen(self) -> Iterator[Message]:
        """Every published message, as it arrives (blocks between them)."""
        while True:
            message = self.get_message(timeout=None)
            if message is not None:
                yield message

    def _subscription(self, command: str, names: tuple[object, ...], timeout: TimeoutArg) -> int:
        kind = command.lower()
        wait = resolve_timeout(timeout, self.timeout)
        family = self._subscribed["psubscribe" if "psub" in kind or "punsub" in kind else "subscribe"]
        expected = len(names) or max(1, len(family))  # "from all" is confirmed once per subscription, or once
        self._transact(encode_command(command, *names), 0, wait)
        count = 0
        self.confirmations = []
        held: list[Any] = []  # messages that came before the confirmations: get_message hands them out
        try:
            for _ in range(expected):
                while True:
                    value = self._next_event(wait)
                    if isinstance(value, ErrorReply):
                        raise ReplyError(str(value))
                    message = as_message(value)
                    if message is not None and message.kind == kind:
                        break
                    held.append(value)
                self.confirmations.append(message)
                if message.channel is None:  # "from all", and there was nothing: the only confirmation
                    count = message.data
                    break
                if kind.endswith("unsubscribe"):
                    family.discard(message.channel)
                else:
                    family.add(message.channel)
                count = message.data
        finally:
            self._pushes.extendleft(reversed(held))
        return count

    def _next_event(self, timeout: float | None) -> Any:
        """The oldest push kept aside, else the next value the server sends (any kind)."""
        if self._pushes:
            return self._pushes.popleft()
        return self._transact(b"", 1, timeout, raw=True)[0]

    def _wait(self, selector: selectors.BaseSelector, sock: socket.socket, events: int, deadline: float | None) -> int:
        """Block until ``sock`` is ready for ``events``; return the ready events.

        Error handling: raises the builtin :class:`TimeoutError` at the
        deadline (turned into :class:`ClientTimeoutError` by the caller).
        """
        if events != self._events:
            selector.modify(sock, events)
            self._events = events
        remaining = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
        ready = selector.select(remaining)
        if not ready:
            raise TimeoutError
        return ready[0][1]

    def _lost(self, reason: str) -> ConnectionLostError:
        self._shutdown(reason)
        return ConnectionLostError(reason)


class Pipeline:
    """Commands queued by :meth:`execute`, sent in one write when the ``with`` block ends.

    ::

        with client.pipeline() as p:
            p.execute("SET", "a", 1)
            p.execute("INCR", "a")
            p.execute("INCR", "nope", "extra")     # wrong arity
        p.results   # ["OK", 2, ReplyError("ERR wrong number of arguments for 'incr' command")]

    ``results`` holds one entry per queued command, in order. An error reply
    is stored there as a :class:`~clients.errors.ReplyError` instance instead
    of being raised, so one bad command does not hide the others' replies.
    Nothing is sent if the block raises. Without ``with``, call
    :meth:`flush`, which returns the results; a pipeline can be filled and
    flushed again. It is not a transaction: other clients' commands may run
    between these on the server (use MULTI/EXEC for that where supported).

    Error handling: a timeout (``timeout`` covers the whole batch) raises
    :class:`~clients.errors.ClientTimeoutError` and a broken connection
    :class:`~clients.errors.ConnectionLostError`; ``results`` is then left
    empty and the replies still owed are dropped as for a single command.
    """

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._queued: list[bytes] = []
        self.results: list[Any] = []

    def execute(self, *args: object) -> int:
        """Queue a command; return its index in :attr:`results`.

        Error handling: an argument that cannot be sent raises
        :class:`TypeError` here, at once, and nothing is queued.
        """
        self._queued.append(encode_command(*args))
        return len(self._queued) - 1

    def __len__(self) -> int:
        return len(self._queued)

    def flush(self) -> list[Any]:
        """Send the queued commands, read every reply, store and return them as :attr:`results`."""
        queued, self._queued = self._queued, []
        self.results = []
        if queued:
            replies = self._client._transact(b"".join(queued), len(queued), self._timeout)
            self.results = [as_result(reply) for reply in replies]
        return self.results

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._queued = []


__all__ = ["Client", "Pipeline"]
