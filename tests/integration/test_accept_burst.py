"""A burst of clients is accepted at once while the loop is busy (issue 15 item 5), asyncio front end.

uvloop accepts one connection per loop iteration. When iterations are long
(clients streaming, each pass a few milliseconds of work) a burst of
connections waited one pass each: 500 clients, seconds. The front end takes
the rest of the listen queue itself when uvloop hands it one
(``AsyncServer._accept_backlog``) while the loop is sharing its passes with
streaming clients. The test queues a stand-in streamer whose every slice is
slow, connects a burst, and counts the passes until all are accepted: a few,
not one per connection. In-process, real sockets on port 0.
"""

from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from server.config import Config
from server.frontends.aio import AsyncServer

BURST = 200
#: Seconds each slice of the stand-in streamer blocks: one slow pass of streaming clients' work.
PASS_SECONDS = 0.005
#: Loop passes allowed until the whole burst is accepted: far fewer than one per connection.
PASSES_ALLOWED = BURST // 10


class SlowStreamer:
    """A connection with input left for ever (until told to stop) whose every slice takes PASS_SECONDS."""

    def __init__(self) -> None:
        self.slices = 0
        self.streaming = True

    def serve_slice(self) -> bool:
        self.slices += 1  # one slice per loop pass: this counts the passes
        time.sleep(PASS_SECONDS)
        return self.streaming


def _connect_all(port: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(BURST)]


async def _scenario() -> tuple[int, list[bytes]]:
    server = AsyncServer(Config(port=0, cpu="inline", metrics_port=-1))
    await server.start()
    streamer = SlowStreamer()
    assert server.shared is not None and server.shared.shares is not None
    server.shared.shares.admit(streamer)  # the loop now shares its passes with a client that streams
    socks: list[socket.socket] = []
    try:
        socks = await asyncio.to_thread(_connect_all, server.state.bound_port)  # the kernel completes each
        start = streamer.slices
        while len(server.connections) < BURST and streamer.slices - start <= PASSES_ALLOWED:
            await asyncio.sleep(0)
        taken = streamer.slices - start
        streamer.streaming = False

        def ping_all() -> list[bytes]:
            for sock in socks:
                sock.sendall(b"PING\r\n")
            return [sock.recv(16) for sock in socks]

        replies = await asyncio.to_thread(ping_all)
    finally:
        streamer.streaming = False
        for sock in socks:
            sock.close()
        server.request_stop()
        await server.shutdown()
    return taken, replies


def test_a_burst_of_connections_is_accepted_in_a_few_busy_passes() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        taken, replies = runner.run(_scenario())
    assert taken <= PASSES_ALLOWED, f"{taken} loop passes to accept {BURST} connections"
    assert replies == [b"+PONG\r\n"] * BURST
