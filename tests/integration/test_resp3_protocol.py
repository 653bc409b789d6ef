"""RESP3, command by command, against redis-server 7: the same requests after ``HELLO 3``, the same bytes back.

Each case opens a raw socket to redis-server and one to each crossdock front
end, sends ``HELLO 3``, then the case's commands one at a time, and compares
the exact reply bytes of each (``EXACT``). Replies whose content cannot be
equal (INFO's figures, client ids, the command table, the version) are
compared by shape instead (``SHAPED``): the same RESP3 type at every level, a
map of crossdock's keys being a subset of Redis's (crossdock leaves some
optional fields out, such as COMMAND DOCS's argument docs).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from server.protocol import NOT_ENOUGH_DATA, ReplyParser, encode_command
from tests.client_fixtures import RedisServer
from tests.support import SOCKET_TIMEOUT, ServerProcess


class RawSession:
    """One connection that sends a command and returns its reply's exact bytes and parsed value."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
        self.parser = ReplyParser()
        self.pending = b""  # bytes received and not yet returned as part of a reply

    def reply(self) -> tuple[bytes, Any]:
        while (value := self.parser.next_reply()) is NOT_ENOUGH_DATA:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.parser.feed(data)
            self.pending += data
        used = len(self.pending) - self.parser.buffered
        raw, self.pending = self.pending[:used], self.pending[used:]
        return raw, value

    def call(self, *args: object) -> tuple[bytes, Any]:
        self.sock.sendall(encode_command(*args))
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sessions(redis_server: RedisServer, front_end: ServerProcess) -> Iterator[tuple[RawSession, RawSession]]:
    """(redis-server, crossdock) connections, both switched to RESP3 with ``HELLO 3``."""
    theirs = RawSession(redis_server.host, redis_server.port)
    ours = RawSession(front_end.host, front_end.port)
    for session in (theirs, ours):
        raw, hello = session.call("HELLO", "3")
        assert raw.startswith(b"%7\r\n") and hello[b"proto"] == 3
    yield theirs, ours
    theirs.close()
    ours.close()


def _cases(key: str) -> list[tuple[object, ...]]:
    missing = key + ":missing"
    return [
        ("PING",),
        ("PING", "hello"),
        ("ECHO", "x"),
        ("GET", missing),
        ("SET", key, "v"),
        ("GET", key),
        ("SET", key, "w", "NX"),
        ("SET", key + ":nx", "v", "NX", "GET"),
        ("SET", key + ":nx", "w", "GET"),
        ("SET", missing, "w", "XX"),
        ("MGET", key, missing, key + ":nx"),
        ("MSET", key + ":a", "1", key + ":b", "2"),
        ("EXISTS", key, missing, key + ":a"),
        ("INCR", key + ":a"),
        ("INCRBY", key + ":a", "10"),
        ("DECR", key + ":a"),
        ("DECRBY", key + ":a", "3"),
        ("INCR", key),
        ("TTL", key),
        ("TTL", missing),
        ("PTTL", missing),
        ("EXPIRE", key, "100"),
        ("TTL", key),
        ("EXPIRE", key, "100", "NX"),
        ("PEXPIRE", missing, "100"),
        ("DEL", key, missing, key + ":a"),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", "resp3-client"),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "NOPE"),
        ("CONFIG", "GET", "no-such-parameter"),
        ("COMMAND", "INFO", "no-such-command"),
        ("COMMAND", "DOCS", "no-such-command"),
        ("HELLO", "4"),
        ("HELLO", "x"),
        ("NO-SUCH-COMMAND", "a"),
        ("GET",),
        ("SLOWLOG", "NOPE"),
    ]


def test_replies_are_the_same_bytes_as_redis(sessions: tuple[RawSession, RawSession]) -> None:
    theirs, ours = sessions
    key = f"resp3:{uuid.uuid4().hex}"
    for command in _cases(key):
        expected, _ = theirs.call(*command)
        got, _ = ours.call(*command)
        assert (command, got) == (command, expected)


