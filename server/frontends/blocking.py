"""One connection of the threaded front end: a blocking socket driven by the connection core in its own thread.

:class:`SocketTransport` is the core's Transport over a blocking socket:
``write`` sends what the kernel takes at once and keeps the rest (past the
high-water mark it tells the core ``pause_writing``, as an asyncio transport
would, so the core's output cap applies the same way); :meth:`flush` sends
the rest blocking at the end of each chunk (the thread's backpressure; the
clients cron aborts it past ``--write-timeout``). :class:`ThreadConnection`
is the read loop and the job runner: a job (SLEEP, a cpu command) is carried
out right there, the thread waiting for it, after earlier replies went out.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import Future

from server.commands import RunCpu, Sleep
from server.connection.core import ConnectionCore, Job
from server.cpu.backend import cpu_reply
from server.cpu.jobs import CpuJobs
from server.cpu.worker import run_cpu
from server.frontends.pushes import PushDrainer, over_pubsub_limits
from server.limits.constants import READ_CHUNK_SIZE, WRITE_BUFFER_HIGH_WATER
from server.limits.resources import PUBSUB_OUTPUT_BUFFER
from server.protocol import encode_reply

#: SO_LINGER on, 0 seconds: close() resets the connection and discards unsent data.
_ABORT_LINGER = struct.pack("ii", 1, 0)


class SocketTransport:
    """A blocking (plain or TLS) socket with the asyncio-transport methods the connection core calls.

    Thread safety: the connection's own thread does everything except
    :meth:`close` / :meth:`abort`, which the clients cron or shutdown may call
    from another thread (they only shut the socket down, which wakes the
    connection's thread from ``recv`` or ``sendall``), and :meth:`push`, which
    publishers call (server.frontends.pushes): while the connection's thread
    serves a chunk (``busy``, between :meth:`begin` and :meth:`end`) it alone
    touches the buffer; otherwise publishers and the drainer do, under ``lock``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.core: ConnectionCore | None = None
        self.thread = threading.current_thread()
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        #: ssl.SSLSocket.send takes no flags: a TLS client's writes always wait for the socket.
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._write_paused = False
        #: Set by close()/abort(): the read loop ends once what is queued is sent.
        self.closing = False
        #: Guards the buffer and the socket's send side while the connection's own thread is not serving.
        self.lock = threading.Lock()
        #: The connection's own thread is serving a chunk: pushes from other threads wait in ``_inbox``.
        self.busy = False
        self._inbox: list[bytes] = []
        self._inbox_size = 0
        #: Sends what pushes left in the buffer once the socket is writable (set by the threaded server).
        self.drainer: PushDrainer | None = None
        #: Since when the pushed bytes waiting have been over the pub/sub soft limit (0.0: they are not).
        self.pubsub_soft_since = 0.0

    # -- the Transport protocol ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._out:
            self._out.append(data)
            self._out_size += len(data)
            return
        sent = 0
        if not self._tls:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
        if sent < len(data):
            self._out.append(memoryview(data)[sent:])
            self._out_size += len(data) - sent
            if self._out_size > WRITE_BUFFER_HIGH_WATER and not self._write_paused and self.core is not None:
                self._write_paused = True
                self.core.pause_writing()  # the write deadline runs; the core checks its output cap

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def pause_reading(self) -> None:
        """Nothing to do: the read loop reads only between chunks, when the core wants more."""

    def resume_reading(self) -> None:
        """Nothing to do (see :meth:`pause_reading`)."""

    def close(self) -> None:
        """Close after what is queued is sent; from another thread, wake the connection's thread first."""
        self.closing = True
        if threading.current_thread() is not self.thread:
            self._shutdown()

    def abort(self) -> None:
        """Close at once, dropping what is unsent (RST)."""
        self.closing = True
        with self.lock:
            self._out.clear()
            self._out_size = 0
            self._inbox.clear()
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
        self._shutdown()

    # -- pub/sub, from other threads ----------------------------------------------------------------
    def push(self, data: bytes) -> None:
        """A pub/sub message for this client (as its ``client.outlet``), from any thread; never blocks on the client."""
        if threading.current_thread() is self.thread and self.core is not None:
            self.core.push(data)  # published to itself: ordered as Redis orders it, by the core
            return
        watch = False
        with self.lock:
            if self.closing:
                return
            if self.busy or self._tls:
                self._inbox.append(data)
                self._inbox_size += len(data)
                unsent = self._out_size + self._inbox_size
            else:
                self._out.append(data)
                self._out_size += len(data)
                self._send_nowait()
                unsent = self._out_size
                watch = unsent > 0 and self.drainer is not None
            cut, self.pubsub_soft_since = over_pubsub_limits(unsent, self.pubsub_soft_since, time.monotonic())
        if cut and self.core is not None:
            self.core.close_for(PUBSUB_OUTPUT_BUFFER, unsent=unsent)
        elif watch and self.drainer is not None:
            self.drainer.watch(self)

    def send_pushed(self) -> bool:
        """The drainer's turn (socket writable): send what pushes left; True when nothing is left for it."""
        with self.lock:
            if self.busy or self.closing:
                return True  # the connection's own thread sends it with its next replies
            self._send_nowait()
            return not self._out

    def _send_nowait(self) -> None:
        """Under the lock: send what the kernel takes now, keep the rest."""
        if not self._out:
            return
        data = b"".join(self._out)
        sent = 0
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        rest = len(data) - sent
        self._out = [memoryview(data)[sent:]] if rest else []
        self._out_size = rest

    # -- for the driver ----------------------------------------------------------------------------
    def begin(self) -> None:
        """The connection's thread is about to serve a chunk: it owns the buffer until :meth:`end`."""
        with self.lock:
            self.busy = True

    def end(self) -> None:
        """After the chunk's replies: send the messages pushed meanwhile, then give the buffer back."""
        while True:
            with self.lock:
                if not self._inbox:
                    self.busy = False
                    return
                pushed, self._inbox, self._inbox_size = self._inbox, [], 0
            for data in pushed:
                self._out.append(data)
                self._out_size += len(data)
            self.flush()

    def flush(self) -> None:
        """Send everything queued, blocking; the write deadline runs while the client does not read."""
        if not self._out:
            return
        core = self.core
        if not self._write_paused and core is not None:
            self._write_paused = True
            core.pause_writing()
        data = b"".join(self._out)
        self._out.clear()
        self.sock.sendall(data)
        self._out_size = 0
        self._write_paused = False
        if core is not None:
            core.resume_writing()

    def _shutdown(self) -> None:
        # The plain socket's shutdown, also for TLS: ssl.SSLSocket.shutdown would try to unwrap first.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


class ThreadConnection:
    """Serves one client in the current thread: read a chunk, let the core answer it, flush; jobs run here."""

    def __init__(self, transport: SocketTransport, cpu_jobs: CpuJobs | None) -> None:
        self.transport = transport
        self.cpu_jobs = cpu_jobs
        #: Set by the server's shutdown (another thread): stop reading after the current chunk.
        self.stop_requested = False

    def serve(self, core: ConnectionCore) -> None:
        """The read loop, until EOF, QUIT, a protocol error, a limit or shutdown.

        Error handling: socket errors (a reset, a shutdown by the cron or by
        shutdown) propagate to the caller, which ends the connection quietly.
        """
        sock = self.transport.sock
        transport = self.transport
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not transport.closing:
            if self.stop_requested:
                transport.begin()
                self._serve_what_arrived(core)
                core.stop_reading()
                break
            data = sock.recv(READ_CHUNK_SIZE)
            transport.begin()
            if not data:
                core.eof_received()
                break
            core.data_received(data)
            if not transport.closing or transport.get_write_buffer_size():
                transport.flush()
            transport.end()
        transport.flush()

    def _serve_what_arrived(self, core: ConnectionCore) -> None:
        """Shutdown: answer the requests already delivered to this socket, without waiting for more.

        Reads without blocking until the kernel has nothing more, at most one
        receive buffer's worth (what could have been waiting when the signal
        came), so a client that keeps streaming cannot hold the shutdown.
        """
        sock = self.transport.sock
        budget = READ_CHUNK_SIZE
        with contextlib.suppress(OSError):
            budget = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        while budget > 0 and not self.transport.closing:
            sock.setblocking(False)
            try:
                data = sock.recv(READ_CHUNK_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except OSError:  # reset, or a TLS stream cut by the shutdown: nothing more to answer
                return
            finally:
                sock.setblocking(True)
            if not data:
                return
            budget -= len(data)
            core.data_received(data)
            self.transport.flush()

    def start(self, job: Job, core: ConnectionCore) -> None:
        """Carry out ``job`` now, in this thread (earlier replies are sent first), and answer it."""
        self.transport.flush()
        action = job.action
        if isinstance(action, Sleep):
            time.sleep(action.seconds)
            core.job_done(job, encode_reply(action.reply))
            return
        assert isinstance(action, RunCpu)
        if self.cpu_jobs is None:  # --cpu inline: this thread runs it, contending for the GIL
            core.job_done(job, cpu_reply(run_cpu(action.func, action.args)))
            return
        # The policy answers every admitted job exactly once (its reply, BUSY, a timeout or a worker failure),
        # so this wait always ends; the timeout is enforced by the policy.
        answer: Future[bytes] = Future()
        self.cpu_jobs.start(action, answer.set_result, core.client.id)
        core.job_done(job, answer.result())

    def cancel(self, job: Job) -> None:
        """Nothing to cancel: a job runs while its thread waits, so none is left when the connection ends."""
