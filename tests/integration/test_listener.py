"""The listener survives (issue 15 item 4): if the listening socket is closed under the asyncio front end, the
server notices, logs once and listens again on the same address; connections already open are unaffected.

uvloop closes its listener for good when libuv reports an accept error (ENOBUFS, ENOMEM). That error cannot be
provoked on purpose here, so the test closes the listener the way uvloop does (the server object's own close,
which closes uvloop's descriptor) inside a running server, in-process, and uses real sockets on port 0.
"""

from __future__ import annotations

import asyncio
import time

import structlog
import uvloop

from server.config import Config
from server.frontends.aio import AsyncServer

#: Seconds the test gives the clients cron (1 s period) to notice and listen again.
RELISTEN_BOUND = 10.0


async def _ping(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PING\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return reply


async def _scenario() -> list[dict[str, object]]:
    with structlog.testing.capture_logs() as logs:
        server = AsyncServer(Config(port=0, cpu="inline", metrics_port=-1))
        await server.start()
        port = server.state.bound_port
        assert await _ping(port) == b"+PONG\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # held across the failure
        server._server.close()  # type: ignore[union-attr]  # what uvloop does on an accept error
        deadline = time.monotonic() + RELISTEN_BOUND
        while True:
            try:
                reply = await _ping(port)
                break
            except (OSError, TimeoutError):
                assert time.monotonic() < deadline, "the server did not listen again"
                await asyncio.sleep(0.1)
        assert reply == b"+PONG\r\n"
        writer.write(b"ECHO still-here\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"$10\r\n"
        writer.close()
        server.request_stop()
        await server.shutdown()
    return logs


def test_a_closed_listener_is_restored_on_the_same_port() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        logs = runner.run(_scenario())
    events = [entry["event"] for entry in logs]
    assert events.count("listener_lost") == 1
    assert events.count("listener_restored") == 1
