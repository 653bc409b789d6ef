"""A small pool of :class:`~clients.async_client.AsyncClient` connections, least busy first.

::

    from clients import AsyncClientPool

    async with AsyncClientPool("127.0.0.1", 7379, size=4) as pool:
        await asyncio.gather(*(pool.execute("PRIMES", 200_000) for _ in range(8)))

Why a pool when one AsyncClient already multiplexes many tasks: a server
answers each connection's commands one after the other, so on one
connection a slow command (``SLEEP``, ``PRIMES``) holds up every reply
queued behind it (head-of-line blocking). N connections let N slow commands
run at once (in crossdock's process pool, or its N threads), and spread a
load generator's traffic the way N real clients would.

Choice of connection: the one with the fewest requests in flight; ties go
round robin, so an idle pool still uses every connection. A connection that
was lost is replaced in the background, and calls go to the others
meanwhile; only when none is usable does a call wait for a reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
from types import TracebackType
from typing import Any, Final

from clients._core import DEFAULT, DEFAULT_HOST, DEFAULT_PORT, TimeoutArg, resolve_timeout
from clients.async_client import AsyncClient, AsyncPipeline
from clients.errors import ConnectionLostError

#: Connections when not told otherwise: enough that a few slow commands do
#: not stall everything behind them, few enough that a pool per load
#: generator worker does not exhaust a server's connection limit.
DEFAULT_POOL_SIZE: Final = 4

#: Largest pool: each connection is a socket on both sides; past a few
#: hundred, more connections only add server-side work (use several pools
#: or processes to drive thousands of sockets, as the load generator does).
MAX_POOL_SIZE: Final = 1024


class AsyncClientPool:
    """``size`` :class:`AsyncClient` connections to one server, used least busy first.

    Keyword arguments other than ``size`` go to every :class:`AsyncClient`
    (``timeout``, ``connect_timeout``, ``decode``, ``password``, ``tls`` ...).

    Error handling: entering the pool (or :meth:`connect`) opens every
    connection and raises the first connect error, closing the others. A
    command's errors are those of :meth:`AsyncClient.execute`; a command that
    fails with :class:`~clients.errors.ConnectionLostError` is not retried
    (it may have run), but the connection is replaced for later calls. A
    call with no usable connection waits for one reconnect and raises its
    :class:`~clients.errors.ConnectFailedError` if the server is gone.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        size: int = DEFAULT_POOL_SIZE,
        **client_kwargs: Any,
    ) -> None:
        if not 1 <= size <= MAX_POOL_SIZE:
            raise ValueError(f"pool size must be between 1 and {MAX_POOL_SIZE}, not {size}")
        self.host = host
        self.port = port
        self.size = size
        self._client_kwargs = client_kwargs
        self._clients: list[AsyncClient] = []
        self._replacing: dict[int, asyncio.Task[AsyncClient]] = {}
        self._rotation = itertools.count()
        self._closed = False

    def _new_client(self) -> AsyncClient:
        return AsyncClient(self.host, self.port, **self._client_kwargs)

    async def connect(self) -> AsyncClientPool:
        """Open all ``size`` connections concurrently; return ``self``."""
        if self._clients or self._closed:
            raise RuntimeError("an AsyncClientPool connects once; make a new one to reconnect")
        clients = [self._new_client() for _ in range(self.size)]
        results = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(c.close() for c in clients))
            raise errors[0]
        self._clients = clients
        return self

    async def close(self) -> None:
        """Close every connection and stop pending reconnects. Idempotent."""
        self._closed = True
        tasks = list(self._replacing.values())
        self._replacing.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients, self._clients = self._clients, []
        await asyncio.gather(*(c.close() for c in clients))

    async def __aenter__(self) -> AsyncClientPool:
        if not self._clients:
            await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        """Requests in flight over all connections."""
        return sum(c.in_flight for c in self._clients)

    def __repr__(self) -> str:
        return f"<AsyncClientPool {self.host}:{self.port} size={self.size} in_flight={self.in_flight}>"

    async def execute(self, *args: object, timeout: TimeoutArg = DEFAULT) -> Any:
        """Run one command on the least busy connection; see :meth:`AsyncClient.execute`."""
        client = await self.acquire()
        return await client.execute(*args, timeout=timeout)

    def pipeline(self, *, timeout: TimeoutArg = DEFAULT) -> AsyncPipeline:
        """A pipeline sent on one connection, the least busy one at the time it is flushed."""

        async def least_busy() -> tuple[AsyncClient, float | None]:
            client = await self.acquire()
            return client, resolve_timeout(timeout, client.timeout)

        return AsyncPipeline(least_busy)

    async def acquire(self) -> AsyncClient:
        """The least busy usable connection, for a caller that wants several calls on the same one.

        The connection is not reserved: other calls keep using it too.

        Error handling: :class:`~clients.errors.ConnectionLostError` once
        the pool is closed (or before it is connected);
        :class:`~clients.errors.ConnectFailedError` when no connection is
        usable and reconnecting fails.
        """
        if self._closed or not self._clients:
            raise ConnectionLostError("the pool is closed" if self._closed else "the pool is not connected")
        clients = self._clients
        n = len(clients)
        start = next(self._rotation) % n
        best: AsyncClient | None = None
        for offset in range(n):
            i = (start + offset) % n
            client = clients[i]
            if not client.connected:
                self._start_replacing(i)
                continue
            if best is None or client.in_flight < best.in_flight:
                best = client
                if best.in_flight == 0:
                    break
        if best is not None:
            return best
        # Nothing usable: wait for the first replacement (it raises ConnectFailedError if the server is gone).
        return await asyncio.shield(self._replacing[start])

    def _start_replacing(self, index: int) -> None:
        if index not in self._replacing and not self._closed:
            task = asyncio.get_running_loop().create_task(self._replace(index))
            self._replacing[index] = task
            task.add_done_callback(_consume_exception)

    async def _replace(self, index: int) -> AsyncClient:
        try:
            old = self._clients[index]
            await old.close()
            client = await self._new_client().connect()
            if self._closed:
                await client.close()
                raise ConnectionLostError("the pool is closed")
            self._clients[index] = client
            return client
        finally:
            self._replacing.pop(index, None)


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """A failed background reconnect is reported to the caller waiting on it, if any; never logged twice."""
    if not task.cancelled():
        task.exception()


__all__ = ["DEFAULT_POOL_SIZE", "MAX_POOL_SIZE", "AsyncClientPool"]
