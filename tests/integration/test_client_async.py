"""The asyncio client against real servers: matching under concurrency, cancellation, timeouts, loss."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from clients import (
    AsyncClient,
    ClientTimeoutError,
    ConnectFailedError,
    ConnectionLostError,
    ReplyError,
)
from tests.client_fixtures import Endpoint, slow_command
from tests.support import ServerProcess

pytest_plugins = ["tests.client_fixtures"]

#: Seconds any test here may take before pytest-timeout fails it (the slowest waits ~2 s on purpose).
pytestmark = pytest.mark.timeout(30)

#: Per-command timeout for calls expected to succeed: a hung server fails the test, never hangs it.
OK_TIMEOUT = 10.0


def client(endpoint: Endpoint, **kwargs: object) -> AsyncClient:
    kwargs.setdefault("timeout", OK_TIMEOUT)
    return AsyncClient(endpoint.host, endpoint.port, **kwargs)  # type: ignore[arg-type]


async def test_common_commands(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        assert await c.execute("PING") == "PONG"
        assert await c.execute("SET", key, "v") == "OK"
        assert await c.execute("GET", key) == b"v"
        assert await c.execute("GET", f"{key}:missing") is None
        assert await c.execute("DEL", key) == 1
    async with client(endpoint, decode=True) as c:
        assert await c.execute("ECHO", "héllo") == "héllo"


async def test_error_reply_raised_and_connection_survives(endpoint: Endpoint) -> None:
    async with client(endpoint) as c:
        with pytest.raises(ReplyError) as info:
            await c.execute("NOSUCHCOMMAND")
        assert info.value.code == "ERR"
        assert await c.execute("PING") == "PONG"


async def test_gathered_calls_on_one_connection_are_matched_and_ordered(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        counts = await asyncio.gather(*(c.execute("INCR", key) for _ in range(1000)))
        assert sorted(counts) == list(range(1, 1001))
        assert counts == list(range(1, 1001))  # gather starts them in order, one connection keeps it
        echoes = await asyncio.gather(*(c.execute("ECHO", f"token-{i}") for i in range(1000)))
        assert echoes == [f"token-{i}".encode() for i in range(1000)]


async def test_pipeline(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        async with c.pipeline() as p:
            for i in range(500):
                p.execute("ECHO", i)
            bad = p.execute("NOSUCHCOMMAND")
        assert p.results[:500] == [str(i).encode() for i in range(500)]
        assert isinstance(p.results[bad], ReplyError)
        async with c.pipeline() as p2:
            p2.execute("SET", key, "x")
        assert p2.results == ["OK"]


async def test_cancelled_call_never_hands_its_reply_to_the_next_caller(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        slow = asyncio.create_task(c.execute(*slow_command(endpoint, 0.5, key)))
        await asyncio.sleep(0.1)  # the request is on the wire
        assert c.in_flight == 1
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The slow reply arrives first on the wire; it must be dropped, not given to this call.
        assert await c.execute("ECHO", "mine") == b"mine"
        assert c.in_flight == 0


async def test_cancellation_while_others_wait_behind(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        slow = asyncio.create_task(c.execute(*slow_command(endpoint, 0.5, key)))
        await asyncio.sleep(0.05)
        behind = [asyncio.create_task(c.execute("ECHO", f"b{i}")) for i in range(20)]
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await asyncio.gather(*behind) == [f"b{i}".encode() for i in range(20)]


async def test_timeout_then_next_call_gets_its_own_reply(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        started = time.monotonic()
        with pytest.raises(ClientTimeoutError):
            await c.execute(*slow_command(endpoint, 1.0, key), timeout=0.2)
        assert time.monotonic() - started < 0.9
        with pytest.raises(TimeoutError):
            await c.execute(*slow_command(endpoint, 0.5, key), timeout=0.1)
        assert await c.execute("ECHO", "mine") == b"mine"


async def test_wait_for_cancellation_storm_keeps_every_reply_matched(endpoint: Endpoint) -> None:
    # Many callers, a random third of them cancelled at random points: every survivor gets its own reply.
    rng = random.Random(2023_28858)
    async with client(endpoint) as c:

        async def call(i: int) -> tuple[int, bytes]:
            return i, await c.execute("ECHO", f"v{i}")

        tasks = [asyncio.create_task(call(i)) for i in range(600)]
        for _ in range(4):  # the first round hits tasks that have not even sent their request yet
            for task in rng.sample(tasks, 50):
                task.cancel()
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        survivors = [r for r in results if isinstance(r, tuple)]
        assert survivors, "some calls must survive"
        for i, reply in survivors:
            assert reply == f"v{i}".encode()
        assert await c.execute("ECHO", "last") == b"last"
        assert c.in_flight == 0


async def test_pipeline_timeout_keeps_later_replies_matched(endpoint: Endpoint, key: str) -> None:
    async with client(endpoint) as c:
        with pytest.raises(ClientTimeoutError):
            async with c.pipeline(timeout=0.2) as p:
                p.execute("ECHO", "first")
                p.execute(*slow_command(endpoint, 0.6, key))
                p.execute("ECHO", "third")
        assert await c.execute("ECHO", "after") == b"after"


async def test_many_large_writes_respect_backpressure(endpoint: Endpoint, key: str) -> None:
    value = b"v" * 100_000
    async with client(endpoint, timeout=60) as c:
        replies = await asyncio.gather(*(c.execute("SET", f"{key}:{i}", value) for i in range(100)))
        assert replies == ["OK"] * 100
        assert await c.execute("GET", f"{key}:99") == value
        await c.execute("DEL", *(f"{key}:{i}" for i in range(100)))


async def test_not_connected_and_closed_raise_connection_lost(endpoint: Endpoint) -> None:
    c = client(endpoint)
    with pytest.raises(ConnectionLostError, match="not connected"):
        await c.execute("PING")
    await c.connect()
    assert await c.execute("PING") == "PONG"
    await c.close()
    await c.close()
    with pytest.raises(ConnectionLostError, match="closed"):
        await c.execute("PING")


async def test_connect_refused() -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(ConnectFailedError):
            await AsyncClient("127.0.0.1", port, connect_timeout=2).connect()


async def test_quit_closes_and_later_calls_fail(endpoint: Endpoint) -> None:
    async with client(endpoint) as c:
        assert await c.execute("QUIT") == "OK"
        with pytest.raises(ConnectionLostError):
            for _ in range(50):  # the close may take a loop turn to be noticed
                await c.execute("PING")
                await asyncio.sleep(0.01)
        assert c.closed


async def test_in_flight_calls_fail_when_the_server_dies() -> None:
    process = ServerProcess("async", "pool")
    try:
        async with AsyncClient(process.host, process.port, timeout=OK_TIMEOUT) as c:
            waiting = [asyncio.create_task(c.execute("SLEEP", 5000)) for _ in range(3)]
            await asyncio.sleep(0.2)
            process.proc.kill()
            for task in waiting:
                with pytest.raises(ConnectionLostError):
                    await task
            with pytest.raises(ConnectionLostError):
                await c.execute("PING")
    finally:
        process.stop()


def test_runs_on_uvloop_and_on_the_default_loop(endpoint: Endpoint, key: str) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[int]:
        async with client(endpoint) as c:
            await c.execute("DEL", key)
            return list(await asyncio.gather(*(c.execute("INCR", key) for _ in range(100))))

    for factory in (uvloop.new_event_loop, asyncio.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(scenario()) == list(range(1, 101))
