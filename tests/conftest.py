"""Shared fixtures: one real server subprocess per mode, reused by the tests of a session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client_fixtures import RedisServer, have_redis_server
from tests.support import MODES, ServerProcess


def _mode_id(mode: tuple[str, str]) -> str:
    return f"{mode[0]}+{mode[1]}"


@pytest.fixture(scope="session", params=MODES, ids=_mode_id)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A running server in each of the four modes. Tests share it: use unique key names."""
    mode, cpu = request.param
    process = ServerProcess(mode, cpu)
    yield process
    process.stop()


@pytest.fixture(scope="session", params=["async", "threaded"])
def front_end(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A running server per front end, cpu commands on the pool (the default for each)."""
    process = ServerProcess(request.param, "pool")
    yield process
    process.stop()


@pytest.fixture
def fresh_server_factory() -> Iterator[object]:
    """Start dedicated servers for tests that stop them or need a clean state; all stopped at teardown."""
    started: list[ServerProcess] = []

    def start(mode: str = "async", cpu: str = "pool", *extra: str) -> ServerProcess:
        process = ServerProcess(mode, cpu, extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server shared by the differential tests (skipped where the binary is missing)."""
    if not have_redis_server():
        pytest.skip("redis-server is not installed")
    process = RedisServer()
    yield process
    process.stop()
