"""Fair sharing (issue 15 item 5), end to end: clients streaming big pipelines do not hold up a new client.

Forty clients each write a quarter of a megabyte of pipelined PINGs (about
1.7 million requests in all, seconds of work for the server) and read their
replies as they come. A client that connects once the streams are being
served must have its PING answered while the streamers' backlog is still
being worked through, and every streamer must still get every reply. In the
asyncio front end this is the loop's pass budget and round robin
(server.connection.fairness); in the threaded one, the scheduler's.
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.support import ServerProcess

STREAMERS = 40
#: Pipelined PINGs per streamer: enough that the whole backlog takes the server seconds.
PINGS_PER_STREAMER = 256 * 1024 // len(b"PING\r\n")
PONG = b"+PONG\r\n"
#: Seconds any one wait may take before the test fails (a bound on failure, not a timing assertion).
WAIT_BOUND = 60.0


class Streamer:
    """One client: writes its whole pipeline from one thread, counts the replies from another."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=WAIT_BOUND)
        self.received = 0
        self.replies = bytearray()
        self.first_reply = threading.Event()
        self.error: BaseException | None = None
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def _write(self) -> None:
        try:
            self.sock.sendall(b"PING\r\n" * PINGS_PER_STREAMER)
        except OSError as exc:
            self.error = exc

    def _read(self) -> None:
        expected = len(PONG) * PINGS_PER_STREAMER
        try:
            while self.received < expected:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                self.replies += chunk
                self.received += len(chunk)
                self.first_reply.set()
        except OSError as exc:
            self.error = exc


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_a_new_client_is_answered_while_others_stream(mode: str) -> None:
    process = ServerProcess(mode, "inline")
    streamers: list[Streamer] = []
    try:
        streamers = [Streamer(process.host, process.port) for _ in range(STREAMERS)]
        for streamer in streamers:
            streamer.start()
        for streamer in streamers:  # the streams are being served
            assert streamer.first_reply.wait(WAIT_BOUND)
        with socket.create_connection((process.host, process.port), timeout=WAIT_BOUND) as probe:
            probe.sendall(b"PING\r\n")
            assert probe.recv(64) == PONG
            answered_meanwhile = sum(s.received for s in streamers) // len(PONG)
        total = STREAMERS * PINGS_PER_STREAMER
        assert answered_meanwhile < total, "the probe waited for the whole backlog"
        for streamer in streamers:
            streamer.reader.join(WAIT_BOUND)
            assert not streamer.reader.is_alive()
            assert streamer.error is None
            assert streamer.replies == PONG * PINGS_PER_STREAMER  # every reply, nothing dropped for fairness
    finally:
        for streamer in streamers:
            streamer.sock.close()
        process.stop()
