"""The asyncio front end: ``asyncio.start_server`` on uvloop, one protocol object per connection.

``asyncio.start_server`` accepts; its callback (:meth:`AsyncServer._hand_over`)
gives the transport to a :class:`LoopConnection`, which is the connection core
(server.connection.core) plus the ``asyncio.Protocol`` callbacks it lacks. From
then on uvloop calls the core's own ``data_received`` for every chunk: no
StreamReader, no task and no coroutine frame per connection, and no adapter
between the loop and the core (docs/decisions.md, "Connections are protocols").

Jobs run through :class:`LoopJobs`: a SLEEP is a ``loop.call_later``, a cpu
command goes to the pool through ``loop.run_in_executor`` (the cpu-job policy,
server.cpu.jobs), or runs on the loop with ``--cpu inline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import socket
import sys
import termios
import time

import structlog

from server import security
from server.commands import Registry, RunCpu, Sleep
from server.config import Config
from server.connection.core import ConnectionCore, CoreShared, Job
from server.cpu.backend import cpu_reply
from server.cpu.jobs import CpuJobs
from server.cpu.worker import run_cpu
from server.errors import StartupError
from server.frontends import tls
from server.frontends.lifecycle import ServerBase, SignalPolicy
from server.frontends.listening import ListenerCare
from server.limits.constants import (
    EXPIRE_SWEEP_INTERVAL,
    LISTEN_BACKLOG,
    READ_CHUNK_SIZE,
    SHUTDOWN_ABORT_GRACE,
    WRITE_BUFFER_HIGH_WATER,
)
from server.limits.resources import RateLimitedLog, clients_cron_interval, descriptors_exhausted
from server.preflight import bind_error_message
from server.protocol import encode_reply
from server.store.state import format_address

log = structlog.get_logger("crossdock.aio")


class LoopJobs:
    """Carries out jobs on the event loop: SLEEP with ``call_later``, cpu commands through the pool's policy."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cpu_jobs: CpuJobs | None) -> None:
        self.loop = loop
        self.cpu_jobs = cpu_jobs

    def start(self, job: Job, core: ConnectionCore) -> None:
        action = job.action
        if action.__class__ is Sleep:
            reply = encode_reply(action.reply)
            job.handle = self.loop.call_later(action.seconds, core.job_done, job, reply)
        elif self.cpu_jobs is None:  # --cpu inline: the loop runs it, everyone waits
            assert isinstance(action, RunCpu)
            core.job_done(job, cpu_reply(run_cpu(action.func, action.args)))
        else:
            assert isinstance(action, RunCpu)
            # The policy calls back on the loop (call_soon_threadsafe), exactly once, possibly at once (-BUSY).
            job.handle = self.cpu_jobs.start(action, functools.partial(core.job_done, job), core.client.id)

    def cancel(self, job: Job) -> None:
        handle = job.handle
        if isinstance(handle, asyncio.TimerHandle):
            handle.cancel()
        elif handle is not None and self.cpu_jobs is not None:
            self.cpu_jobs.abandon(handle)  # its reply is dropped when it comes


