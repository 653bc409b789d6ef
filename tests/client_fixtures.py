"""Servers for the client tests: crossdock in both front ends, and a real redis-server when installed.

Loaded by the client test modules with ``pytest_plugins`` (fixtures only,
no tests here). Every server is a real subprocess on 127.0.0.1 and a free
port; nothing is mocked. redis-server proves the clients speak RESP2 as Redis
does, not just crossdock's dialect; its tests are skipped when it is not
installed (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import ServerProcess

#: Seconds a redis-server may take to accept connections: it starts in
#: milliseconds; the margin is for a loaded CI machine.
REDIS_STARTUP_TIMEOUT = 10.0

#: Tries at binding redis-server to a port found free a moment before
#: (another process may take it in between).
REDIS_PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class Endpoint:
    """A server to run a client test against."""

    kind: str  # "crossdock" or "redis"
    mode: str  # "async" / "threaded" for crossdock, "redis" for redis-server
    host: str
    port: int

    @property
    def is_crossdock(self) -> bool:
        return self.kind == "crossdock"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_accepting(port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                conn.settimeout(2)
                data = conn.recv(64)
                # "+PONG", or "-NOAUTH" when a password is required: either way redis is up.
                if data.startswith((b"+PONG", b"-NOAUTH")):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence, in a temporary directory."""

    def __init__(self, *extra: str) -> None:
        self.host = "127.0.0.1"
        self._dir = tempfile.TemporaryDirectory(prefix="crossdock-redis-")
        for _ in range(REDIS_PORT_ATTEMPTS):
            self.port = _free_port()
            command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            command += ["--save", "", "--appendonly", "no", "--dir", self._dir.name, *extra]
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            if _wait_accepting(self.port, self.proc, time.monotonic() + REDIS_STARTUP_TIMEOUT):
                return
            self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


class _Servers:
    """Servers started on first use and shared by the session, so each mode runs once."""

    def __init__(self) -> None:
        self._crossdock: dict[str, ServerProcess] = {}
        self._redis: RedisServer | None = None

    def crossdock(self, mode: str) -> Endpoint:
        if mode not in self._crossdock:
            self._crossdock[mode] = ServerProcess(mode, "pool")
        process = self._crossdock[mode]
        return Endpoint("crossdock", mode, process.host, process.port)

    def redis(self) -> Endpoint:
        if not have_redis_server():
            pytest.skip("redis-server is not installed")
        if self._redis is None:
            self._redis = RedisServer()
        return Endpoint("redis", "redis", self._redis.host, self._redis.port)

    def stop(self) -> None:
        for process in self._crossdock.values():
            process.stop()
        if self._redis is not None:
            self._redis.stop()


@pytest.fixture(scope="session")
def client_servers() -> Iterator[_Servers]:
    servers = _Servers()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def redis_endpoint(client_servers: _Servers) -> Endpoint:
    """A real redis-server (skipped when not installed)."""
    return client_servers.redis()


@pytest.fixture(scope="session", params=["async", "threaded"])
def crossdock_endpoint(request: pytest.FixtureRequest, client_servers: _Servers) -> Endpoint:
    """crossdock in each front end (cpu commands on the pool)."""
    return client_servers.crossdock(request.param)


@pytest.fixture(scope="session", params=["crossdock-async", "crossdock-threaded", "redis"])
def endpoint(request: pytest.FixtureRequest, client_servers: _Servers) -> Endpoint:
    """Every server the clients must work with: crossdock's two front ends, and redis-server."""
    if request.param == "redis":
        return client_servers.redis()
    return client_servers.crossdock(request.param.removeprefix("crossdock-"))


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key name unique to the test (servers are shared by the whole session)."""
    return f"clienttest:{request.node.nodeid}:{os.getpid()}"


def slow_command(endpoint: Endpoint, seconds: float, key: str) -> tuple[object, ...]:
    """A command whose reply takes ``seconds``: SLEEP on crossdock, BLPOP on an empty list on Redis.

    (Redis 7 refuses DEBUG SLEEP unless started with enable-debug-command.)
    """
    if endpoint.is_crossdock:
        return ("SLEEP", int(seconds * 1000))
    return ("BLPOP", f"{key}:never-pushed", seconds)
