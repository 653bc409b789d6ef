"""Argument checking in Redis's order and words: generated command pipelines, the same bytes to crossdock and to
redis-server 7, the same replies.

tests/integration/test_redis_protocol_cases.py does this for framing; here hypothesis
generates argument lists for the implemented string and generic commands (SET
with its options, EXPIRE/PEXPIRE with NX/XX/GT/LT, GET, DEL, EXISTS, INCR and
friends, TTL, ECHO, PING, MGET, MSET) from a vocabulary of option words, keys
and edge-case numbers, so wrong arity, misplaced options, repeated options,
bad integers and overflow are all met. Each example gets fresh key names, so
the shared servers' other keys never matter.

Not generated: commands whose reply depends on the clock's last millisecond
(PTTL, TIME) or on the whole keyspace (DBSIZE, FLUSHDB, KEYS), and amounts of
a few milliseconds (a key could expire between the two servers' turns).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import encode_command
from tests.client_fixtures import RedisServer
from tests.support import RespSocket, ServerProcess

#: Examples per front end: enough to meet every option pair many times, few enough to run in seconds.
MAX_EXAMPLES = 150

#: Commands in one generated pipeline: long enough for SET-then-EXPIRE-then-TTL sequences.
MAX_PIPELINE = 6

#: Arguments after the command name: SET key value plus up to five option words covers every option clash.
MAX_ARGS = 7

#: Words that are options somewhere, as sent by a client (mixed case, and a NUL that C's strcasecmp stops at).
OPTION_WORDS = [
    "NX", "XX", "GT", "LT", "GET", "EX", "PX", "EXAT", "PXAT", "KEEPTTL",
    "nx", "xx", "gt", "ex", "Px", "keepttl", "get", "ET", "K6904:0", "NX\x00junk", "ex\x00",
]  # fmt: skip

#: Numbers at every edge Redis checks: signs, zero, non-integers, 64-bit bounds and past them. No amount of a few
#: milliseconds: with PX/PEXPIRE it would expire between the two servers' turns.
NUMBER_WORDS = [
    "0", "-1", "-100", "46", "100", "100000", "1.5", "abc", "", " 1", "+1", "01",
    "9223372036854775", "9223372036854776", "-9223372036854776",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
]  # fmt: skip

#: The commands under test, in the cases a client may send them.
COMMANDS = [
    "SET", "set", "GET", "DEL", "EXISTS", "INCR", "DECR", "INCRBY", "DECRBY", "EXPIRE", "expire", "PEXPIRE",
    "TTL", "ECHO", "PING", "MGET", "MSET",
]  # fmt: skip

KEY_SLOTS = ["k", "j"]

_examples = itertools.count()


def _command(keys: list[str]) -> st.SearchStrategy[list[str]]:
    word = st.sampled_from([*keys, *OPTION_WORDS, *NUMBER_WORDS])
    key = st.sampled_from(keys)
    # A key where a key belongs, then any words: right arity most of the time, wrong arity often enough.
    return st.builds(
        lambda name, first, rest: [name, first, *rest],
        st.sampled_from(COMMANDS),
        key,
        st.lists(word, max_size=MAX_ARGS - 1),
    ) | st.builds(lambda name, rest: [name, *rest], st.sampled_from(COMMANDS), st.lists(word, max_size=2))


@st.composite
def pipelines(draw: st.DrawFn) -> list[list[str]]:
    run = next(_examples)
    keys = [f"diff:{run}:{slot}" for slot in KEY_SLOTS]
    return draw(st.lists(_command(keys), min_size=1, max_size=MAX_PIPELINE))


def _replies(host: str, port: int, commands: list[list[str]]) -> list[object]:
    """The replies to ``commands``, after deleting the vocabulary's words as keys (a generated MSET or INCR may have
    written one in an earlier example, on one server of the pair only)."""
    with RespSocket(host, port) as conn:
        conn.send_raw(encode_command("DEL", *OPTION_WORDS, *NUMBER_WORDS))
        conn.send_raw(b"".join(encode_command(*command) for command in commands))
        conn.read_reply()
        return [conn.read_reply() for _ in commands]


@pytest.fixture(scope="module")
def servers(front_end: ServerProcess, redis_server: RedisServer) -> tuple[ServerProcess, RedisServer]:
    return front_end, redis_server


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=pipelines())
def test_same_replies_as_redis(servers: tuple[ServerProcess, RedisServer], commands: list[list[str]]) -> None:
    crossdock, redis = servers
    expected = _replies(redis.host, redis.port, commands)
    assert _replies(crossdock.host, crossdock.port, commands) == expected, commands


@pytest.mark.parametrize(
    "command",
    [
        ["EXPIRE", "k", "k", "46"],  # options first: Redis never parses the amount
        ["SET", "k", "v", "EX", "ET", "k", "v", "EX", "19"],  # options first: a syntax error, not an integer error
        ["EXPIRE", "k", "10", "k6904:0"],  # the unknown option quoted as sent, not upper-cased
        ["EXPIRE", "k", "10", "bad1", "bad2"],  # the first of two unknown options
        ["SET", "k", "v", "EX", "100", "EX", "200"],  # a repeated expire option: the last one wins
        ["SET", "k", "v", "KEEPTTL", "KEEPTTL"],
        ["SET", "k", "v", "EX", "100", "PX", "100"],
        ["EXPIRE", "k", "10", "XX", "LT"],  # XX and LT together: no deadline means XX fails
    ],
)
def test_issue_16_cases(servers: tuple[ServerProcess, RedisServer], command: list[str]) -> None:
    """The differences the fuzz of issue 16 found, each pinned (with a key that has no deadline, then one that has)."""
    crossdock, redis = servers
    run = next(_examples)
    key = f"diff:pinned:{run}"
    command = [key if word == "k" and index == 1 else word for index, word in enumerate(command)]
    sequence = [["SET", key, "1"], command, ["TTL", key], ["SET", key, "1", "EX", "500"], command, ["TTL", key]]
    assert _replies(crossdock.host, crossdock.port, sequence) == _replies(redis.host, redis.port, sequence)
