"""crossdock: a RESP TCP server with an asyncio front end, a process pool and a threaded legacy mode."""

__version__ = "0.1.0"

#: The Redis version crossdock reports in INFO/HELLO. Clients gate features on
#: it (redis-cli asks COMMAND DOCS only from 7.0 on); 7.0.0 is the dialect of
#: the commands implemented here, in RESP2 and RESP3.
REDIS_COMPAT_VERSION = "7.0.0"

# The per-request path is compiled where it was built (setup.py): choose that core or the pure one now, before any
# module of it is imported, so every import of them gets the chosen one (server.protocol.cores).
from server.protocol import cores as _cores  # noqa: E402, F401
