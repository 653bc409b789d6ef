"""Graceful shutdown answers every request already delivered (issue 15 items 3 and 9), in both front ends.

500 clients each write 200 pipelined ECHOs in one write; SIGTERM follows
50 ms later. Every client must get all 200 replies, in order, then EOF, and
the server must exit 0. A client that keeps streaming after the signal must
not hold the threaded front end past --shutdown-timeout.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support import ServerProcess

CLIENTS = 500
PIPELINE = 200
#: Seconds a client waits for its replies after the signal before the test fails it.
REPLY_BOUND = 30.0


def _expected(index: int) -> bytes:
    return b"".join(b"$%d\r\n%b\r\n" % (len(word), word) for word in _words(index))


def _words(index: int) -> list[bytes]:
    return [b"c%d-r%d" % (index, n) for n in range(PIPELINE)]


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_sigterm_answers_every_delivered_request(mode: str) -> None:
    process = ServerProcess(mode, "inline", ("--shutdown-timeout", "20"))
    socks: list[socket.socket] = []
    try:
        for _ in range(CLIENTS):
            sock = socket.create_connection((process.host, process.port), timeout=REPLY_BOUND)
            socks.append(sock)
        for sock in socks:  # every connection accepted and served once before the load
            sock.sendall(b"PING\r\n")
        for sock in socks:
            assert sock.recv(7) == b"+PONG\r\n"
        for index, sock in enumerate(socks):
            sock.sendall(b"".join(b"ECHO %b\r\n" % word for word in _words(index)))
        time.sleep(0.05)
        process.signal()
        answered = 0
        for index, sock in enumerate(socks):
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            assert received == _expected(index)[: len(received)], "replies out of order or wrong"
            answered += received == _expected(index)
        assert answered == CLIENTS
        assert process.proc.wait(30) == 0
    finally:
        for sock in socks:
            sock.close()
        process.stop()


def test_threaded_shutdown_ends_within_its_timeout_while_clients_stream() -> None:
    process = ServerProcess("threaded", "inline", ("--shutdown-timeout", "2"))
    stop = threading.Event()

    def stream() -> None:
        try:
            with socket.create_connection((process.host, process.port), timeout=5) as sock:
                while not stop.is_set():
                    sock.sendall(b"PING\r\n" * 1000)
                    sock.recv(1 << 20)
        except OSError:
            pass

    streams = [threading.Thread(target=stream, daemon=True) for _ in range(20)]
    try:
        for thread in streams:
            thread.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        process.signal()
        assert process.proc.wait(15) == 0
        assert time.monotonic() - signalled < 2 + 1 + 1  # --shutdown-timeout, a second, and the test's own slack
    finally:
        stop.set()
        process.stop()
