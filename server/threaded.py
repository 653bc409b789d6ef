"""The threaded legacy front end: ``socketserver.ThreadingTCPServer``, one thread per connection.

Kept so the concurrency models can be measured on the same work: the same
protocol core, the same registry and dispatcher as the asyncio front end.
Each connection's thread reads a chunk, answers every request in it in
order and writes once; a cpu command runs in the thread itself
(``--cpu inline``, contending for the GIL with every other thread) or is
submitted to the same process pool while the thread waits (``--cpu pool``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import ssl
import threading
import time
from concurrent.futures import Future
from typing import Any

import structlog

from server import security, tls
from server.commands import CommandContext, Dispatcher, Registry, RunCpu, Sleep, registry
from server.config import Config
from server.cpu_jobs import CpuJobs, call_directly, threaded_submit
from server.limits import EXPIRE_SWEEP_INTERVAL, LISTEN_BACKLOG, READ_CHUNK_SIZE
from server.pool import CpuPool, cpu_reply, run_cpu, start_pool
from server.protocol import RequestParser, encode_reply
from server.state import ServerState, format_address

log = structlog.get_logger("crossdock.threaded")


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], owner: ThreadedServer) -> None:
        self.owner = owner
        super().__init__(address, _ConnectionHandler)


class _ConnectionHandler(socketserver.BaseRequestHandler):
    """Serves one connection in its own thread."""

    def handle(self) -> None:
        owner: ThreadedServer = self.server.owner  # type: ignore[attr-defined]
        owner.serve_connection(self.request, self.client_address)


class ThreadedServer:
    """Config -> running threaded server: ``start()``, ``serve()`` until stopped, ``shutdown()``."""

    def __init__(self, config: Config, command_registry: Registry = registry) -> None:
        self.config = config
        self.registry = command_registry
        self.state = ServerState(config, thread_safe=True)
        self.dispatcher = Dispatcher(command_registry, self.state)
        self.pool: CpuPool | None = None
        #: The cpu-job policy on the pool (backlog bound, timeouts, failures); None with --cpu inline.
        self.cpu_jobs: CpuJobs | None = None
        self._tcp: _TCPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        self._stop = threading.Event()
        self.stopping = threading.Event()
        self._ssl: ssl.SSLContext | None = None

    def start(self) -> None:
        config = self.config
        self._ssl = tls.server_context_or_exit(config)  # a bad certificate stops start-up before the pool
        if config.cpu == "pool":
            self.pool = start_pool(config)
            self.state.pool_size = config.workers
            self.state.pool = self.pool
            self.state.cpu_jobs = self.cpu_jobs = CpuJobs(
                self.pool,
                queue_limit=config.effective_cpu_queue_limit,
                timeout=config.cpu_timeout,
                submit=threaded_submit,
                call_soon=call_directly,
            )
        self._tcp = _TCPServer((config.host, config.port), self)
        self.state.bound_port = self._tcp.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._tcp.serve_forever, kwargs={"poll_interval": 0.2}, name="accept", daemon=True
        )
        self._serve_thread.start()
        threading.Thread(target=self._sweep_expired, name="expire-sweep", daemon=True).start()
        log.info(
            "started",
            mode="threaded",
            cpu=config.cpu,
            host=config.host,
            port=self.state.bound_port,
            workers=self.state.pool_size,
            tls=self._ssl is not None,
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
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))
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
        log.info("stopped")

    def _sweep_expired(self) -> None:
        while not self._stop.wait(EXPIRE_SWEEP_INTERVAL):
            self.state.keyspace.sweep_expired()

    # -- one connection ---------------------------------------------------------------------
    def serve_connection(self, sock: socket.socket, address: Any) -> None:
        """In the connection's thread: the TLS handshake (if any), protected mode, then :meth:`_serve`.

        The handshake runs here, not in the accept loop, so a client that never finishes it holds only its own
        thread, for at most :data:`server.tls.TLS_HANDSHAKE_TIMEOUT`.

        Error handling: a failed handshake closes the connection (logged at debug); a refused peer gets
        Redis's ``-DENIED`` text and is closed.
        """
        if self._ssl is not None:
            tls_sock = tls.server_handshake(self._ssl, sock)
            if tls_sock is None:
                return
            with tls_sock:  # socketserver closes the plain socket, which the TLS socket has taken over
                self._admit(tls_sock, address)
            return
        self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        refusal = security.protected_mode_refusal(self.config, address)
        if refusal is not None:
            self.state.stats.rejected_connections += 1
            security.refuse_blocking(sock, refusal)
            return
        self._serve(sock, address)

    def _serve(self, sock: socket.socket, address: Any) -> None:
        """Read, parse, answer in order, write once per chunk, until EOF, QUIT or a protocol error.

        Error handling: as in the asyncio front end, a protocol error is
        answered then the connection closed; peer resets end it quietly;
        anything else is logged at warning and the connection closed.
        """
        with self._connections_lock:
            self._connections[sock] = threading.current_thread()
        client = self.state.register_client(
            format_address(address), format_address(sock.getsockname()), sock.fileno()
        )
        structlog.contextvars.bind_contextvars(client_id=client.id, peer=client.addr)
        log.debug("connection_open")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = RequestParser(max_bulk_length=self.config.max_bulk_length)
        ctx = CommandContext(self.state, client, self.registry)
        dispatcher = self.dispatcher
        out: list[bytes] = []
        try:
            while not client.close_requested:
                data = sock.recv(READ_CHUNK_SIZE)
                if not data:
                    break
                for result in dispatcher.run_chunk(ctx, parser, data):
                    if isinstance(result, bytes):
                        out.append(result)
                    else:
                        self._send(sock, out)  # earlier replies should not wait behind the slow one
                        out.append(self._carry_out(result, client.id))
                self._send(sock, out)
        except OSError:
            pass
        except Exception:
            log.warning("connection_failed", exc_info=True)
        finally:
            self.state.unregister_client(client)
            with self._connections_lock:
                self._connections.pop(sock, None)
            log.debug("connection_closed")
            structlog.contextvars.clear_contextvars()

    def _send(self, sock: socket.socket, out: list[bytes]) -> None:
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.state.stats.total_net_output_bytes += len(data)
        sock.sendall(data)

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
        self.dispatcher.note_if_slow(action.name, started, client_id)
        return reply


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
    server.start()
    server.serve()
    return 0
