"""The threaded legacy front end: ``socketserver.ThreadingTCPServer``, one thread per connection.

Kept so the concurrency models can be measured on the same work: the same
connection core (server.connection.core), registry and dispatcher as the
asyncio front end, driven from a blocking socket loop in each connection's
thread (server.frontends.blocking). A cpu command runs in that thread
(``--cpu inline``, contending for the GIL) or is submitted to the same
process pool while the thread waits (``--cpu pool``).

Here: accepting (an accept loop that backs off on EMFILE instead of
spinning, maxclients counted in the accept thread so a burst cannot
overshoot), the clients cron thread, and shutdown.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import threading
import time
from typing import Any

import structlog

from server import security
from server.commands import Registry
from server.config import Config
from server.connection.core import ConnectionCore, CoreShared
from server.cpu.jobs import call_directly, threaded_submit
from server.errors import StartupError
from server.frontends import tls
from server.frontends.blocking import SocketTransport, ThreadConnection
from server.frontends.lifecycle import ServerBase, SignalPolicy
from server.frontends.pushes import PushDrainer
from server.limits.constants import ACCEPT_RETRY_DELAY, EXPIRE_SWEEP_INTERVAL, LISTEN_BACKLOG
from server.limits.resources import ACCEPT_RESOURCE_ERRNOS, RateLimitedLog, clients_cron_interval
from server.preflight import bind_error_message
from server.store.state import format_address

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
        """accept(); on a lack of descriptors or memory, log (rate-limited) and back off before re-raising.

        socketserver's loop drops the re-raised ``OSError`` and selects again;
        the connection stays in the kernel's backlog until a descriptor frees up.
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


