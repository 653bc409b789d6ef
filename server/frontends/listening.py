"""The asyncio front end's care of its listening socket: taking a burst at once, and listening again if lost.

Two things uvloop does not do for the server (docs/decisions.md, "Accepting a
burst" and "The listener survives"): it accepts one connection per loop
iteration, and it closes its listener for good on an accept error (ENOBUFS,
ENOMEM). Both work through a ``dup`` of the listening socket, which the
kernel socket outlives uvloop's own descriptor on. A mixin of
:class:`server.frontends.aio.AsyncServer`, which owns the attributes below.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import structlog

from server.frontends import tls
from server.limits.constants import LISTEN_BACKLOG, MAX_ACCEPTS_PER_EVENT, READ_CHUNK_SIZE
from server.store.state import ServerState

log = structlog.get_logger("crossdock.aio")


class ListenerCare:
    """Burst accepts and listener restore for the asyncio server (a mixin: the server sets these attributes)."""

    _server: asyncio.AbstractServer | None
    #: A dup of each listening socket, made when the server starts listening.
    _listen_dups: list[socket.socket]
    _relisten: asyncio.Task[None] | None
    #: connect_accepted_socket tasks of connections taken from the listen queue.
    _accepting: set[asyncio.Task[object]]
    stopping: asyncio.Event
    ssl_context: ssl.SSLContext | None
    state: ServerState

    def _hand_over(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _accept_backlog(self) -> None:
        """Take the connections still in the listen queue now, up to MAX_ACCEPTS_PER_EVENT (Redis's habit).

        uvloop accepts one connection per loop iteration; while passes are
        long (clients streaming: ``shares.busy``), a burst of clients would
        wait one pass each. Only then: on an idle loop an iteration takes
        microseconds, and a connection taken here costs a task and its
        futures, which left 500 more bytes of heap per idle connection
        (bench/targets.py's memory row, 10,000 connections at once).
        Each connection taken here goes through ``connect_accepted_socket``
        with start_server's own protocol, so it reaches :meth:`_hand_over`
        (and TLS, maxclients, protected mode) exactly as one uvloop accepted.
        Error handling: any ``OSError`` from accept (nothing waiting, EMFILE)
        ends the drain; uvloop's own accept path deals with the rest.
        """
        loop = asyncio.get_running_loop()
        arguments = tls.start_server_arguments(self.ssl_context)
        for listener in self._listen_dups:
            for _ in range(MAX_ACCEPTS_PER_EVENT):
                try:
                    sock, _address = listener.accept()
                except OSError:
                    break
                sock.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(self._stream_protocol, sock, **arguments))
                self._accepting.add(task)
                task.add_done_callback(self._accepted)

    def _stream_protocol(self) -> asyncio.StreamReaderProtocol:
        """The protocol asyncio.start_server makes per connection, calling :meth:`_hand_over` once connected."""
        loop = asyncio.get_running_loop()
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=READ_CHUNK_SIZE, loop=loop), self._hand_over)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        self._accepting.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a client gone at once, a failed TLS handshake
            log.debug("accepted_connection_failed", error=str(task.exception()))

    def _check_listeners(self) -> None:
        """Listen again, on the same kernel socket, if the listener was closed under the server (logged once)."""
        if self.stopping.is_set() or self._server is None or (self._relisten and not self._relisten.done()):
            return
        listeners = getattr(self._server, "sockets", None) or ()
        pairs = zip(listeners, self._listen_dups, strict=False)
        if self._server.is_serving() and listeners and all(_same_socket(s, d) for s, d in pairs):
            return
        log.error("listener_lost", port=self.state.bound_port, action="listening again on the same socket")
        self._relisten = asyncio.get_running_loop().create_task(self._listen_again())

    async def _listen_again(self) -> None:
        self._server = await asyncio.start_server(
            self._hand_over,
            sock=socket.socket(fileno=os.dup(self._listen_dups[0].fileno())),
            limit=READ_CHUNK_SIZE,
            backlog=LISTEN_BACKLOG,
            **tls.start_server_arguments(self.ssl_context),
        )
        log.info("listener_restored", port=self.state.bound_port)


def _same_socket(listener: object, dup: socket.socket) -> bool:
    """Whether the server's listening descriptor is still the socket ``dup`` duplicates (not closed, not reused)."""
    try:
        return os.fstat(listener.fileno()).st_ino == os.fstat(dup.fileno()).st_ino  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return False
