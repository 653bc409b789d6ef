"""crossdock's own clients in RESP3: the HELLO 3 handshake and its RESP2 fallback, RESP3 values, pub/sub.

Pub/sub runs against both front ends and against redis-server, the same test for each.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from clients import AsyncClient, Client
from clients._core import Message
from clients.errors import ReplyError
from server.protocol.reply import SetReply
from tests.client_fixtures import RedisServer
from tests.support import ServerProcess

#: Seconds any wait here may take before the test fails.
WAIT = 10.0


@pytest.fixture(scope="module")
def async_server() -> Iterator[ServerProcess]:
    process = ServerProcess("async", "pool")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ServerProcess]:
    process = ServerProcess("threaded", "pool")
    yield process
    process.stop()


@pytest.fixture(params=["async", "threaded", "redis"])
def endpoint(request: pytest.FixtureRequest) -> tuple[str, int]:
    """crossdock's two front ends, and redis-server."""
    fixture = {"async": "async_server", "threaded": "threaded_server", "redis": "redis_server"}[request.param]
    server: ServerProcess | RedisServer = request.getfixturevalue(fixture)
    return server.host, server.port


class Resp2OnlyServer:
    """A server that answers HELLO with NOPROTO (a RESP2-only server) and every other line with +PONG."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            buffered = b""
            while data := conn.recv(65536):
                buffered += data
                while b"\r\n" in buffered:  # one request is one line here: "*N", "$len" and the words
                    request, buffered = self._take_request(buffered)
                    if request is None:
                        break
                    self.seen.append(request[0].upper())
                    hello = request[0].upper() == b"HELLO"
                    conn.sendall(b"-NOPROTO unsupported protocol version\r\n" if hello else b"+PONG\r\n")

    @staticmethod
    def _take_request(buffered: bytes) -> tuple[list[bytes] | None, bytes]:
        lines = buffered.split(b"\r\n")
        count = int(lines[0][1:])
        if len(lines) < 1 + 2 * count + 1:
            return None, buffered
        words = lines[2 : 2 + 2 * count : 2]
        rest = b"\r\n".join(lines[1 + 2 * count :])
        return words, rest

    def close(self) -> None:
        self.listener.close()


def test_sync_client_speaks_resp3_by_default(async_server: ServerProcess) -> None:
    with Client(async_server.host, async_server.port, timeout=WAIT) as client:
        assert client.protocol == 3
        assert client.execute("GET", "own3:missing") is None
        assert list(client.execute("CONFIG", "GET", "maxclients")) == [b"maxclients"]  # a map in RESP3
        info = client.execute("CLIENT", "INFO")
        assert b" resp=3 " in info
        assert isinstance(client.execute("COMMAND", "INFO", "get")[0][2], SetReply)
    with Client(async_server.host, async_server.port, timeout=WAIT, protocol=2) as client:
        assert client.protocol == 2 and b" resp=2 " in client.execute("CLIENT", "INFO")


def test_a_server_refusing_hello_3_gets_resp2_quietly() -> None:
    server = Resp2OnlyServer()
    try:
        with Client("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.protocol == 2
            assert client.execute("PING") == "PONG"
        assert server.seen == [b"HELLO", b"PING"]
    finally:
        server.close()


def test_async_client_falls_back_too() -> None:
    server = Resp2OnlyServer()

    async def main() -> None:
        async with AsyncClient("127.0.0.1", server.port, timeout=WAIT) as client:
            assert client.protocol == 2
            assert await client.execute("PING") == "PONG"

    try:
        asyncio.run(main())
    finally:
        server.close()


def test_protocol_must_be_2_or_3() -> None:
    with pytest.raises(ValueError, match="protocol must be 2 or 3"):
        Client(protocol=4)


@pytest.mark.parametrize("protocol", [3, 2])
def test_sync_pubsub(endpoint: tuple[str, int], protocol: int) -> None:
    host, port = endpoint
    channel = f"own3:{uuid.uuid4().hex}"
    with Client(host, port, timeout=WAIT, protocol=protocol) as sub, Client(host, port, timeout=WAIT) as pub:
        assert sub.subscribe(channel, channel + ":b") == 2
        assert sub.psubscribe(channel + ":*") == 3
        assert pub.execute("PUBLISH", channel + ":b", "one") == 2
        assert pub.execute("PUBLISH", channel, "two") == 1
        assert sub.get_message(timeout=WAIT) == Message("message", (channel + ":b").encode(), b"one")
        assert sub.get_message(timeout=WAIT) == Message(
            "pmessage", (channel + ":b").encode(), b"one", pattern=(channel + ":*").encode()
        )
        assert sub.get_message(timeout=WAIT) == Message("message", channel.encode(), b"two")
        assert sub.get_message(timeout=0) is None
        if protocol == 3:  # commands between messages: only RESP3 allows them
            assert sub.execute("GET", "own3:missing") is None
        else:
            with pytest.raises(ReplyError, match=re.escape("only (P|S)SUBSCRIBE")):
                sub.execute("GET", "own3:missing")
        pub.execute("PUBLISH", channel, "three")  # arrives before the UNSUBSCRIBE's confirmation
        assert sub.unsubscribe() == 1
        assert sub.punsubscribe() == 0
        assert sub.get_message(timeout=WAIT) == Message("message", channel.encode(), b"three")
        assert sub.execute("PING") == "PONG"


def test_async_pubsub_iterates_messages_while_commands_go_on(endpoint: tuple[str, int]) -> None:
    host, port = endpoint
    channel = f"own3a:{uuid.uuid4().hex}"

    async def main() -> None:
        async with AsyncClient(host, port, timeout=WAIT) as sub, AsyncClient(host, port, timeout=WAIT) as pub:
            assert await sub.subscribe(channel) == 1
            assert await sub.psubscribe(channel + "*") == 2
            with pytest.raises(ReplyError, match="wrong number of arguments"):
                await sub.subscribe()
            received: list[Message] = []

            async def read() -> None:
                async for message in sub.messages():
                    received.append(message)
                    if len(received) == 4:
                        return

            reader = asyncio.create_task(read())
            replies = await asyncio.gather(
                sub.execute("ECHO", "between"),
                pub.execute("PUBLISH", channel, "a"),
                pub.execute("PUBLISH", channel, "b"),
                sub.execute("GET", "own3a:missing"),
            )
            assert replies == [b"between", 2, 2, None]
            await asyncio.wait_for(reader, WAIT)
            assert [(m.kind, m.data) for m in received] == [
                ("message", b"a"), ("pmessage", b"a"), ("message", b"b"), ("pmessage", b"b"),
            ]  # fmt: skip
            assert await sub.subscribe(b"own3a:other", "own3a:other") == 3  # one channel, twice: str or bytes
            assert await sub.unsubscribe() == 1 and await sub.punsubscribe() == 0
            assert await sub.execute("PING") == "PONG"  # every confirmation was awaited: replies still match

    asyncio.run(main())


def test_async_pubsub_needs_resp3(async_server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(async_server.host, async_server.port, protocol=2) as client:
            with pytest.raises(RuntimeError, match="needs RESP3"):
                await client.subscribe("x")

    asyncio.run(main())


def test_execute_refuses_subscription_commands(async_server: ServerProcess) -> None:
    """Their confirmations are pushes (RESP3) or several replies: the subscribe methods read them."""
    with Client(async_server.host, async_server.port, timeout=WAIT) as client:
        for name in ("SUBSCRIBE", b"psubscribe", "Unsubscribe", "PUNSUBSCRIBE"):
            with pytest.raises(ValueError, match="method"):
                client.execute(name, "x")
        assert client.execute("PING") == "PONG"  # nothing was sent


def test_reset_forgets_subscriptions_on_both_sides(endpoint: tuple[str, int]) -> None:
    """After RESET the server has no subscriptions: "unsubscribe from all" then waits for its one confirmation."""
    host, port = endpoint

    async def main() -> None:
        async with AsyncClient(host, port, timeout=WAIT) as client:
            await client.subscribe("own3r:a", "own3r:b")
            assert await client.execute("RESET") == "RESET"
            assert client.protocol == 2  # RESET went back to RESP2: pub/sub refused until HELLO 3
            with pytest.raises(RuntimeError, match="needs RESP3"):
                await client.unsubscribe()
            await client.execute("HELLO", 3)
            assert client.protocol == 3
            assert await client.unsubscribe() == 0
            assert await client.execute("ECHO", "in step") == b"in step"

    asyncio.run(main())
    with Client(host, port, timeout=WAIT, protocol=2) as client:
        client.subscribe("own3r:a", "own3r:b")
        assert client.execute("RESET") == "RESET"
        assert client.unsubscribe() == 0
        assert client.execute("ECHO", "in step") == b"in step"
