"""AsyncClientPool against real servers: spreading load, least busy choice, replacing lost connections."""

from __future__ import annotations

import asyncio
import time

import pytest

from clients import AsyncClientPool, ConnectFailedError, ConnectionLostError, ReplyError
from tests.client_fixtures import Endpoint, slow_command

pytest_plugins = ["tests.client_fixtures"]

#: Seconds any test here may take before pytest-timeout fails it.
pytestmark = pytest.mark.timeout(30)

OK_TIMEOUT = 10.0


def pool(endpoint: Endpoint, size: int = 4) -> AsyncClientPool:
    return AsyncClientPool(endpoint.host, endpoint.port, size=size, timeout=OK_TIMEOUT)


async def test_pool_runs_commands_and_pipelines(endpoint: Endpoint, key: str) -> None:
    async with pool(endpoint) as p:
        assert await p.execute("PING") == "PONG"
        counts = await asyncio.gather(*(p.execute("INCR", key) for _ in range(400)))
        assert sorted(counts) == list(range(1, 401))
        async with p.pipeline() as pipe:
            for i in range(100):
                pipe.execute("ECHO", i)
            pipe.execute("NOSUCHCOMMAND")
        assert pipe.results[:100] == [str(i).encode() for i in range(100)]
        assert isinstance(pipe.results[100], ReplyError)


async def test_slow_commands_run_side_by_side_on_separate_connections(endpoint: Endpoint, key: str) -> None:
    # One connection answers in order, so 4 x 0.5 s there takes 2 s; a pool of 4 takes about 0.5 s.
    async with pool(endpoint, size=4) as p:
        started = time.monotonic()
        await asyncio.gather(*(p.execute(*slow_command(endpoint, 0.5, f"{key}:{i}")) for i in range(4)))
        assert time.monotonic() - started < 1.5


async def test_least_busy_connection_is_chosen(endpoint: Endpoint, key: str) -> None:
    async with pool(endpoint, size=3) as p:
        slow = asyncio.create_task(p.execute(*slow_command(endpoint, 0.5, key)))
        await asyncio.sleep(0.05)
        busy = [c for c in p._clients if c.in_flight]
        assert len(busy) == 1
        for _ in range(6):  # every pick avoids the busy connection
            assert (await p.acquire()).in_flight == 0
        await slow


async def test_lost_connection_is_replaced(endpoint: Endpoint) -> None:
    async with pool(endpoint, size=2) as p:
        victim = await p.acquire()
        assert await victim.execute("QUIT") == "OK"
        for _ in range(100):
            if victim.closed:
                break
            await asyncio.sleep(0.01)
        assert victim.closed
        # Calls keep working on the other connection while the lost one is replaced.
        assert await asyncio.gather(*(p.execute("PING") for _ in range(20))) == ["PONG"] * 20
        for _ in range(200):
            if all(c.connected for c in p._clients) and victim not in p._clients:
                break
            await asyncio.sleep(0.01)
        assert all(c.connected for c in p._clients) and victim not in p._clients


async def test_closed_pool_refuses_calls(endpoint: Endpoint) -> None:
    p = pool(endpoint, size=2)
    await p.connect()
    await p.close()
    with pytest.raises(ConnectionLostError):
        await p.execute("PING")


async def test_pool_connect_failure_raises() -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(ConnectFailedError):
            await AsyncClientPool("127.0.0.1", port, size=3, connect_timeout=2).connect()


def test_pool_size_is_bounded() -> None:
    with pytest.raises(ValueError):
        AsyncClientPool(size=0)
    with pytest.raises(ValueError):
        AsyncClientPool(size=100_000)
