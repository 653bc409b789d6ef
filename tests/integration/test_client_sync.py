"""The blocking client against real servers: crossdock (both front ends) and redis-server."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from clients import (
    Client,
    ClientTimeoutError,
    ConnectFailedError,
    ConnectionLostError,
    ReplyError,
)
from server.protocol import cores
from tests.client_fixtures import Endpoint, RedisServer, have_redis_server, slow_command

pytest_plugins = ["tests.client_fixtures"]

#: Seconds any test here may take before pytest-timeout fails it: the slowest
#: waits about two seconds on purpose; the rest is margin for a loaded machine.
pytestmark = pytest.mark.timeout(30)

#: Generous per-command timeout for calls that are expected to succeed, so a
#: hung server fails the test instead of hanging it.
OK_TIMEOUT = 10.0


def connect(endpoint: Endpoint, **kwargs: object) -> Client:
    kwargs.setdefault("timeout", OK_TIMEOUT)
    return Client(endpoint.host, endpoint.port, **kwargs)  # type: ignore[arg-type]


def test_common_commands_and_reply_types(endpoint: Endpoint, key: str) -> None:
    with connect(endpoint) as c:
        assert c.execute("PING") == "PONG"
        assert c.execute("ECHO", "héllo") == "héllo".encode()
        assert c.execute("SET", key, "v") == "OK"
        assert c.execute("GET", key) == b"v"
        assert c.execute("GET", f"{key}:missing") is None
        assert c.execute("INCR", f"{key}:n") == 1
        assert c.execute("INCR", f"{key}:n") == 2
        assert c.execute("EXISTS", key, f"{key}:n", f"{key}:missing") == 2
        assert c.execute("DEL", key, f"{key}:n") == 2
        assert c.execute("SET", key, 1.5) == "OK"
        assert c.execute("GET", key) == b"1.5"
        time_reply = c.execute("TIME")
        assert isinstance(time_reply, list) and len(time_reply) == 2 and int(time_reply[0]) > 1_600_000_000


def test_decode_returns_str(endpoint: Endpoint, key: str) -> None:
    with connect(endpoint, decode=True) as c:
        c.execute("SET", key, "héllo")
        assert c.execute("GET", key) == "héllo"
        assert c.execute("PING") == "PONG"


def test_binary_safe_round_trip(endpoint: Endpoint, key: str) -> None:
    value = bytes(range(256)) * 4 + b"\r\n$-1\r\n*3\r\n"
    with connect(endpoint) as c:
        c.execute("SET", key, value)
        assert c.execute("GET", key) == value


def test_error_reply_is_raised_with_its_code_and_the_connection_survives(endpoint: Endpoint) -> None:
    with connect(endpoint) as c:
        with pytest.raises(ReplyError) as info:
            c.execute("NOSUCHCOMMAND", "a")
        assert info.value.code == "ERR"
        assert str(info.value).startswith("ERR unknown command")
        with pytest.raises(ReplyError, match="wrong number of arguments"):
            c.execute("GET")
        assert c.execute("PING") == "PONG"


def test_bad_argument_type_is_refused_before_sending(endpoint: Endpoint) -> None:
    with connect(endpoint) as c:
        with pytest.raises(TypeError):
            c.execute("ECHO", object())
        with pytest.raises(TypeError):
            c.execute("ECHO", True)
        assert c.execute("ECHO", "still in sync") == b"still in sync"


def test_pipeline_replies_in_order_with_errors_as_values(endpoint: Endpoint, key: str) -> None:
    with connect(endpoint) as c:
        with c.pipeline() as p:
            for i in range(1000):
                p.execute("ECHO", i)
        assert p.results == [str(i).encode() for i in range(1000)]

        with c.pipeline() as p:
            p.execute("SET", key, "1")
            bad = p.execute("NOSUCHCOMMAND")
            p.execute("INCR", key)
        assert p.results[0] == "OK" and p.results[2] == 2
        assert isinstance(p.results[bad], ReplyError) and p.results[bad].code == "ERR"
        assert c.execute("PING") == "PONG"


def test_pipeline_sends_nothing_when_the_block_raises(endpoint: Endpoint, key: str) -> None:
    with connect(endpoint) as c:
        with pytest.raises(RuntimeError), c.pipeline() as p:
            p.execute("SET", key, "should-not-be-set")
            raise RuntimeError("abandon")
        assert p.results == []
        assert c.execute("GET", key) is None


def test_pipeline_far_bigger_than_socket_buffers_does_not_deadlock(endpoint: Endpoint, key: str) -> None:
    # ~8 MiB each way: far past the kernel's buffers, so writes and reads must interleave.
    value = b"x" * 8192
    with connect(endpoint, timeout=60) as c:
        with c.pipeline() as p:
            for _ in range(1000):
                p.execute("ECHO", value)
        assert len(p.results) == 1000 and all(r == value for r in p.results)


def test_timeout_then_next_call_gets_its_own_reply(endpoint: Endpoint, key: str) -> None:
    with connect(endpoint) as c:
        started = time.monotonic()
        with pytest.raises(ClientTimeoutError):
            c.execute(*slow_command(endpoint, 1.0, key), timeout=0.2)
        assert time.monotonic() - started < 0.9
        with pytest.raises(TimeoutError):  # also a builtin TimeoutError
            c.execute(*slow_command(endpoint, 0.5, key), timeout=0.1)
        # Both late replies are drained and dropped; this call gets its own.
        assert c.execute("ECHO", "mine", timeout=OK_TIMEOUT) == b"mine"
        assert c.execute("PING") == "PONG"


def test_timeout_of_a_pipeline_keeps_later_replies_matched(endpoint: Endpoint, key: str) -> None:
    with connect(endpoint) as c:
        with pytest.raises(ClientTimeoutError), c.pipeline(timeout=0.2) as p:
            p.execute("ECHO", "first")
            p.execute(*slow_command(endpoint, 0.8, key))
            p.execute("ECHO", "third")
        assert p.results == []
        assert c.execute("ECHO", "after") == b"after"


def test_connection_refused_is_connect_failed() -> None:
    with socket_port_closed() as port, pytest.raises(ConnectFailedError) as info:
        Client("127.0.0.1", port, connect_timeout=2)
    assert isinstance(info.value, ConnectionError)


def test_server_closing_the_connection_is_connection_lost(endpoint: Endpoint) -> None:
    c = connect(endpoint)
    assert c.execute("QUIT") == "OK"
    with pytest.raises(ConnectionLostError):
        c.execute("PING")
    assert c.closed
    with pytest.raises(ConnectionLostError):  # and it stays closed
        c.execute("PING")


def test_closed_client_raises_connection_lost(endpoint: Endpoint) -> None:
    c = connect(endpoint)
    c.close()
    c.close()  # idempotent
    with pytest.raises(ConnectionLostError, match="closed"):
        c.execute("PING")


def test_one_client_shared_by_threads_keeps_replies_matched(endpoint: Endpoint, key: str) -> None:
    errors: list[str] = []
    with connect(endpoint) as c:

        def worker(n: int) -> None:
            for i in range(100):
                token = f"{n}:{i}"
                got = c.execute("ECHO", token)
                if got != token.encode():
                    errors.append(f"{token} got {got!r}")
                c.execute("INCR", key)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert errors == []
        assert c.execute("GET", key) == b"800"


def test_crossdock_cpu_commands(crossdock_endpoint: Endpoint) -> None:
    with connect(crossdock_endpoint) as c:
        assert c.execute("FACTOR", 360) == [2, 2, 2, 3, 3, 5]
        assert c.execute("PRIMES", 100) == 25
        with pytest.raises(ReplyError) as info:
            c.execute("PRIMES", -1)
        assert info.value.code == "ERR"


@pytest.mark.skipif(not have_redis_server(), reason="redis-server is not installed")
def test_auth_against_redis_requirepass() -> None:
    server = RedisServer("--requirepass", "s3cret")
    try:
        with Client(server.host, server.port, password="s3cret", timeout=OK_TIMEOUT) as c:
            assert c.execute("PING") == "PONG"
        with pytest.raises(ReplyError) as info:
            Client(server.host, server.port, password="wrong")
        assert info.value.code in ("WRONGPASS", "ERR")
        with Client(server.host, server.port, timeout=OK_TIMEOUT) as c:
            with pytest.raises(ReplyError) as info:
                c.execute("GET", "k")
            assert info.value.code == "NOAUTH"
    finally:
        server.stop()


class socket_port_closed:
    """A port on 127.0.0.1 that nothing listens on (bound, never listening, so it stays ours)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_interrupted_call_keeps_later_replies_matched(endpoint: Endpoint, key: str) -> None:
    # A signal handler raising mid-call (what Ctrl-C does) must leave the connection in step.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with connect(endpoint) as c:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                c.execute(*slow_command(endpoint, 0.6, key))
            assert c.execute("ECHO", "mine") == b"mine"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("core", list(cores.AVAILABLE))
def test_both_parser_backends(endpoint: Endpoint, key: str, core: str) -> None:
    # Long pipelined runs of replies and short ones, through each parser core built here.
    with connect(endpoint, core=core) as c:
        with c.pipeline() as p:
            for i in range(300):
                p.execute("ECHO", f"{i}" * 10)
            p.execute("PING")
            p.execute("NOSUCHCOMMAND")
        assert p.results[:300] == [f"{i}".encode() * 10 for i in range(300)]
        assert p.results[300] == "PONG" and isinstance(p.results[301], ReplyError)
        assert c.execute("ECHO", b"x" * 100_000) == b"x" * 100_000