class LoopConnection(ConnectionCore, asyncio.Protocol):
    """The core as an ``asyncio.Protocol``: the loop calls the core's event methods directly."""

    __slots__ = ("_closed_waiter", "server")

    def __init__(self, server: AsyncServer, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        client = server.state.register_client(
            format_address(transport.get_extra_info("peername")),
            format_address(transport.get_extra_info("sockname")),
            sock.fileno() if sock is not None else -1,
        )
        assert server.jobs is not None and server.shared is not None, "connections are accepted only after start()"
        super().__init__(transport, server.jobs, server.shared, client)
        client.outlet = self  # pub/sub delivery: the core itself (no bound method per client) writes pushed messages
        self.server = server
        #: Created on demand (shutdown waits on it), so an idle connection does not carry a future.
        self._closed_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_WATER)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None = None) -> None:
        super().connection_lost()
        self.server.state.unregister_client(self.client)
        self.server.connections.discard(self)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the transport has reported the connection lost."""
        if self not in self.server.connections:  # connection_lost has run
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await self._closed_waiter


class _ReleasedStreamWriter(asyncio.StreamWriter):
    """start_server's StreamWriter once its transport belongs to a :class:`LoopConnection`.

    A plain StreamWriter closes a transport that is still open when it is
    garbage-collected (``__del__``, CPython 3.11.5+), which would cut the
    client off at the next GC pass; this subclass leaves the transport to its owner.
    """

    def __del__(self) -> None:
        pass


class AsyncServer(ListenerCare, ServerBase):
    """Config -> running asyncio server: ``start()``, ``serve()`` until stopped, ``shutdown()``."""

    mode = "async"

    def __init__(self, config: Config, command_registry: Registry | None = None) -> None:
        super().__init__(config, command_registry, thread_safe=False)
        self.connections: set[LoopConnection] = set()
        #: Set by start(), on the running loop.
        self.jobs: LoopJobs | None = None
        self.shared: CoreShared | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self._descriptors_log = RateLimitedLog("descriptors_exhausted")
        #: A dup of each listening socket: the kernel socket outlives uvloop closing its own descriptor (it does
        #: on an accept error such as ENOBUFS/ENOMEM), so the cron can listen on it again (:meth:`_check_listeners`).
        self._listen_dups: list[socket.socket] = []
        self._relisten: asyncio.Task[None] | None = None
        #: connect_accepted_socket tasks of connections taken from the listen queue (:meth:`_accept_backlog`).
        self._accepting: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        """Size descriptors and load TLS, start the pool (pre-warmed, in a thread), bind, accept; log ``started``."""
        self.prepare()
        loop = asyncio.get_running_loop()
        pool = await asyncio.to_thread(self.new_pool)
        # defer: the cpu requests admitted in one loop pass go to the pool together (server.cpu.jobs batches).
        self.start_cpu(pool, submit=loop.run_in_executor, call_soon=loop.call_soon_threadsafe, defer=loop.call_soon)
        self.jobs = LoopJobs(loop, self.cpu_jobs)
        # defer: big reads are served a slice per loop pass (FAIR_SHARE_BYTES).
        self.shared = CoreShared(self.state, self.dispatcher, self.registry, defer=loop.call_soon)
        config = self.config
        try:
            self._server = await asyncio.start_server(
                self._hand_over,
                config.host,
                config.port,
                limit=READ_CHUNK_SIZE,
                reuse_address=True,
                reuse_port=config.reuseport > 0,  # a --reuseport child: N listeners share the port
                backlog=LISTEN_BACKLOG,
                **tls.start_server_arguments(self.ssl_context),
            )
        except OSError as exc:  # taken since the preflight check, or a host that cannot be bound
            await asyncio.to_thread(self.stop_services)
            raise StartupError(bind_error_message("--port", config.host, config.port, exc)) from None
        sockets = self._server.sockets or ()
        self._listen_dups = [socket.socket(fileno=os.dup(sock.fileno())) for sock in sockets]
        for dup in self._listen_dups:
            dup.setblocking(False)  # the listening socket is non-blocking already; say so to Python too
        self._tasks = [
            asyncio.create_task(self._every(EXPIRE_SWEEP_INTERVAL, self.state.keyspace.sweep_expired)),
            asyncio.create_task(self._every(clients_cron_interval(config), self._clients_cron)),
        ]
        self.announce(sockets[0].getsockname()[1] if sockets else config.port, loop=type(loop).__module__.split(".")[0])

    def _hand_over(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """start_server's callback (a plain function, so no task is created): give the transport to the core.

        It runs inside ``connection_made``, before reading starts, so the
        :class:`LoopConnection` sees every byte. The StreamReader/StreamWriter
        pair start_server made is dropped (the writer re-classed so that its
        ``__del__`` leaves the transport open).
        """
        transport = writer.transport
        if self.stopping.is_set():
            transport.close()
            return
        refusal = self.refuse_for_maxclients(len(self.connections))
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        writer.__class__ = _ReleasedStreamWriter
        refusal = self.refuse_for_protected_mode(transport.get_extra_info("peername"))
        if refusal is not None:  # explain and close (after the TLS handshake, if any)
            transport.set_protocol(security.Refusal(transport, refusal))  # type: ignore[arg-type]
            return
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        connection = LoopConnection(self, transport)  # type: ignore[arg-type]
        transport.set_protocol(connection)
        connection.connection_made(transport)
        self.connections.add(connection)
        shares = self.shared.shares if self.shared is not None else None
        if shares is not None and shares.busy:
            self._accept_backlog()

    async def _every(self, interval: float, tick: object) -> None:
        while True:
            await asyncio.sleep(interval)
            tick()  # type: ignore[operator]

    def _clients_cron(self) -> None:
        """Close clients past a deadline; say so when descriptors ran out (uvloop drops new connections silently)."""
        self._check_listeners()
        now = time.monotonic()
        for connection in list(self.connections):
            connection.check_deadlines(now)
        if descriptors_exhausted():
            self.state.stats.accept_resource_errors += 1
            self._descriptors_log.note(
                connections=len(self.connections), detail="uvloop closes new connections until one frees up"
            )

    async def serve(self) -> None:
        """Serve until :meth:`request_stop`, then shut down gracefully."""
        await self.stopping.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        self.stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, let read requests finish (up to shutdown_timeout), close connections, stop the pool."""
        log.info("stopping", connections=len(self.connections), timeout=self.config.shutdown_timeout)
        if self._server is not None:
            self._server.close()
        for dup in self._listen_dups:  # the kernel socket lives while a dup is open: close it, stop the handshakes
            dup.close()
        for task in (*self._tasks, *self._accepting):
            task.cancel()
        connections = list(self.connections)
        for connection in connections:
            connection.stop_reading_after(_bytes_waiting(connection.transport))
        waiters = [asyncio.ensure_future(connection.wait_closed()) for connection in connections]
        if waiters:
            _done, not_done = await asyncio.wait(waiters, timeout=self.config.shutdown_timeout)
            if not_done:
                log.warning("shutdown_timeout_closing", connections=len(not_done))
                for connection in list(self.connections):
                    connection.transport.abort()
        # What is left (aborted transports reporting connection_lost, the server's own close) shares one grace.
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + SHUTDOWN_ABORT_GRACE
        if waiters:
            await asyncio.wait(waiters, timeout=SHUTDOWN_ABORT_GRACE)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=max(0.0, grace_ends - loop.time()))
        await asyncio.to_thread(self.stop_services)


def _bytes_waiting(transport: object) -> int:
    """Bytes the client had delivered into the socket's receive queue and not yet read (0 for TLS, unknown)."""
    get = getattr(transport, "get_extra_info", None)
    if get is None or get("sslcontext") is not None:  # the queue holds ciphertext: no count of requests in it
        return 0
    sock = get("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(raw, sys.byteorder)


async def serve_async(config: Config) -> None:
    """Run the asyncio server until SIGINT/SIGTERM."""
    server = AsyncServer(config)
    policy = SignalPolicy(server.request_stop)
    loop = asyncio.get_running_loop()
    for signum in policy.SIGNALS:
        loop.add_signal_handler(signum, policy, signum)
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
