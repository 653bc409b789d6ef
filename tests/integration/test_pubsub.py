"""Pub/sub against redis-server 7: the same conversations on both, the same bytes to every client.

A conversation is a list of steps ``(client, command)``. After each step
every client is probed with ``PING`` and read up to the probe's reply
(``+PONG``, or ``pong`` as an array in RESP2 subscribed mode), so whatever a
step delivered to a client (its replies, messages pushed to it) is read
without waiting on a clock, and compared byte for byte with what
redis-server sent the same client. Messages reach a subscriber before the
probe's reply because the publisher's reply was read first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from server.protocol import SimpleString, encode_command
from tests.client_fixtures import RedisServer
from tests.integration.test_resp3_protocol import RawSession
from tests.support import ServerProcess

#: Steps whose replies hold what cannot be equal (a client id, the version): run, not compared.
UNCOMPARED = {"HELLO"}


def _probe_reply(value: Any) -> bool:
    return value == SimpleString("PONG") or value == [b"pong", b""]


def run(host: str, port: int, clients: int, steps: list[tuple[int, tuple[object, ...]]]) -> list[bytes]:
    """Play ``steps``; return, per step and client, every byte that client received."""
    sessions = [RawSession(host, port) for _ in range(clients)]
    seen: list[bytes] = []
    try:
        for who, command in steps:
            sessions[who].sock.sendall(_encode(command))
            for index in [who] + [i for i in range(clients) if i != who]:
                session = sessions[index]
                session.sock.sendall(_encode(("PING",)))
                received = b""
                # The probe's reply ends the read; a bare PING step's own reply looks the same, so it takes two.
                wanted = 2 if index == who and command == ("PING",) else 1
                while wanted:
                    try:
                        raw, value = session.reply()
                    except (ConnectionError, OSError):
                        received += b"(closed)"
                        break
                    received += raw
                    wanted -= _probe_reply(value)
                if str(command[0]).upper() in UNCOMPARED and index == who:
                    received = b"(not compared)"
                seen.append(received)
    finally:
        for session in sessions:
            session.close()
    return seen


def _encode(command: tuple[object, ...]) -> bytes:
    return encode_command(*command)


@pytest.fixture
def prefix() -> str:
    return f"ps:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(params=["async", "threaded"])
def crossdock(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Each front end, cpu inline (no cpu command here): the same conversation must give the same bytes."""
    process = ServerProcess(request.param, "inline")
    yield process
    process.stop()


def resp2_steps(p: str) -> list[tuple[int, tuple[object, ...]]]:
    return [
        (0, ("SUBSCRIBE", p + "a", p + "b")),
        (0, ("PING", "hi")),
        (0, ("GET", p + "k")),
        (0, ("CLIENT", "ID")),
        (0, ("HELLO", "3")),
        (0, ("NO-SUCH-COMMAND",)),
        (0, ("GET",)),
        (0, ("PSUBSCRIBE", p + "a*")),
        (0, ("SUBSCRIBE", p + "a")),
        (1, ("PUBLISH", p + "a", "m1")),
        (1, ("PUBLISH", p + "zz", "m2")),
        (1, ("PUBLISH", p + "b", "")),
        (1, ("PUBSUB", "NUMSUB", p + "a", p + "b", p + "zz")),
        (1, ("PUBSUB", "CHANNELS", p + "b*")),  # one match: Redis lists channels in hash order
        (1, ("PUBSUB", "CHANNELS", p + "[a]")),
        (1, ("PUBSUB", "CHANNELS", p + "?x")),
        (0, ("UNSUBSCRIBE", p + "a")),
        (1, ("PUBLISH", p + "a", "m3")),
        (0, ("UNSUBSCRIBE",)),
        (0, ("PUNSUBSCRIBE",)),
        (0, ("PUNSUBSCRIBE",)),
        (0, ("UNSUBSCRIBE", p + "never")),
        (0, ("GET", p + "k")),
        (0, ("SUBSCRIBE", p + "c")),
        (0, ("RESET",)),
        (1, ("PUBLISH", p + "c", "after reset")),
        (0, ("GET", p + "k")),
        (1, ("PUBSUB", "NUMPAT", "x")),
        (1, ("PUBSUB", "CHANNELS", "a", "b")),
        (1, ("PUBSUB", "NOPE")),
        (1, ("PUBSUB", "HELP", "x")),
        (1, ("SUBSCRIBE",)),
        (1, ("PUBLISH", "a")),
        (0, ("QUIT",)),
    ]


def resp3_steps(p: str) -> list[tuple[int, tuple[object, ...]]]:
    return [
        (0, ("HELLO", "3")),
        (0, ("SUBSCRIBE", p + "a")),
        (0, ("SET", p + "k", "v")),
        (0, ("GET", p + "k")),
        (1, ("PUBLISH", p + "a", "m1")),
        (0, ("PUBLISH", p + "a", "to myself")),
        (0, ("PSUBSCRIBE", p + "*")),
        (1, ("PUBLISH", p + "a", "twice")),
        (0, ("UNSUBSCRIBE",)),
        (0, ("PUNSUBSCRIBE", p + "*", p + "other")),
        (0, ("PUNSUBSCRIBE",)),
        (0, ("SUBSCRIBE", p + "b")),
        (0, ("HELLO", "2")),
        (0, ("GET", p + "k")),
        (1, ("PUBLISH", p + "b", "now in RESP2")),
        (0, ("RESET",)),
        (0, ("GET", p + "nokey")),
    ]


@pytest.mark.parametrize("steps", [resp2_steps, resp3_steps], ids=["resp2", "resp3"])
def test_pubsub_conversations_match_redis(
    redis_server: RedisServer, crossdock: ServerProcess, prefix: str, steps: Any
) -> None:
    expected = run(redis_server.host, redis_server.port, 2, steps(prefix))
    got = run(crossdock.host, crossdock.port, 2, steps(prefix))
    for step, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert (step // 2, step % 2, mine) == (step // 2, step % 2, theirs)
