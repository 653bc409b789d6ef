"""The asyncio front end: ``asyncio.start_server`` on uvloop, one protocol object per connection.

``asyncio.start_server`` accepts; its connection callback is a plain
function that hands the transport to a :class:`Connection`, an
``asyncio.Protocol``, with ``transport.set_protocol``. From then on the loop
calls ``Connection.data_received`` for every chunk read: no StreamReader, no
task and no coroutine frame per connection. That is what keeps an idle
connection at a few KiB and a request at one callback (docs/decisions.md,
"Connections are protocols"; docs/benchmarks.md has the figures).

Each chunk read is parsed whole; inline commands are answered at once and
every reply that is ready goes out in one ``write``. A cpu command becomes a
future from ``loop.run_in_executor(pool, ...)`` and takes its place in the
connection's reply queue, so several pipelined cpu requests run in parallel on
the pool while replies still leave in request order. Reading pauses while the
reply queue or the transport's write buffer is above its bound (flow control
through ``pause_reading``, without a drain per reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog

from server import security
from server.commands import CommandContext, Dispatcher, Registry, RunCpu, Sleep, default_registry
from server.config import Config
from server.cpu.backend import CpuBackend, cpu_reply
from server.cpu.backends import start_pool
from server.cpu.jobs import CpuJobs, attach_pool
from server.cpu.worker import run_cpu
from server.errors import StartupError
from server.frontends import tls
from server.limits.constants import (
    EXPIRE_SWEEP_INTERVAL,
    LISTEN_BACKLOG,
    MAX_PENDING_REPLIES_PER_CLIENT,
    READ_CHUNK_SIZE,
    WRITE_BUFFER_HIGH_WATER,
)
from server.limits.resources import (
    MAXCLIENTS_ERROR,
    OUTPUT_BUFFER,
    QUERY_BUFFER,
    WRITE_TIMEOUT,
    RateLimitedLog,
    clients_cron_interval,
    deadline_passed,
    descriptors_exhausted,
    fit_open_files,
    note_limit_close,
)
from server.observability.metrics import MetricsServer, start_metrics
from server.protocol import RequestParser, encode_error, encode_reply
from server.store.state import ClientState, ServerState, format_address

log = structlog.get_logger("crossdock.aio")

_SHUTTING_DOWN = "ERR server is shutting down"


class Connection(asyncio.Protocol):
    """One client connection on the event loop: read, parse, dispatch, reply in order.

    Life cycle: created by :meth:`AsyncServer._accept` (start_server's
    callback), fed by ``data_received``, finished by ``connection_lost``.
    A connection stops reading (QUIT, a protocol error, EOF from the client,
    shutdown) but still sends every reply to requests it has read; the
    transport is closed once the reply queue is empty.

    Error handling: a protocol error is answered with Redis's reply and the
    connection closed; a reset from the peer ends it quietly (the transport
    reports it through ``connection_lost``); an unexpected exception while
    serving is logged at warning with the client id and the connection
    aborted. The server goes on in every case.
    """

    __slots__ = (
        "_closed",
        "_closed_waiter",
        "_out",
        "_out_bytes",
        "_paused_for_queue",
        "_paused_for_writes",
        "_pending",
        "_reading_done",
        "client",
        "ctx",
        "dispatcher",
        "parser",
        "server",
        "stats",
        "transport",
    )

    def __init__(self, server: AsyncServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        self.stats = server.state.stats
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.client: ClientState = server.state.register_client(
            format_address(transport.get_extra_info("peername")),
            format_address(transport.get_extra_info("sockname")),
            sock.fileno() if sock is not None else -1,
        )
        self.ctx = CommandContext(server.state, self.client, server.registry)
        self.parser = RequestParser(max_bulk_length=server.config.max_bulk_length)
        #: Replies ready to go out in the next write.
        self._out: list[bytes] = []
        #: Reply bytes held here and not yet handed to the transport (``_out`` and the bytes in ``_pending``):
        #: with the transport's buffer, what --output-buffer-limit bounds.
        self._out_bytes = 0
        #: Replies waiting behind an unfinished future, in request order (bytes or futures).
        #: A list, not a deque: an empty deque allocates a 64-slot block (~600 bytes per idle connection),
        #: and released heads are dropped in one slice per batch, so pops stay cheap.
        self._pending: list[bytes | asyncio.Future[bytes]] = []
        self._paused_for_queue = False
        self._paused_for_writes = False
        #: No more requests will be read (QUIT, protocol error, EOF, shutdown); close once replies are out.
        self._reading_done = False
        self._closed = False
        #: Created on demand (shutdown waits on it), so an idle connection does not carry a future.
        self._closed_waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        """Parse every request in ``data``, answer what can be answered now, write once."""
        if self._reading_done:
            return
        pending = self._pending
        out = self._out
        served = False
        try:
            for result in self.dispatcher.run_chunk(self.ctx, self.parser, data):
                served = True
                if isinstance(result, bytes):
                    if pending:
                        pending.append(result)
                    else:
                        out.append(result)
                    self._out_bytes += len(result)
                    if self._out_bytes >= WRITE_BUFFER_HIGH_WATER:  # a pipeline of large replies: write early
                        self._write_out()
                        if self._over_output_limit():
                            return
                else:
                    self._start_action(result)
            if out:
                self._write_out()
        except Exception:
            log.warning("connection_failed", client_id=self.client.id, exc_info=True)
            self.transport.abort()
            return
        # The output cap can only be passed with replies held back, with the transport above its high-water
        # mark (it has called pause_writing), or with a cap set below that mark: skip the check otherwise.
        if (
            self._out_bytes or self._paused_for_writes or self._closed or self.server.small_output_limit
        ) and self._over_output_limit():
            return
        client = self.client
        buffered = self.parser.held
        if buffered:
            self._note_partial_request(buffered, served)
        elif client.request_started:
            client.request_started = 0.0
        if client.close_requested:
            self._stop_reading()
        elif pending and len(pending) >= MAX_PENDING_REPLIES_PER_CLIENT and not self._paused_for_queue:
            self._paused_for_queue = True
            self._update_reading()

    def eof_received(self) -> bool:
        """The client half-closed: answer what was read, then close (keep the transport open until then)."""
        self._stop_reading()
        return True

    def pause_writing(self) -> None:
        self._paused_for_writes = True
        if not self.client.output_since:  # the write deadline runs from here (server.limits.resources)
            self.client.output_since = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_for_writes = False
        self.client.output_since = 0.0
        self.client.last_interaction = time.monotonic()  # as Redis: a write the client took is interaction
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._reading_done = True
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()
        self._out.clear()
        self.server.state.unregister_client(self.client)
        self.server.forget(self)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    # -- replies ---------------------------------------------------------------------------
    def _start_action(self, action: RunCpu | Sleep) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(action, Sleep):
            future: asyncio.Future[bytes] = loop.create_future()
            reply = encode_reply(action.reply)
            handle = loop.call_later(action.seconds, _resolve, future, reply)
            future.add_done_callback(lambda _f: handle.cancel())
        else:
            future = self.server.run_cpu(action, self.client.id)
            if future.done() and not self._pending:  # --cpu inline: the reply is already here
                reply = future.result()
                self._out_bytes += len(reply)
                self._out.append(reply)
                return
        self._pending.append(future)
        future.add_done_callback(self._on_future_done)

    def _on_future_done(self, _future: asyncio.Future[bytes]) -> None:
        if self._closed:
            return
        self._release_ready()
        self._write_out()
        if self._over_output_limit():
            return
        # The idle deadline counts from the reply, not from the request that waited on us (Redis does the same).
        self.client.last_interaction = time.monotonic()
        if self._paused_for_queue and len(self._pending) < MAX_PENDING_REPLIES_PER_CLIENT:
            self._paused_for_queue = False
            self._update_reading()
        if self._reading_done and not self._pending:
            self.transport.close()

    def _release_ready(self) -> None:
        pending = self._pending
        out = self._out
        ready = 0
        for head in pending:
            if isinstance(head, bytes):
                out.append(head)
            elif head.done():
                reply = _future_reply(head)
                self._out_bytes += len(reply)
                out.append(reply)
            else:
                break
            ready += 1
        del pending[:ready]

    def _write_out(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self._closed:
            return
        self._out_bytes -= len(data)
        self.stats.total_net_output_bytes += len(data)
        self.transport.write(data)

    def _over_output_limit(self) -> bool:
        """True when this connection is closed, or is now closed for holding too many unsent reply bytes."""
        if self._closed:
            return True
        unsent = self._out_bytes + self.transport.get_write_buffer_size()
        limit = self.server.config.output_buffer_limit
        if unsent <= limit:
            return False
        self.close_for(OUTPUT_BUFFER, unsent=unsent, limit=limit)
        return True

    # -- limits ------------------------------------------------------------------------------
    def _note_partial_request(self, buffered: int, served: bool) -> None:
        """The parser holds part of a request: enforce the query buffer cap, start its request deadline."""
        limit = self.server.config.query_buffer_limit
        if buffered > limit:
            self.close_for(QUERY_BUFFER, buffered=buffered, limit=limit)
        elif served or not self.client.request_started:
            self.client.request_started = time.monotonic()

    def waiting_on_peer(self) -> bool:
        """No request of this client is executing and its replies are not held back: only the peer can act."""
        return not self._pending and not self._paused_for_writes and not self._reading_done

    def close_for(self, reason: str, **detail: Any) -> None:
        """Close this client because it passed a limit: count and log once, no reply.

        A write-side limit (output buffer, write timeout) aborts: queued
        replies are dropped with the transport's buffer at once. A read-side
        one (idle, request deadline, query buffer) closes: nothing is queued.
        """
        if self._closed:
            return
        note_limit_close(self.client, reason, self.stats, **detail)
        self._reading_done = True
        if reason in (OUTPUT_BUFFER, WRITE_TIMEOUT):
            self._closed = True  # stop queueing now; connection_lost releases the rest
            self._out.clear()
            self._out_bytes = 0
            self.transport.abort()
        else:
            self.transport.close()

    # -- reading control -------------------------------------------------------------------
    def _update_reading(self) -> None:
        """Pause reading while either bound is exceeded; resume when both are clear (unless reading is done)."""
        if self._closed or self._reading_done:
            return
        if self._paused_for_queue or self._paused_for_writes:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        """No more requests from this client; those already read still get replies, then the transport closes."""
        if self._closed:
            return
        if not self._reading_done:
            self._reading_done = True
            with contextlib.suppress(RuntimeError):  # already closing
                self.transport.pause_reading()
        if not self._pending:
            self.transport.close()

    def stop_reading(self) -> None:
        """Shutdown: stop taking requests; reply to those already read, then close."""
        self._stop_reading()

    async def wait_closed(self) -> None:
        """Wait until the transport has reported the connection lost."""
        if self._closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await self._closed_waiter

    def abort(self) -> None:
        """Close at once, dropping whatever is unsent (shutdown timeout passed)."""
        self.transport.abort()


class _ReleasedStreamWriter(asyncio.StreamWriter):
    """start_server's StreamWriter once its transport belongs to a :class:`Connection`.

    The writer is never used after the hand-over and is dropped with its
    StreamReader (about 1 KiB per connection). A plain StreamWriter closes a
    transport that is still open when it is garbage-collected (``__del__``,
    CPython 3.11.5+), which would cut the client off at the next GC pass;
    this subclass leaves the transport to its owner.
    """

    def __del__(self) -> None:
        pass


def _resolve(future: asyncio.Future[bytes], reply: bytes) -> None:
    if not future.done():
        future.set_result(reply)


def _future_reply(future: asyncio.Future[bytes]) -> bytes:
    """A slot's reply: futures in the reply queue are only ever resolved with bytes, or cancelled at close."""
    return encode_error(_SHUTTING_DOWN) if future.cancelled() else future.result()


