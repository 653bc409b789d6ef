"""encode_reply / encode_command: exact wire bytes, and round trips through the parsers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import (
    NOT_ENOUGH_DATA,
    NULL_ARRAY,
    OK,
    PONG,
    ErrorReply,
    RawReply,
    ReplyParser,
    RequestParser,
    SimpleString,
    encode_bulk,
    encode_command,
    encode_error,
    encode_integer,
    encode_reply,
)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (SimpleString("OK"), b"+OK\r\n"),
        (ErrorReply("ERR boom"), b"-ERR boom\r\n"),
        (0, b":0\r\n"),
        (-1, b":-1\r\n"),
        (1022, b":1022\r\n"),
        (1023, b":1023\r\n"),
        (-2, b":-2\r\n"),
        (2**63 - 1, b":9223372036854775807\r\n"),
        (True, b":1\r\n"),
        (False, b":0\r\n"),
        (b"hello", b"$5\r\nhello\r\n"),
        (bytearray(b"ab"), b"$2\r\nab\r\n"),
        (memoryview(b"ab"), b"$2\r\nab\r\n"),
        (b"", b"$0\r\n\r\n"),
        ("café", b"$5\r\ncaf\xc3\xa9\r\n"),
        (None, b"$-1\r\n"),
        (NULL_ARRAY, b"*-1\r\n"),
        ([], b"*0\r\n"),
        ((1, b"a"), b"*2\r\n:1\r\n$1\r\na\r\n"),
        ([[None], SimpleString("x")], b"*2\r\n*1\r\n$-1\r\n+x\r\n"),
        (1.5, b"$3\r\n1.5\r\n"),
        (RawReply(b"+PONG\r\n"), b"+PONG\r\n"),
        (OK, b"+OK\r\n"),
        (PONG, b"+PONG\r\n"),
    ],
)
def test_encode_reply(value: object, wire: bytes) -> None:
    assert encode_reply(value) == wire


def test_status_and_error_lines_cannot_break_framing() -> None:
    assert encode_reply(SimpleString("a\r\nb")) == b"+a  b\r\n"
    assert encode_error("ERR a\nb") == b"-ERR a b\r\n"


def test_small_helpers() -> None:
    assert encode_bulk(b"xy") == b"$2\r\nxy\r\n"
    assert encode_integer(5) == b":5\r\n"
    assert encode_integer(10**6) == b":1000000\r\n"
    assert ErrorReply("WRONGTYPE Operation").code == "WRONGTYPE"


@pytest.mark.parametrize("value", [{1}, object()])
def test_encode_reply_refuses_unknown_types(value: object) -> None:
    with pytest.raises(TypeError):
        encode_reply(value)


def test_encode_command() -> None:
    assert encode_command("SET", b"k", 1, 1.5) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n1.5\r\n"
    assert encode_command() == b"*0\r\n"
    with pytest.raises(TypeError):
        encode_command(True)
    with pytest.raises(TypeError):
        encode_command(None)


def parse_replies(data: bytes) -> list[object]:
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not NOT_ENOUGH_DATA:
        replies.append(reply)
    return replies


line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=15)
values = st.recursive(
    st.one_of(
        st.binary(max_size=20),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.none(),
        line_text.map(SimpleString),
        line_text.map(ErrorReply),
    ),
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children),
    max_leaves=20,
)


def wire_form(value: object) -> object:
    """What a value reads back as: str goes as UTF-8 bytes, tuples as lists."""
    if isinstance(value, SimpleString | ErrorReply):
        return (type(value).__name__, str(value))
    if isinstance(value, str):
        return ("bytes", value.encode())
    if isinstance(value, list | tuple):
        return ("list", [wire_form(item) for item in value])
    return (type(value).__name__, value)


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_encode_reply_round_trips_through_reply_parser(value: object) -> None:
    [reply] = parse_replies(encode_reply(value))
    assert wire_form(reply) == wire_form(value)


arguments = st.one_of(
    st.binary(max_size=20),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
    st.integers(),
    st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(args=st.lists(arguments, min_size=1, max_size=8))
def test_encode_command_round_trips_through_request_parser(args: list[object]) -> None:
    parser = RequestParser()
    parser.feed(encode_command(*args) * 3)
    expected = [a if isinstance(a, bytes) else a.encode() if isinstance(a, str) else repr(a).encode() for a in args]
    assert parser.parse_all() == [expected] * 3
