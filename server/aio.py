"""The asyncio front end: ``asyncio.start_server`` on uvloop, one task per connection.

Each connection task reads large chunks, parses every pipelined request in
the chunk, answers inline commands at once and writes all replies that are
ready in one ``write``. A cpu command becomes a future from
``loop.run_in_executor(pool, ...)`` and takes its place in the connection's
reply queue, so several pipelined cpu requests run in parallel on the pool
while replies still leave in request order. Reading pauses when the reply
queue or the transport buffer is above its bound (flow control without a
drain per reply).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog

from server.commands import CommandContext, Dispatcher, Registry, RunCpu, Sleep, registry
from server.config import Config
from server.limits import (
    EXPIRE_SWEEP_INTERVAL,
    LISTEN_BACKLOG,
    MAX_PENDING_REPLIES_PER_CLIENT,
    READ_CHUNK_SIZE,
    WRITE_BUFFER_HIGH_WATER,
)
from server.pool import BrokenProcessPool, CpuPool, cpu_failure_reply, cpu_reply, run_cpu, start_pool
from server.protocol import RequestParser, encode_error, encode_reply
from server.state import ClientState, ServerState, format_address

log = structlog.get_logger("crossdock.aio")

_SHUTTING_DOWN = "ERR server is shutting down"


class Connection:
    """One client connection on the event loop: read, parse, dispatch, reply in order."""

    def __init__(
        self,
        server: AsyncServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        sock = writer.get_extra_info("socket")
        self.client: ClientState = server.state.register_client(
            format_address(writer.get_extra_info("peername")),
            format_address(writer.get_extra_info("sockname")),
            sock.fileno() if sock is not None else -1,
        )
        self.ctx = CommandContext(server.state, self.client, server.registry)
        self.parser = RequestParser(max_bulk_length=server.config.max_bulk_length)
        #: Replies ready to go out in the next write.
        self._out: list[bytes] = []
        #: Replies waiting behind an unfinished future, in request order (bytes or futures).
        self._pending: collections.deque[bytes | asyncio.Future[bytes]] = collections.deque()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

    # -- the read loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve this connection until EOF, QUIT, a protocol error or shutdown; then finish and close.

        Error handling: a protocol error is answered with Redis's reply and
        the connection closed; a reset from the peer ends the loop quietly;
        anything else is logged at warning with the peer and the connection
        closed. The server goes on in every case.
        """
        structlog.contextvars.bind_contextvars(client_id=self.client.id, peer=self.client.addr)
        log.debug("connection_open")
        dispatcher = self.server.dispatcher
        parser = self.parser
        client = self.client
        ctx = self.ctx
        try:
            while not client.close_requested:
                data = await self.reader.read(READ_CHUNK_SIZE)
                if not data:
                    break
                for result in dispatcher.run_chunk(ctx, parser, data):
                    if isinstance(result, bytes):
                        self._emit(result)
                    else:
                        self._start_action(result)
                self._write_out()
                if len(self._pending) >= MAX_PENDING_REPLIES_PER_CLIENT:
                    self._room.clear()
                    await self._room.wait()
                if self.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH_WATER:
                    await self.writer.drain()
            await self._finish_pending()
        except ConnectionError:
            pass
        except Exception:
            log.warning("connection_failed", exc_info=True)
        finally:
            self._close()
            log.debug("connection_closed")

    def _emit(self, reply: bytes) -> None:
        if self._pending:
            self._pending.append(reply)
        else:
            self._out.append(reply)

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
                self._out.append(future.result())
                return
        self._pending.append(future)
        future.add_done_callback(self._on_future_done)

    def _on_future_done(self, _future: asyncio.Future[bytes]) -> None:
        self._release_ready()
        self._write_out()

    def _release_ready(self) -> None:
        pending = self._pending
        out = self._out
        while pending:
            head = pending[0]
            if isinstance(head, bytes):
                out.append(head)
            elif head.done():
                out.append(_future_reply(head))
            else:
                break
            pending.popleft()
        if len(pending) < MAX_PENDING_REPLIES_PER_CLIENT:
            self._room.set()

    def _write_out(self) -> None:
        out = self._out
        if not out or self._closed:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.server.state.stats.total_net_output_bytes += len(data)
        if not self.transport.is_closing():
            self.writer.write(data)

    async def _finish_pending(self) -> None:
        """Let replies to requests already read go out (QUIT, EOF, shutdown), then flush."""
        while self._pending and not self.transport.is_closing():
            unfinished = [item for item in self._pending if not isinstance(item, bytes) and not item.done()]
            if unfinished:
                await asyncio.wait(unfinished)
            self._release_ready()
            self._write_out()
        self._write_out()
        if not self.transport.is_closing():
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def _close(self) -> None:
        self._closed = True
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()
        self.server.state.unregister_client(self.client)
        self.writer.close()

    def stop_reading(self) -> None:
        """Shutdown: no new requests from this client; those already read still get replies."""
        self.reader.feed_eof()

    def abort(self) -> None:
        """Close at once, dropping whatever is unsent (shutdown timeout passed)."""
        self._closed = True
        self.transport.abort()


