"""A burst of clients is accepted at once while the loop is busy (issue 15 item 5), asyncio front end.

uvloop accepts one connection per loop iteration. When iterations are long
(clients streaming, each pass a few milliseconds of work) a burst of
connections waited one pass each: 500 clients, seconds. The front end takes
the rest of the listen queue itself when uvloop hands it one
(``AsyncServer._accept_backlog``). The test makes every loop iteration slow on
purpose, connects a burst, and counts the iterations until all are served:
a few, not one per connection. In-process, real sockets on port 0.
"""

from __future__ import annotations

import asyncio
import socket
import time

import uvloop

from server.config import Config
from server.frontends.aio import AsyncServer

BURST = 200
#: Seconds each busy loop pass blocks, standing in for a pass of streaming clients' work.
PASS_SECONDS = 0.005
#: Loop passes allowed until the whole burst is accepted: far fewer than one per connection.
PASSES_ALLOWED = BURST // 10


def _connect_all(port: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(BURST)]


async def _scenario() -> tuple[int, list[bytes]]:
    server = AsyncServer(Config(port=0, cpu="inline", metrics_port=-1))
    await server.start()
    loop = asyncio.get_running_loop()
    passes = 0
    busy = True

    def slow_pass() -> None:
        nonlocal passes
        passes += 1
        time.sleep(PASS_SECONDS)
        if busy:
            loop.call_soon(slow_pass)

    loop.call_soon(slow_pass)
    socks: list[socket.socket] = []
    try:
        socks = await asyncio.to_thread(_connect_all, server.state.bound_port)  # the kernel completes each
        start = passes
        while len(server.connections) < BURST and passes - start <= PASSES_ALLOWED:
            await asyncio.sleep(0)
        taken = passes - start
        busy = False

        def ping_all() -> list[bytes]:
            for sock in socks:
                sock.sendall(b"PING\r\n")
            return [sock.recv(16) for sock in socks]

        replies = await asyncio.to_thread(ping_all)
    finally:
        busy = False
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
