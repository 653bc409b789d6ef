"""crossdock: a RESP2 TCP server with an asyncio front end, a process pool and a threaded legacy mode."""

__version__ = "0.1.0"
