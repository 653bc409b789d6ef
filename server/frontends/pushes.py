"""Pub/sub delivery under the threaded front end: a PUBLISH in one connection's thread writes to other sockets.

A subscriber's own thread spends its time blocked in ``recv``; the
publisher's thread must not wait for it, nor for a subscriber that does not
read. So a pushed message (:meth:`PushOutbox.push`, the subscriber's
``client.outlet``) is:

- queued in the subscriber's inbox while its own thread is serving a chunk
  (that thread writes it after the chunk's replies, so a SUBSCRIBE's
  confirmation always comes before the first message, as Redis orders them);
- otherwise sent at once without blocking, under the transport's lock; what
  the kernel does not take waits in the transport's buffer, and the one
  :class:`PushDrainer` thread sends it when the socket becomes writable.

The pub/sub output limits (Redis's ``client-output-buffer-limit pubsub``) are
checked on the bytes waiting; past them the subscriber is cut off. TLS
subscribers get their messages from their own thread only (OpenSSL does not
allow another thread to write while theirs reads).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Protocol

from server.limits.constants import PUBSUB_OUTPUT_HARD_LIMIT, PUBSUB_OUTPUT_SOFT_LIMIT, PUBSUB_OUTPUT_SOFT_SECONDS


class SocketTransport(Protocol):
    """What the drainer needs of a subscriber's transport (server.frontends.blocking.SocketTransport)."""

    sock: socket.socket
    closing: bool

    def send_pushed(self) -> bool: ...


#: Longest the drainer sleeps without an event: how late it notices it should stop.
DRAINER_TICK = 1.0


class PushDrainer:
    """One thread that finishes sending pushed messages to subscribers whose socket was full."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._added: list[SocketTransport] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="push-drainer", daemon=True)
        self._thread.start()

    def watch(self, transport: SocketTransport) -> None:
        """``transport`` has pushed bytes its socket did not take: send them when it is writable (any thread)."""
        with self._lock:
            self._added.append(transport)
        with contextlib.suppress(OSError):  # a full wake-up pipe already means "wake up"
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._thread.join(DRAINER_TICK * 2)
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        selector = self._selector
        while not self._stopped.is_set():
            for key, _events in selector.select(DRAINER_TICK):
                if key.fileobj is self._wake_r:
                    self._take_new()
                    continue
                transport: SocketTransport = key.data
                if transport.send_pushed():
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        selector.unregister(key.fileobj)

    def _take_new(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            added, self._added = self._added, []
        for transport in added:
            sock = transport.sock
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)  # a stale entry for a reused descriptor
            if not transport.closing:
                with contextlib.suppress(ValueError, OSError):
                    self._selector.register(sock, selectors.EVENT_WRITE, transport)


def over_pubsub_limits(unsent: int, since: float, now: float) -> tuple[bool, float]:
    """Redis's pubsub output limits: (cut?, the new "over the soft limit since" time, 0.0 when under it)."""
    if unsent > PUBSUB_OUTPUT_HARD_LIMIT:
        return True, since
    if unsent <= PUBSUB_OUTPUT_SOFT_LIMIT:
        return False, 0.0
    if not since:
        return False, now
    return now - since > PUBSUB_OUTPUT_SOFT_SECONDS, since
