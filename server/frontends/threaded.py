"""The threaded legacy front end: ``socketserver.ThreadingTCPServer``, one thread per connection.

Kept so the concurrency models can be measured on the same work: the same
protocol core, the same registry and dispatcher as the asyncio front end.
Each connection's thread reads a chunk, answers every request in it in
order and writes once; a cpu command runs in the thread itself
(``--cpu inline``, contending for the GIL with every other thread) or is
submitted to the same process pool while the thread waits (``--cpu pool``).

Limits (see :mod:`server.limits.resources`): the accept thread refuses the client
past ``--maxclients`` with Redis's error and backs off when ``accept()``
runs out of descriptors; a "clients-cron" thread closes clients past their
idle, request or write deadline by shutting their socket down, which wakes
the connection's thread from its blocked ``recv`` or ``sendall``; each
connection's thread enforces its query and output buffer caps itself.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import socketserver
import ssl
import struct
import threading
import time
from concurrent.futures import Future
from typing import Any

import structlog

from server import security
from server.commands import CommandContext, Dispatcher, Registry, RunCpu, Sleep, default_registry
from server.config import Config
from server.cpu.backend import CpuBackend, cpu_reply
from server.cpu.backends import start_pool
from server.cpu.jobs import CpuJobs, attach_pool, call_directly, threaded_submit
from server.cpu.worker import run_cpu
from server.errors import StartupError
from server.frontends import tls
from server.limits.constants import (
    ACCEPT_RETRY_DELAY,
    EXPIRE_SWEEP_INTERVAL,
    LISTEN_BACKLOG,
    READ_CHUNK_SIZE,
    WRITE_BUFFER_HIGH_WATER,
)
from server.limits.resources import (
    ACCEPT_RESOURCE_ERRNOS,
    MAXCLIENTS_ERROR,
    OUTPUT_BUFFER,
    QUERY_BUFFER,
    WRITE_TIMEOUT,
    RateLimitedLog,
    clients_cron_interval,
    deadline_passed,
    fit_open_files,
    note_limit_close,
)
from server.observability.metrics import MetricsServer, start_metrics
from server.protocol import RequestParser, encode_reply
from server.store.state import ClientState, ServerState, format_address

log = structlog.get_logger("crossdock.threaded")


class _TCPServer(socketserver.ThreadingTCPServer):
    """socketserver's threading server with an accept loop that survives EMFILE and a maxclients gate.

    Stock socketserver swallows every ``OSError`` from ``accept()`` and goes
    straight back to ``select()``, which reports the listener readable again
    at once: with the descriptor table full it spins a core, silently.
    """

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], owner: ThreadedServer) -> None:
        self.owner = owner
        super().__init__(address, _ConnectionHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """accept(); on a lack of descriptors or memory, log (rate-limited) and back off before returning.

        Error handling: the ``OSError`` is re-raised after the back-off, and
        socketserver's loop drops it and selects again; the connection stays
        in the kernel's backlog until a descriptor frees up.
        """
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRNOS:
                self.owner.accept_failed(exc)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.owner.take_slot(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: give its slot back (socketserver closes the socket)
            self.owner.release_slot()
            raise


class _ConnectionHandler(socketserver.BaseRequestHandler):
    """Serves one connection in its own thread."""

    def handle(self) -> None:
        owner: ThreadedServer = self.server.owner  # type: ignore[attr-defined]
        owner.serve_connection(self.request, self.client_address)


class _LimitExceeded(Exception):
    """A per-client limit was passed in the connection's own thread: close it without a reply."""

    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class ThreadedServer:
    """Config -> running threaded server: ``start()``, ``serve()`` until stopped, ``shutdown()``."""

    def __init__(self, config: Config, command_registry: Registry | None = None) -> None:
        self.config = config
        self.registry = command_registry or default_registry()
        self.state = ServerState(config, thread_safe=True)
        self.dispatcher = Dispatcher(self.registry, self.state)
        self.pool: CpuBackend | None = None
        #: The cpu-job policy on the pool (backlog bound, timeouts, failures); None with --cpu inline.
        self.cpu_jobs: CpuJobs | None = None
        self._tcp: _TCPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: dict[socket.socket, _Connection] = {}
        #: Connections admitted by the accept thread and not yet finished (maxclients counts these).
        self._admitted = 0
        self._connections_lock = threading.Lock()
        self._stop = threading.Event()
        self.metrics: MetricsServer | None = None
        self.stopping = threading.Event()
        self._ssl: ssl.SSLContext | None = None
        self._accept_log = RateLimitedLog("accept_failed_retrying")
        self._maxclients_log = RateLimitedLog("maxclients_reached")

    def start(self) -> None:
        """Size the descriptor table for maxclients, start the pool, begin accepting.

        Error handling: a descriptor limit too low for the server itself
        raises :class:`~server.limits.resources.StartupError` before anything starts.
        """
        config = self.config = fit_open_files(self.state)
        self._ssl = tls.server_context_or_exit(config)  # a bad certificate stops start-up before the pool
        if config.cpu == "pool":
            self.pool = start_pool(config)
            self.cpu_jobs = attach_pool(self.state, self.pool, submit=threaded_submit, call_soon=call_directly)
        self._tcp = _TCPServer((config.host, config.port), self)
        self.state.bound_port = self._tcp.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._tcp.serve_forever, kwargs={"poll_interval": 0.2}, name="accept", daemon=True
        )
        self._serve_thread.start()
        threading.Thread(target=self._sweep_expired, name="expire-sweep", daemon=True).start()
        threading.Thread(
            target=self._clients_cron, args=(clients_cron_interval(config),), name="clients-cron", daemon=True
        ).start()
        self.metrics = start_metrics(self.state)
        log.info(
            "started",
            mode="threaded",
            cpu=config.cpu,
            host=config.host,
            port=self.state.bound_port,
            workers=self.state.pool_size,
            tls=self._ssl is not None,
            maxclients=config.maxclients,
        )

    def request_stop(self) -> None:
        self.stopping.set()

    def serve(self) -> None:
        """Block until :meth:`request_stop`, then shut down gracefully."""
        while not self.stopping.wait(0.5):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        """Stop accepting; connections finish the requests they have read, up to shutdown_timeout."""
        with self._connections_lock:
            count = len(self._connections)
        log.info("stopping", connections=count, timeout=self.config.shutdown_timeout)
        self._stop.set()
        if self._tcp is not None:
            self._tcp.shutdown()
            self._tcp.server_close()
        with self._connections_lock:
            connections = dict(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also for a TLS socket: ssl.SSLSocket.shutdown drops its TLS state,
                # and replies still owed would then go out in clear text.
                socket.socket.shutdown(sock, socket.SHUT_RD)
        deadline = time.monotonic() + self.config.shutdown_timeout
        for connection in connections.values():
            connection.thread.join(max(0.0, deadline - time.monotonic()))
        with self._connections_lock:
            leftover = list(self._connections)
        if leftover:
            log.warning("shutdown_timeout_closing", connections=len(leftover))
            for sock in leftover:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        if self.pool is not None:
            self.pool.shutdown()  # the cpu timeout still applies while it waits
        if self.cpu_jobs is not None:
            self.cpu_jobs.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped")

    def _sweep_expired(self) -> None:
        while not self._stop.wait(EXPIRE_SWEEP_INTERVAL):
            self.state.keyspace.sweep_expired()

    # -- accept-time limits ---------------------------------------------------------------
    def take_slot(self, sock: socket.socket) -> bool:
        """maxclients: take a slot for a new connection, or answer Redis's error and refuse it.

        Runs in the accept thread. The refused socket is closed by
        socketserver (write side first, so the error is read before EOF).
        """
        with self._connections_lock:
            if self._admitted < self.config.maxclients:
                self._admitted += 1
                return True
        self.state.stats.rejected_connections += 1
        with contextlib.suppress(OSError):  # a fresh socket's send buffer always has room for 37 bytes
            sock.send(MAXCLIENTS_ERROR, socket.MSG_DONTWAIT)
        self._maxclients_log.note(maxclients=self.config.maxclients)
        return False

    def release_slot(self) -> None:
        with self._connections_lock:
            self._admitted -= 1

    def accept_failed(self, exc: OSError) -> None:
        """accept() found no descriptor or memory: count, log at most once per interval, back off."""
        self.state.stats.accept_resource_errors += 1
        self._accept_log.note(
            error=errno.errorcode.get(exc.errno or 0, str(exc.errno)), detail=exc.strerror, retry_in=ACCEPT_RETRY_DELAY
        )
        self._stop.wait(ACCEPT_RETRY_DELAY)

    # -- the clients cron -----------------------------------------------------------------
    def _clients_cron(self, interval: float) -> None:
        """Every ``interval`` seconds, close the clients that overran a deadline (idle, request, write)."""
        config = self.config
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._connections_lock:
                for connection in self._connections.values():
                    reason = deadline_passed(config, connection.client, now, reading=connection.reading)
                    if reason is not None:
                        connection.close_for(reason)

    # -- one connection ---------------------------------------------------------------------
    def serve_connection(self, sock: socket.socket, address: Any) -> None:
        """In the connection's thread: the TLS handshake (if any), protected mode, then :meth:`_serve`.

        The handshake runs here, not in the accept loop, so a client that never finishes it holds only its own
        thread, for at most :data:`server.frontends.tls.TLS_HANDSHAKE_TIMEOUT`.

        Error handling: a failed handshake closes the connection (logged at debug); a refused peer gets
        Redis's ``-DENIED`` text and is closed.
        """
        try:
            if self._ssl is not None:
                tls_sock = tls.server_handshake(self._ssl, sock)
                if tls_sock is None:
                    return
                with tls_sock:  # socketserver closes the plain socket, which the TLS socket has taken over
                    self._admit(tls_sock, address)
                return
            self._admit(sock, address)
        finally:
            self.release_slot()  # taken by take_slot in the accept thread

    def _admit(self, sock: socket.socket, address: Any) -> None:
        refusal = security.protected_mode_refusal(self.config, address)
        if refusal is not None:
            self.state.stats.rejected_connections += 1
            security.refuse_blocking(sock, refusal)
            return
        self._serve(sock, address)

    def _serve(self, sock: socket.socket, address: Any) -> None:
        """Serve one client in this thread until EOF, QUIT, a protocol error, a limit or shutdown.

        Error handling: as in the asyncio front end, a protocol error is
        answered then the connection closed; peer resets end it quietly; a
        limit passed closes it without a reply (logged once, counted in INFO
        stats); anything else is logged at warning and the connection closed.
        """
        try:
            client = self.state.register_client(
                format_address(address), format_address(sock.getsockname()), sock.fileno()
            )
        except OSError:  # reset before this thread started: nothing to serve
            return
        connection = _Connection(self, sock, client)
        with self._connections_lock:
            self._connections[sock] = connection
        structlog.contextvars.bind_contextvars(client_id=client.id, peer=client.addr)
        log.debug("connection_open")
        try:
            connection.serve()
        except _LimitExceeded as exc:
            connection.close_for(exc.reason, **exc.detail)
        except OSError:
            pass
        except Exception:
            log.warning("connection_failed", exc_info=True)
        finally:
            self.state.unregister_client(client)
            with self._connections_lock:
                self._connections.pop(sock, None)
            connection.release()
            log.debug("connection_closed")
            structlog.contextvars.clear_contextvars()

    def _carry_out(self, action: RunCpu | Sleep, client_id: int) -> bytes:
        if isinstance(action, Sleep):
            time.sleep(action.seconds)
            return encode_reply(action.reply)
        started = time.perf_counter_ns()
        if self.cpu_jobs is None:
            reply = cpu_reply(run_cpu(action.func, action.args))
        else:
            # The policy answers every admitted job exactly once (its reply, BUSY, a timeout or a
            # worker failure), so this wait always ends; the timeout is enforced by the policy.
            answer: Future[bytes] = Future()
            self.cpu_jobs.start(action, answer.set_result, client_id)
            reply = answer.result()
        self.dispatcher.finish_cpu(action, started, client_id, reply)
        return reply


class _Connection:
    """One client in its own thread: read a chunk, answer it in order, write; with its per-client limits.

    Replies are written once per chunk, and early when :data:`WRITE_BUFFER_HIGH_WATER`
    bytes have piled up inside one chunk (a pipeline of large GETs). An
    early write never blocks: what the kernel does not take stays queued
    and the chunk goes on, as Redis keeps serving a client whose output
    buffer grows; past ``--output-buffer-limit`` queued bytes the client is
    aborted. The write at the end of a chunk blocks (the thread's
    backpressure); the clients cron shuts the socket down if it has not
    finished within ``--write-timeout``.
    """

    __slots__ = (
        "_flush_at",
        "_out",
        "_out_size",
        "_tls",
        "client",
        "limit_reason",
        "reading",
        "server",
        "sock",
        "thread",
    )

    def __init__(self, server: ThreadedServer, sock: socket.socket, client: ClientState) -> None:
        self.server = server
        self.sock = sock
        self.client = client
        self.thread = threading.current_thread()
        #: True while the thread waits in recv(): the idle and request deadlines run only then.
        self.reading = False
        #: Set once when a limit closes this client, so it is counted and logged once.
        self.limit_reason: str | None = None
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._flush_at = WRITE_BUFFER_HIGH_WATER
        #: ssl.SSLSocket.send takes no flags: a TLS client's writes always block (the write deadline still holds).
        self._tls = isinstance(sock, ssl.SSLSocket)

    def serve(self) -> None:
        server = self.server
        config = server.config
        client = self.client
        sock = self.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = RequestParser(max_bulk_length=config.max_bulk_length)
        ctx = CommandContext(server.state, client, server.registry)
        run_chunk = server.dispatcher.run_chunk
        query_buffer_limit = config.query_buffer_limit
        while not client.close_requested:
            self.reading = True
            data = sock.recv(READ_CHUNK_SIZE)
            self.reading = False
            if not data:
                break
            served = False
            for result in run_chunk(ctx, parser, data):
                served = True
                if isinstance(result, bytes):
                    self._queue(result)
                else:
                    self._flush(block=True)  # earlier replies should not wait behind the slow one
                    self._queue(server._carry_out(result, client.id))
            self._flush(block=True)
            now = time.monotonic()
            client.last_interaction = now  # the deadlines count from here, not from before our own work
            buffered = parser.buffered
            if not buffered:
                client.request_started = 0.0
                continue
            if buffered > query_buffer_limit:
                raise _LimitExceeded(QUERY_BUFFER, buffered=buffered, limit=query_buffer_limit)
            if served or not client.request_started:
                client.request_started = now

    def _queue(self, reply: bytes) -> None:
        self._out.append(reply)
        self._out_size += len(reply)
        if self._out_size >= self._flush_at:
            self._flush(block=False)

    def _flush(self, *, block: bool) -> None:
        """Send the queued replies. ``block=False``: only what the kernel takes now; else all of it.

        Error handling: more than ``--output-buffer-limit`` bytes left unsent
        raises :class:`_LimitExceeded`; a socket error propagates and ends
        the connection (so does the clients cron's shutdown at the write
        deadline, which fails the blocked ``sendall``).
        """
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        stats = self.server.state.stats
        if self._tls:
            self._send_blocking(data)
            return
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        stats.total_net_output_bytes += sent
        if sent == len(data):
            self._out_size = 0
            self._flush_at = WRITE_BUFFER_HIGH_WATER
            return
        rest = memoryview(data)[sent:]
        client = self.client
        if not client.output_since:
            client.output_since = time.monotonic()
        limit = self.server.config.output_buffer_limit
        if len(rest) > limit:
            raise _LimitExceeded(OUTPUT_BUFFER, unsent=len(rest), limit=limit)
        if not block:
            # The client is not reading right now: queue, and try again only when the cap would be passed.
            out.append(rest)
            self._out_size = len(rest)
            self._flush_at = limit + 1
            return
        self._send_blocking(rest)
        self._flush_at = WRITE_BUFFER_HIGH_WATER

    def _send_blocking(self, data: bytes | memoryview) -> None:
        """sendall, with the write deadline running (the clients cron shuts the socket down past it)."""
        client = self.client
        if not client.output_since:
            client.output_since = time.monotonic()
        self.sock.sendall(data)
        client.output_since = 0.0
        self.server.state.stats.total_net_output_bytes += len(data)
        self._out_size = 0

    def close_for(self, reason: str, **detail: Any) -> None:
        """Close this client because it passed a limit: count and log once, no reply.

        Called from the connection's thread or from the clients cron (under
        the server's connections lock, so the socket is still open). A
        write-side limit aborts (RST): the kernel drops what is still queued
        for the client instead of holding it.
        """
        if self.limit_reason is not None:
            return
        self.limit_reason = reason
        note_limit_close(self.client, reason, self.server.state.stats, **detail)
        with contextlib.suppress(OSError):
            if reason in (OUTPUT_BUFFER, WRITE_TIMEOUT):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
            # The plain socket's shutdown, also for TLS (ssl.SSLSocket.shutdown would try to unwrap first).
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def release(self) -> None:
        """Drop queued replies (socketserver closes the socket after the handler returns)."""
        self._out.clear()
        self._out_size = 0


#: SO_LINGER on, 0 seconds: close() resets the connection and discards unsent data.
_ABORT_LINGER = struct.pack("ii", 1, 0)


def run(config: Config) -> int:
    """Entry point for ``crossdock serve --mode threaded``: serve until SIGINT/SIGTERM."""
    server = ThreadedServer(config)
    received = {"count": 0}

    def handle(signum: int, _frame: object) -> None:
        received["count"] += 1
        if received["count"] == 1:
            log.info("signal_received", signal=signal.Signals(signum).name, action="graceful shutdown")
            server.request_stop()
        else:
            log.warning("signal_received_again", signal=signal.Signals(signum).name, action="exit now")
            import os

            os._exit(1)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    try:
        server.start()
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        return 1
    server.serve()
    return 0