class AsyncServer:
    """Config -> running asyncio server: ``start()``, ``serve()`` until stopped, ``shutdown()``."""

    def __init__(self, config: Config, command_registry: Registry | None = None) -> None:
        self.config = config
        #: An output cap below the transport's high-water mark can be passed without pause_writing.
        self.small_output_limit = config.output_buffer_limit <= WRITE_BUFFER_HIGH_WATER
        self.registry = command_registry or default_registry()
        self.state = ServerState(config, thread_safe=False)
        self.dispatcher = Dispatcher(self.registry, self.state)
        self.pool: CpuBackend | None = None
        #: The cpu-job policy on the pool (backlog bound, timeouts, failures); None with --cpu inline.
        self.cpu_jobs: CpuJobs | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._cron: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None
        self.stopping = asyncio.Event()
        self._maxclients_log = RateLimitedLog("maxclients_reached")
        self._descriptors_log = RateLimitedLog("descriptors_exhausted")

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Size the descriptor table, start the pool (pre-warmed), begin accepting. Logs ``started``.

        Error handling: a descriptor limit too low for the server itself
        raises :class:`~server.limits.resources.StartupError` before anything starts.
        """
        config = self.config = fit_open_files(self.state)
        ssl_context = tls.server_context_or_exit(config)  # a bad certificate stops start-up before the pool
        if config.cpu == "pool":
            self.pool = await asyncio.to_thread(start_pool, config)
            loop = asyncio.get_running_loop()
            self.cpu_jobs = attach_pool(
                self.state, self.pool, submit=loop.run_in_executor, call_soon=loop.call_soon_threadsafe
            )
        else:
            log.warning(
                "cpu_inline_blocks_loop",
                detail="--cpu inline runs cpu commands on the event loop: every client waits while one runs",
            )
        self._server = await asyncio.start_server(
            self._accept,
            config.host,
            config.port,
            limit=READ_CHUNK_SIZE,
            reuse_address=True,
            reuse_port=config.reuseport > 0,  # a --reuseport child: N listeners share the port
            backlog=LISTEN_BACKLOG,
            **tls.start_server_arguments(ssl_context),
        )
        sockets = self._server.sockets or ()
        self.state.bound_port = sockets[0].getsockname()[1] if sockets else config.port
        self._sweeper = asyncio.create_task(self._sweep_expired())
        self._cron = asyncio.create_task(self._clients_cron(clients_cron_interval(config)))
        self.metrics = start_metrics(self.state)
        log.info(
            "started",
            mode="async",
            cpu=config.cpu,
            host=config.host,
            port=self.state.bound_port,
            workers=self.state.pool_size,
            maxclients=config.maxclients,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            tls=ssl_context is not None,
        )

    async def serve(self) -> None:
        """Serve until :meth:`request_stop`, then shut down gracefully."""
        await self.stopping.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        self.stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, let read requests finish (up to shutdown_timeout), close connections, stop the pool."""
        log.info("stopping", connections=len(self._connections), timeout=self.config.shutdown_timeout)
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._cron is not None:
            self._cron.cancel()
        connections = list(self._connections)
        for connection in connections:
            connection.stop_reading()
        waiters = [asyncio.ensure_future(connection.wait_closed()) for connection in connections]
        if waiters:
            _done, not_done = await asyncio.wait(waiters, timeout=self.config.shutdown_timeout)
            if not_done:
                log.warning("shutdown_timeout_closing", connections=len(not_done))
                for connection in list(self._connections):
                    connection.abort()
                await asyncio.wait(not_done, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown)  # the cpu timeout still applies while it waits
        if self.cpu_jobs is not None:
            self.cpu_jobs.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        log.info("stopped")

    def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """start_server's callback (a plain function, so no task is created): hand the transport to a Connection.

        The StreamReader/StreamWriter pair start_server made is dropped; the
        transport's protocol becomes the Connection before any data arrives
        (this runs inside ``connection_made``, before reading starts).
        """
        transport = writer.transport
        if self.stopping.is_set():
            transport.close()
            return
        if len(self._connections) >= self.config.maxclients:
            self.state.stats.rejected_connections += 1
            transport.write(MAXCLIENTS_ERROR)
            transport.close()
            self._maxclients_log.note(maxclients=self.config.maxclients)
            return
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it, so no isinstance check.
        writer.__class__ = _ReleasedStreamWriter
        refusal = security.protected_mode_refusal(self.config, transport.get_extra_info("peername"))
        if refusal is not None:  # protected mode: explain, count, close (after the TLS handshake, if any)
            self.state.stats.rejected_connections += 1
            transport.set_protocol(security.Refusal(transport, refusal))  # type: ignore[arg-type]
            return
        connection = Connection(self, transport)  # type: ignore[arg-type]
        transport.set_protocol(connection)
        connection.connection_made(transport)
        self._connections.add(connection)

    def forget(self, connection: Connection) -> None:
        """A connection is gone (called from its ``connection_lost``)."""
        self._connections.discard(connection)

    async def _clients_cron(self, interval: float) -> None:
        """Every ``interval`` seconds: close clients past a deadline; say so when descriptors ran out.

        uvloop survives EMFILE on accept without help (libuv's spare
        descriptor trick: waiting connections are accepted and closed at
        once, nothing spins, nothing is logged), so the descriptor check here
        exists only to tell the operator, at most once per interval.
        """
        config = self.config
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self._connections):
                reason = deadline_passed(config, connection.client, now, reading=connection.waiting_on_peer())
                if reason is not None:
                    connection.close_for(reason)
            if descriptors_exhausted():
                self.state.stats.accept_resource_errors += 1
                self._descriptors_log.note(
                    connections=len(self._connections), detail="uvloop closes new connections until one frees up"
                )

    async def _sweep_expired(self) -> None:
        keyspace = self.state.keyspace
        while True:
            await asyncio.sleep(EXPIRE_SWEEP_INTERVAL)
            keyspace.sweep_expired()

    # -- cpu commands ----------------------------------------------------------------------
    def run_cpu(self, action: RunCpu, client_id: int) -> asyncio.Future[bytes]:
        """Run a cpu command (pool or inline) and return a future of its reply bytes; it never fails.

        With the pool, :class:`~server.cpu.jobs.CpuJobs` decides: ``-BUSY`` at
        once when the backlog is full, an error reply for a timeout or a
        worker that died under the request, the reply otherwise.

        Error handling: a cancelled reply future (its client has gone) tells
        the policy to drop the job's reply quietly when it comes.
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        reply: asyncio.Future[bytes] = loop.create_future()

        def finish(data: bytes) -> None:
            self.dispatcher.finish_cpu(action, started, client_id, data)
            if not reply.done():
                reply.set_result(data)

        jobs = self.cpu_jobs
        if jobs is None:
            finish(cpu_reply(run_cpu(action.func, action.args)))
            return reply
        job = jobs.start(action, finish, client_id)
        if job is not None:

            def on_reply_done(done: asyncio.Future[bytes]) -> None:
                if done.cancelled():  # the connection closed before its reply
                    jobs.abandon(job)

            reply.add_done_callback(on_reply_done)
        return reply


def install_signal_handlers(loop: asyncio.AbstractEventLoop, on_first: Callable[[], None]) -> None:
    """SIGINT/SIGTERM: the first starts a graceful shutdown, a second exits at once."""
    received = {"count": 0}

    def handle(signum: int) -> None:
        received["count"] += 1
        if received["count"] == 1:
            log.info("signal_received", signal=signal.Signals(signum).name, action="graceful shutdown")
            on_first()
        else:
            log.warning("signal_received_again", signal=signal.Signals(signum).name, action="exit now")
            import os

            os._exit(1)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handle, signum)


async def serve_async(config: Config) -> None:
    """Run the asyncio server until SIGINT/SIGTERM."""
    server = AsyncServer(config)
    install_signal_handlers(asyncio.get_running_loop(), server.request_stop)
    await server.start()
    await server.serve()


def run(config: Config) -> int:
    """Entry point for ``crossdock serve --mode async``: asyncio.Runner with uvloop's loop factory (3.11)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(serve_async(config))
        except StartupError as exc:
            log.error("startup_failed", error=str(exc))
            return 1
    return 0
