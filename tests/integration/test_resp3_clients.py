"""Clients no one here wrote, with their 2026 defaults (HELLO 3 first): redis-py 8, node-redis, redis-cli -3, hiredis.

Where a client's output can be compared with what it prints against
redis-server 7, it is (redis-cli -3, hiredis's values); elsewhere the test
asserts what the client returned. Pub/sub runs on the asyncio front end,
whose connections have the push hook (the threaded one refuses SUBSCRIBE
until its driver has one: see docs/decisions.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client_fixtures import RedisServer
from tests.integration.test_resp3_protocol import RawSession
from tests.support import ServerProcess

redis = pytest.importorskip("redis")
hiredis = pytest.importorskip("hiredis")

#: Seconds any external client may run before the test fails.
CLIENT_TIMEOUT = 60
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="module", params=["async", "threaded"])
def crossdock_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Each front end in turn: every real client here talks to both."""
    process = ServerProcess(request.param, "pool")
    yield process
    process.stop()


def test_redis_py_defaults_speak_resp3_without_a_warning(front_end: ServerProcess) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # redis-py warns when a server refuses HELLO 3 and it falls back to RESP2
        client = redis.Redis(host=front_end.host, port=front_end.port, socket_timeout=CLIENT_TIMEOUT)
        try:
            assert client.ping() is True
            assert client.client_info()["resp"] == "3"
            assert client.set("rp3:k", "v", ex=100) is True
            assert client.get("rp3:k") == b"v" and client.get("rp3:missing") is None
            assert client.mget("rp3:k", "rp3:missing") == [b"v", None]
            assert client.execute_command("PRIMES", 1000) == 168
            info = client.info()
            assert info["redis_mode"] == "standalone" and info["mode"] == front_end.mode
            assert client.config_get("maxclients") == {"maxclients": str(info["maxclients"])}
            assert {entry["resp"] for entry in client.client_list()} >= {"3"}
            assert set(client.execute_command("COMMAND", "INFO", "get")["get"]["flags"]) == {"readonly", "fast"}
            pipe = client.pipeline(transaction=False)
            for i in range(50):
                pipe.echo(str(i))
            assert pipe.execute() == [str(i).encode() for i in range(50)]
            with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
                client.execute_command("NOSUCH")
        finally:
            client.close()


def test_redis_py_protocol_3_pubsub(crossdock_server: ServerProcess) -> None:
    channel = f"rp3:{uuid.uuid4().hex}"
    client = redis.Redis(
        host=crossdock_server.host,
        port=crossdock_server.port,
        protocol=3,
        decode_responses=True,
        socket_timeout=CLIENT_TIMEOUT,
    )
    pubsub = client.pubsub()
    try:
        assert client.client_info()["resp"] == "3"
        pubsub.subscribe(channel)
        assert pubsub.get_message(timeout=CLIENT_TIMEOUT) == {
            "type": "subscribe", "pattern": None, "channel": channel, "data": 1,
        }  # fmt: skip
        pubsub.psubscribe(channel[:6] + "*")
        assert pubsub.get_message(timeout=CLIENT_TIMEOUT)["type"] == "psubscribe"
        assert client.publish(channel, "hello") == 2
        got = [pubsub.get_message(timeout=CLIENT_TIMEOUT) for _ in range(2)]
        assert got == [
            {"type": "message", "pattern": None, "channel": channel, "data": "hello"},
            {"type": "pmessage", "pattern": channel[:6] + "*", "channel": channel, "data": "hello"},
        ]
        assert client.pubsub_numsub(channel) == [(channel, 1)]
        pubsub.unsubscribe(channel)
        assert pubsub.get_message(timeout=CLIENT_TIMEOUT)["type"] == "unsubscribe"
    finally:
        pubsub.close()
        client.close()


def test_hiredis_reads_crossdock_s_resp3_as_it_reads_redis_s(
    redis_server: RedisServer, front_end: ServerProcess
) -> None:
    key = f"hr3:{uuid.uuid4().hex}"
    commands: list[tuple[object, ...]] = [
        ("SET", key, "v"),
        ("GET", key),
        ("GET", key + ":missing"),
        ("MGET", key, key + ":missing"),
        ("CONFIG", "GET", "no-such-parameter"),
        ("COMMAND", "INFO", "no-such-command"),
        ("CLIENT", "GETNAME"),
        ("INCR", key),
        ("DEL", key),
    ]
    parsed = []
    for host, port in ((redis_server.host, redis_server.port), (front_end.host, front_end.port)):
        session = RawSession(host, port)
        reader = hiredis.Reader()
        values = []
        try:
            session.call("HELLO", "3")
            for command in commands:
                raw, _ = session.call(*command)
                reader.feed(raw)
                values.append(reader.gets())
            raw, _ = session.call("CLIENT", "INFO")
            reader.feed(raw)
            info = reader.gets()
            assert isinstance(info, bytes) and b" resp=3" in info  # a verbatim string, its "txt:" dropped
        finally:
            session.close()
        parsed.append(values)
    theirs, ours = parsed
    assert [repr(value) for value in ours] == [repr(value) for value in theirs]  # errors compare by repr
    assert ours[2] is None and ours[4] == {}


needs_redis_cli = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")


@needs_redis_cli
@pytest.mark.parametrize("output", ["--no-raw", "--raw"])
def test_redis_cli_3_prints_the_same_as_against_redis(
    redis_server: RedisServer, front_end: ServerProcess, output: str
) -> None:
    key = f"cli3:{uuid.uuid4().hex}"
    commands = [
        ["SET", key, "v"],
        ["GET", key],
        ["GET", key + ":missing"],
        ["MGET", key, key + ":missing"],
        ["CONFIG", "GET", "no-such-parameter"],
        ["COMMAND", "INFO", "no-such-command"],
        ["CLIENT", "GETNAME"],
        ["SET", key + ":nx", "v", "NX", "GET"],
        ["EXPIRE", key, "100"],
        ["TTL", key],
        ["PUBSUB", "NUMSUB", key],
        ["PUBLISH", key, "nobody listens"],
        ["NOSUCH", "x"],
    ]

    def cli(port: int, command: list[str]) -> str:
        result = subprocess.run(
            ["redis-cli", "-3", output, "-p", str(port), *command],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
        )
        return result.stdout + result.stderr

    for command in commands:
        assert (command, cli(front_end.port, command)) == (command, cli(redis_server.port, command))
    info = cli(front_end.port, ["CLIENT", "INFO"])
    assert " resp=3 " in info and "lib-name=" in info


def test_node_redis_defaults_with_a_subscriber(crossdock_server: ServerProcess) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "redis").is_dir():
        pytest.skip("node-redis is not installed: run `npm ci` in tests/node (.ci/run does)")
    result = subprocess.run(
        [node, "smoke.mjs", str(crossdock_server.port)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["failures"] == []
    assert seen["ping"] == "PONG" and seen["set"] == "OK" and seen["get"] == "value" and seen["missing"] is None
    assert seen["mget"] == ["value", None] and seen["info"] == "# Server"
    assert " resp=3 " in seen["clientInfo"] and "lib-name=node-redis" in seen["clientInfo"]
    assert seen["configGet"] == {"maxclients": "10000"} or "maxclients" in seen["configGet"]
    assert seen["publish"] == [1, 1]
    assert seen["received"] == [["node:channel", "first"], ["node:channel", "second"]]
    assert seen["numsub"] == ["node:channel", 1] and seen["afterUnsubscribe"] == "PONG"