def _resolve(future: asyncio.Future[bytes], reply: bytes) -> None:
    if not future.done():
        future.set_result(reply)


def _future_reply(future: asyncio.Future[bytes]) -> bytes:
    """A slot's reply: futures in the reply queue are only ever resolved with bytes, or cancelled at close."""
    return encode_error(_SHUTTING_DOWN) if future.cancelled() else future.result()


class AsyncServer:
    """Config -> running asyncio server: ``start()``, ``serve()`` until stopped, ``shutdown()``."""

    def __init__(self, config: Config, command_registry: Registry = registry) -> None:
        self.config = config
        self.registry = command_registry
        self.state = ServerState(config, thread_safe=False)
        self.dispatcher = Dispatcher(command_registry, self.state)
        self.pool: CpuPool | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[Connection, asyncio.Task[Any]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the pool (pre-warmed) and begin accepting. Logs ``started`` with the bound port."""
        config = self.config
        if config.cpu == "pool":
            self.pool = await asyncio.to_thread(start_pool, config)
            self.state.pool_size = config.workers
            self.state.pool = self.pool
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
            backlog=LISTEN_BACKLOG,
        )
        sockets = self._server.sockets or ()
        self.state.bound_port = sockets[0].getsockname()[1] if sockets else config.port
        self._sweeper = asyncio.create_task(self._sweep_expired())
        log.info(
            "started",
            mode="async",
            cpu=config.cpu,
            host=config.host,
            port=self.state.bound_port,
            workers=self.state.pool_size,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
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
        for connection in list(self._connections):
            connection.stop_reading()
        tasks = list(self._connections.values())
        if tasks:
            _done, not_done = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            if not_done:
                log.warning("shutdown_timeout_closing", connections=len(not_done))
                for connection in list(self._connections):
                    connection.abort()
                for task in not_done:
                    task.cancel()
                await asyncio.wait(not_done, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown)
        log.info("stopped")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.stopping.is_set():
            writer.close()
            return
        connection = Connection(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._connections[connection] = task
        try:
            await connection.run()
        finally:
            self._connections.pop(connection, None)

    async def _sweep_expired(self) -> None:
        keyspace = self.state.keyspace
        while True:
            await asyncio.sleep(EXPIRE_SWEEP_INTERVAL)
            keyspace.sweep_expired()

    # -- cpu commands ----------------------------------------------------------------------
    def run_cpu(self, action: RunCpu, client_id: int) -> asyncio.Future[bytes]:
        """Run a cpu command (pool or inline) and return a future of its reply bytes; it never fails.

        Error handling: a worker that dies breaks the executor; the pool is
        replaced and this request (and any other in flight on the broken
        executor) is answered with an error reply. A request whose client has
        gone away is dropped quietly when its result arrives.
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter_ns()
        reply: asyncio.Future[bytes] = loop.create_future()

        def finish(data: bytes) -> None:
            self.dispatcher.note_if_slow(action.name, started, client_id)
            if not reply.done():
                reply.set_result(data)

        pool = self.pool
        if pool is None:
            finish(cpu_reply(run_cpu(action.func, action.args)))
            return reply
        executor = pool.executor
        try:
            job = loop.run_in_executor(executor, run_cpu, action.func, action.args)
        except BrokenProcessPool as exc:
            pool.replace_broken(executor)
            finish(cpu_failure_reply(exc))
            return reply

        def on_done(job_future: asyncio.Future[tuple[int, Any]]) -> None:
            if job_future.cancelled():  # its executor was shut down (replaced after a crash, or stopping)
                finish(cpu_failure_reply(BrokenProcessPool()))
                return
            error = job_future.exception()
            if error is None:
                finish(cpu_reply(job_future.result()))
                return
            if isinstance(error, BrokenProcessPool):
                pool.replace_broken(executor)
            finish(cpu_failure_reply(error))

        job.add_done_callback(on_done)
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
        runner.run(serve_async(config))
    return 0
