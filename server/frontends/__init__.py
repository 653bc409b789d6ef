"""The front ends: the asyncio driver (aio), the threaded driver (threaded), the lifecycle both share (start-up,
signals, graceful shutdown), TLS set-up and the --reuseport supervisor. Drivers only move bytes and time between the
operating system and the connection core (server.connection); the policy lives there.
"""
