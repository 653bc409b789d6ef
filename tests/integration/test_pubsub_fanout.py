"""Pub/sub delivery in both front ends: one PUBLISH reaches many sockets, and a subscriber that does not read is
cut off at the pub/sub output limit (Redis's ``client-output-buffer-limit pubsub 32mb 8mb 60``) while the
publisher and the subscribers that read go on.
"""

from __future__ import annotations

import socket

import pytest

from server.limits.constants import PUBSUB_OUTPUT_HARD_LIMIT
from server.protocol import encode_command
from tests.support import ServerProcess, info_fields

SUBSCRIBERS = 200
MESSAGE = b"m" * (1024 * 1024)


def _subscribe(process: ServerProcess, channel: str) -> socket.socket:
    sock = socket.create_connection((process.host, process.port), timeout=30)
    sock.sendall(encode_command("SUBSCRIBE", channel))
    expected = b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%b\r\n:1\r\n" % (len(channel), channel.encode())
    got = b""
    while len(got) < len(expected):
        got += sock.recv(len(expected) - len(got))
    assert got == expected
    return sock


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        assert chunk, "the server closed the subscriber"
        data += chunk
    return data


@pytest.fixture(params=["async", "threaded"])
def process(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    server = ServerProcess(request.param, "inline")
    yield server
    server.stop()


def test_one_publish_reaches_every_subscriber(process: ServerProcess) -> None:
    subscribers = [_subscribe(process, "fan") for _ in range(SUBSCRIBERS)]
    try:
        with process.connect() as publisher:
            assert publisher.call("PUBLISH", "fan", "hello") == SUBSCRIBERS
        expected = b"*3\r\n$7\r\nmessage\r\n$3\r\nfan\r\n$5\r\nhello\r\n"
        for sock in subscribers:
            assert _read_exactly(sock, len(expected)) == expected
    finally:
        for sock in subscribers:
            sock.close()


def test_a_subscriber_that_does_not_read_is_cut_off_and_nobody_else_waits(process: ServerProcess) -> None:
    silent = _subscribe(process, "big")
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = _subscribe(process, "big")
    frame = b"*3\r\n$7\r\nmessage\r\n$3\r\nbig\r\n$%d\r\n%b\r\n" % (len(MESSAGE), MESSAGE)
    try:
        with process.connect() as publisher:
            counts = []
            for _ in range(PUBSUB_OUTPUT_HARD_LIMIT // len(MESSAGE) + 8):
                counts.append(publisher.call("PUBLISH", "big", MESSAGE))
                assert _read_exactly(reader, len(frame)) == frame  # the reading subscriber keeps up
            assert counts[0] == 2 and counts[-1] == 1  # the silent one was dropped on the way
            stats = info_fields(publisher, "stats")
            assert int(stats["pubsub_output_buffer_limit_disconnections"]) >= 1
    finally:
        silent.close()
        reader.close()