class ThreadedServer(ServerBase):
    """Config -> running threaded server: ``start()``, ``serve()`` until stopped, ``shutdown()``."""

    mode = "threaded"

    def __init__(self, config: Config, command_registry: Registry | None = None) -> None:
        super().__init__(config, command_registry, thread_safe=True)
        self._tcp: _TCPServer | None = None
        #: Served connections: their driver (to stop) and core (for the cron), under the lock.
        self._connections: dict[ThreadConnection, ConnectionCore] = {}
        #: Connections admitted by the accept thread and not yet finished (maxclients counts these).
        self._admitted = 0
        self._connections_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stop = threading.Event()
        self.stopping = threading.Event()
        self._accept_log = RateLimitedLog("accept_failed_retrying")
        self._drainer: PushDrainer | None = None
        #: What every connection's core shares (no loop: a thread serves its reads whole).
        self.shared = CoreShared(self.state, self.dispatcher, self.registry)

    def start(self) -> None:
        """Size descriptors and load TLS, start the pool, bind, accept; log ``started``."""
        self.prepare()
        self.start_cpu(self.new_pool(), submit=threaded_submit, call_soon=call_directly)
        self._drainer = PushDrainer()
        config = self.config
        try:
            self._tcp = _TCPServer((config.host, config.port), self)
        except OSError as exc:  # taken since the preflight check, or a host that cannot be bound
            self.stop_services()
            raise StartupError(bind_error_message("--port", config.host, config.port, exc)) from None
        threading.Thread(
            target=self._tcp.serve_forever, kwargs={"poll_interval": 0.2}, name="accept", daemon=True
        ).start()
        threading.Thread(
            target=self._every,
            args=(EXPIRE_SWEEP_INTERVAL, self.state.keyspace.sweep_expired),
            name="expire-sweep",
            daemon=True,
        ).start()
        threading.Thread(
            target=self._every,
            args=(clients_cron_interval(config), self._clients_cron),
            name="clients-cron",
            daemon=True,
        ).start()
        self.announce(self._tcp.server_address[1])

    def request_stop(self) -> None:
        self.stopping.set()

    def serve(self) -> None:
        """Block until :meth:`request_stop`, then shut down gracefully."""
        while not self.stopping.wait(0.5):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        """Stop accepting; connections answer the requests they have read, up to shutdown_timeout."""
        with self._connections_lock:
            connections = dict(self._connections)
            threads = set(self._threads)
        log.info("stopping", connections=len(connections), timeout=self.config.shutdown_timeout)
        # From the signal, not from when the accept loop has stopped: that wait is part of the timeout too.
        deadline = time.monotonic() + self.config.shutdown_timeout
        self._stop.set()
        if self._tcp is not None:
            self._tcp.shutdown()
            self._tcp.server_close()
        for driver in connections:
            driver.stop_requested = True
            with_shutdown_rd(driver.transport.sock)  # wakes a thread blocked in recv(); replies still go out
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._connections_lock:
            leftover = list(self._connections)
        if leftover:
            log.warning("shutdown_timeout_closing", connections=len(leftover))
            for driver in leftover:
                driver.transport.abort()
        if self._drainer is not None:
            self._drainer.stop()
        self.stop_services()

    def _every(self, interval: float, tick: Any) -> None:
        while not self._stop.wait(interval):
            tick()

    # -- accept-time limits ---------------------------------------------------------------
    def take_slot(self, sock: socket.socket) -> bool:
        """maxclients, in the accept thread: take a slot, or send Redis's error (socketserver then closes it)."""
        with self._connections_lock:
            refusal = self.refuse_for_maxclients(self._admitted)
            if refusal is None:
                self._admitted += 1
                return True
        with contextlib.suppress(OSError):  # a fresh socket's send buffer always has room for 37 bytes
            sock.send(refusal, socket.MSG_DONTWAIT)
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

    def _clients_cron(self) -> None:
        """Close the clients that overran a deadline (idle, request, write): their socket is shut down."""
        now = time.monotonic()
        with self._connections_lock:
            for core in self._connections.values():
                core.check_deadlines(now)

    # -- one connection ---------------------------------------------------------------------
    def serve_connection(self, sock: socket.socket, address: Any) -> None:
        """In the connection's thread: the TLS handshake (if any), protected mode, then the core's read loop.

        The handshake runs here, not in the accept loop, so a client that never finishes it holds only its own
        thread, for at most :data:`server.frontends.tls.TLS_HANDSHAKE_TIMEOUT`.
        """
        try:
            if self.ssl_context is not None:
                tls_sock = tls.server_handshake(self.ssl_context, sock)
                if tls_sock is None:
                    return
                with tls_sock:  # socketserver closes the plain socket, which the TLS socket has taken over
                    self._admit(tls_sock, address)
                return
            self._admit(sock, address)
        finally:
            self.release_slot()  # taken by take_slot in the accept thread

    def _admit(self, sock: socket.socket, address: Any) -> None:
        refusal = self.refuse_for_protected_mode(address)
        if refusal is not None:
            security.refuse_blocking(sock, refusal)
            return
        try:
            client = self.state.register_client(
                format_address(address), format_address(sock.getsockname()), sock.fileno()
            )
        except OSError:  # reset before this thread started: nothing to serve
            return
        transport = SocketTransport(sock)
        driver = ThreadConnection(transport, self.cpu_jobs)
        core = ConnectionCore(transport, driver, self.shared, client)
        transport.core = core
        transport.drainer = self._drainer
        client.outlet = transport  # pub/sub delivery from publishers' threads (server.frontends.pushes)
        with self._connections_lock:
            self._connections[driver] = core
            self._threads.add(threading.current_thread())
        if self._stop.is_set():
            driver.stop_requested = True
        try:
            driver.serve(core)
        except OSError:
            pass
        except Exception:
            log.warning("connection_failed", client_id=client.id, exc_info=True)
        finally:
            core.connection_lost()
            self.state.unregister_client(client)
            with self._connections_lock:
                self._connections.pop(driver, None)
                self._threads.discard(threading.current_thread())


def with_shutdown_rd(sock: socket.socket) -> None:
    """Stop the peer's bytes reaching a blocked recv() (the plain socket's shutdown, also for TLS)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RD)


def run(config: Config) -> int:
    """Entry point for ``crossdock serve --mode threaded``: serve until SIGINT/SIGTERM."""
    import signal

    server = ThreadedServer(config)
    policy = SignalPolicy(server.request_stop)
    for signum in policy.SIGNALS:
        signal.signal(signum, policy)
    try:
        server.start()
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        return 1
    server.serve()
    return 0
