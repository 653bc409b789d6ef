"""crossdock's clients: a blocking client, an asyncio client and its pool, and ``crossdock cli``.

::

    from clients import Client, AsyncClient

    with Client("127.0.0.1", 7379) as c:
        c.execute("PING")                   # -> "PONG"

    async with AsyncClient("127.0.0.1", 7379) as c:
        await c.execute("PRIMES", 1_000)    # -> 168

They speak plain RESP2 through the sans-IO core in :mod:`server.protocol`,
so they work against redis-server as well as crossdock. See docs/clients.md.
"""

from clients._core import DEFAULT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT
from clients.async_client import AsyncClient, AsyncPipeline
from clients.errors import (
    ClientConnectionError,
    ClientError,
    ClientTimeoutError,
    ConnectFailedError,
    ConnectionLostError,
    ReplyError,
)
from clients.pool import AsyncClientPool
from clients.sync_client import Client, Pipeline
from clients.tls import TlsOptions

__all__ = [
    "DEFAULT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "AsyncClient",
    "AsyncClientPool",
    "AsyncPipeline",
    "Client",
    "ClientConnectionError",
    "ClientError",
    "ClientTimeoutError",
    "ConnectFailedError",
    "ConnectionLostError",
    "Pipeline",
    "ReplyError",
    "TlsOptions",
]