def same_shape(ours: Any, theirs: Any) -> bool:
    """The same RESP3 type at every level; maps compared on their common keys, arrays pairwise.

    Maps may differ in keys: crossdock leaves optional fields out (COMMAND DOCS's argument docs) and has a
    subcommand or two Redis 7.0 has not (CLIENT SETINFO is 7.2's).
    """
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, dict):
        common = ours.keys() & theirs.keys()
        return bool(common or not theirs) and all(same_shape(ours[k], theirs[k]) for k in common)
    if isinstance(ours, list):
        return all(same_shape(a, b) for a, b in zip(ours, theirs, strict=False))
    return True


SHAPED = [
    ("HELLO",),
    ("HELLO", "3", "SETNAME", "named"),
    ("HELLO", "3", "AUTH", "default", "anything"),
    ("INFO",),
    ("INFO", "server"),
    ("CLIENT", "INFO"),
    ("CLIENT", "LIST"),
    ("CLIENT", "ID"),
    ("COMMAND", "INFO", "get", "no-such-command"),
    ("COMMAND", "INFO", "client"),
    ("COMMAND", "DOCS", "get"),
    ("COMMAND", "DOCS", "client"),
    ("COMMAND", "COUNT"),
    ("CONFIG", "GET", "maxclients"),
    ("TIME",),
    ("SLOWLOG", "GET"),
    ("SLOWLOG", "LEN"),
]


@pytest.mark.parametrize("command", SHAPED, ids=lambda c: " ".join(c))
def test_replies_have_the_types_redis_sends(sessions: tuple[RawSession, RawSession], command: tuple[str]) -> None:
    theirs, ours = sessions
    if command[0] == "SLOWLOG":  # the shared servers' logs hold what earlier tests left: compare like with like
        theirs.call("SLOWLOG", "RESET")
        ours.call("SLOWLOG", "RESET")
    theirs_raw, expected = theirs.call(*command)
    ours_raw, got = ours.call(*command)
    assert ours_raw[:1] == theirs_raw[:1]
    assert same_shape(got, expected), (got, expected)
    if isinstance(expected, dict) and b"proto" in expected:  # HELLO: the same fields, in the same order
        assert list(got) == list(expected) and got[b"proto"] == 3 and got[b"server"] == b"redis"


def test_client_list_and_info_show_resp3(front_end: ServerProcess) -> None:
    session = RawSession(front_end.host, front_end.port)
    plain = RawSession(front_end.host, front_end.port)
    try:
        session.call("HELLO", "3")
        raw, info = session.call("CLIENT", "INFO")
        assert raw.startswith(b"=") and b" resp=3 " in info
        _, my_id = session.call("CLIENT", "ID")
        _, plain_id = plain.call("CLIENT", "ID")
        _, listing = plain.call("CLIENT", "LIST")
        assert isinstance(listing, bytes)
        lines = {line.split(b" ", 1)[0]: line for line in listing.splitlines()}
        assert b" resp=3 " in lines[b"id=%d" % my_id] and b" resp=2 " in lines[b"id=%d" % plain_id]
    finally:
        session.close()
        plain.close()


def test_hello_2_goes_back_and_other_connections_stay_resp2(
    redis_server: RedisServer, front_end: ServerProcess
) -> None:
    for host, port in ((redis_server.host, redis_server.port), (front_end.host, front_end.port)):
        session = RawSession(host, port)
        other = RawSession(host, port)
        try:
            assert session.call("HELLO", "3")[0].startswith(b"%7\r\n")
            assert session.call("GET", "resp3:never-set")[0] == b"_\r\n"
            assert other.call("GET", "resp3:never-set")[0] == b"$-1\r\n"
            raw, hello = session.call("HELLO", "2")
            assert raw.startswith(b"*14\r\n") and hello[hello.index(b"proto") + 1] == 2
            assert session.call("GET", "resp3:never-set")[0] == b"$-1\r\n"
            assert session.call("HELLO", "5")[0] == b"-NOPROTO unsupported protocol version\r\n"
            assert session.call("GET", "resp3:never-set")[0] == b"$-1\r\n"  # a refused HELLO changes nothing
        finally:
            session.close()
            other.close()
