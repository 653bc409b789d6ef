"""ReplyParser: every RESP2 type, nesting, chunking, decoding; same values *and types* on every parser core."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import (
    NOT_ENOUGH_DATA,
    ErrorReply,
    ProtocolError,
    ReplyParser,
    SimpleString,
    encode_reply,
)

#: Every parser core built here (see server.protocol.cores): each test runs on each.
from server.protocol.cores import AVAILABLE as CORES
from server.protocol.cores import PURE
from server.protocol.reply import PushReply, SetReply, Verbatim
from server.protocol.reply_parser import VerbatimBytes

PATHS = list(CORES)

#: A run of complete replies ahead of what a test appends, so it is parsed mid-buffer too.
WARMUP_VALUE = [b"value", 1, None, [b"x"]]
WARMUP = encode_reply(WARMUP_VALUE) * 12
WARMUP_REPLIES: list[object] = [WARMUP_VALUE] * 12


@pytest.fixture(params=PATHS)
def core(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def reply_parser_for(core: str = PURE, decode: bool = False) -> ReplyParser:
    """A reply parser of the named core."""
    return CORES[core].reply_parser.ReplyParser(decode=decode)  # type: ignore[no-any-return]


def pieces(data: bytes, sizes: list[int] | None) -> Iterator[bytes]:
    if not sizes:
        yield data
        return
    i = k = 0
    while i < len(data):
        yield data[i : i + sizes[k % len(sizes)]]
        i += sizes[k % len(sizes)]
        k += 1


def typed(value: object) -> object:
    """``value`` with the type of every node spelled out, so SimpleString("OK") != "OK" != b"OK"."""
    if isinstance(value, list):
        return ("list", [typed(item) for item in value])
    return (type(value).__name__, value)


def parse(
    data: bytes, core: str = PURE, sizes: list[int] | None = None, decode: bool = False
) -> tuple[object, str | None]:
    """Typed replies, then the ProtocolError message if any."""
    parser = reply_parser_for(core, decode)
    replies: list[object] = []
    try:
        for piece in pieces(data, sizes):
            parser.feed(piece)
            while (reply := parser.next_reply()) is not NOT_ENOUGH_DATA:
                replies.append(reply)
    except ProtocolError as exc:
        return typed(replies), exc.message
    return typed(replies), None


TYPES = [
    (b"+OK\r\n", SimpleString("OK")),
    (b"+\r\n", SimpleString("")),
    (b"+caf\xc3\xa9 \xff\r\n", SimpleString("café \ufffd")),
    (b"-ERR unknown command 'FOO'\r\n", ErrorReply("ERR unknown command 'FOO'")),
    (b":0\r\n", 0),
    (b":-1\r\n", -1),
    (b":9223372036854775807\r\n", 2**63 - 1),
    (b":-9223372036854775808\r\n", -(2**63)),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$1\r\na\r\n$-1\r\n", [1, b"a", None]),
    (b"*2\r\n*1\r\n+OK\r\n*0\r\n", [[SimpleString("OK")], []]),
    (b"*2\r\n+QUEUED\r\n-ERR x\r\n", [SimpleString("QUEUED"), ErrorReply("ERR x")]),
    (b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:9\r\n", [[[[[[[[[9]]]]]]]]]),
]


@pytest.mark.parametrize(("data", "expected"), TYPES)
def test_types(data: bytes, expected: object, core: str) -> None:
    assert parse(data, core) == (typed([expected]), None)
    assert parse(data, core, [1]) == (typed([expected]), None)
    # Behind a warm-up: parsed mid-buffer too.
    assert parse(WARMUP + data + WARMUP, core) == (
        typed([*WARMUP_REPLIES, expected, *WARMUP_REPLIES]),
        None,
    )


def test_error_reply_is_a_value_with_a_code(core: str) -> None:
    parser = reply_parser_for(core)
    parser.feed(b"-NOAUTH Authentication required.\r\n")
    reply = parser.next_reply()
    assert isinstance(reply, ErrorReply)
    assert reply.code == "NOAUTH"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"$5\r\nhello\r\n", "hello"),
        (b"$2\r\n\xc3\xa9\r\n", "é"),
        (b"$2\r\n\xff!\r\n", "\ufffd!"),
        (b"*2\r\n$1\r\na\r\n:1\r\n", ["a", 1]),
        (b"+OK\r\n", SimpleString("OK")),
    ],
)
def test_decode(data: bytes, expected: object, core: str) -> None:
    assert parse(data, core, decode=True) == (typed([expected]), None)
    warm: list[object] = [["value", 1, None, ["x"]]] * 12
    got = parse(WARMUP + data, core, decode=True)
    assert got == (typed([*warm, expected]), None)


def test_not_enough_data_then_complete(core: str) -> None:
    parser = reply_parser_for(core)
    assert parser.next_reply() is NOT_ENOUGH_DATA
    for partial in (b"*2\r", b"\n$5\r\nhel", b"lo\r", b"\n:4", b"2\r"):
        parser.feed(partial)
        assert parser.next_reply() is NOT_ENOUGH_DATA
    assert parser.buffered > 0
    parser.feed(b"\n")
    assert parser.next_reply() == [b"hello", 42]
    assert parser.next_reply() is NOT_ENOUGH_DATA
    assert parser.buffered == 0
    assert repr(NOT_ENOUGH_DATA) == "NOT_ENOUGH_DATA"


RESP3_STREAM = (
    b"_\r\n#t\r\n#f\r\n,1.5\r\n,-inf\r\n,3.1400000000000001\r\n(3492890328409238509324850943850943825024385\r\n"
    b"!9\r\nERR blob!\r\n=15\r\ntxt:Some string\r\n"
    b"%2\r\n+first\r\n:1\r\n*1\r\n$1\r\nk\r\n_\r\n~2\r\n+a\r\n:2\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"
    b"|1\r\n+ttl\r\n:3\r\n$5\r\nvalue\r\n*2\r\n|1\r\n+a\r\n:1\r\n:8\r\n:9\r\n%0\r\n~0\r\n"
)
RESP3_VALUES: list[object] = [
    None,
    True,
    False,
    1.5,
    float("-inf"),
    3.14,
    3492890328409238509324850943850943825024385,
    ErrorReply("ERR blob!"),
    VerbatimBytes(b"Some string"),
    {SimpleString("first"): 1, (b"k",): None},
    SetReply([SimpleString("a"), 2]),
    PushReply([b"message", b"c", b"m"]),
    b"value",
    [8, 9],
    {},
    SetReply(),
]


@pytest.mark.parametrize("sizes", [None, [1], [3, 7]])
def test_resp3_values(core: str, sizes: list[int] | None) -> None:
    """Every RESP3 type, in one stream and in chunks, after a RESP2 warm-up, on every parser core."""
    parser = reply_parser_for(core)
    replies: list[object] = []
    for piece in pieces(WARMUP + RESP3_STREAM, sizes):
        parser.feed(piece)
        while (reply := parser.next_reply()) is not NOT_ENOUGH_DATA:
            replies.append(reply)
    assert replies[: len(WARMUP_REPLIES)] == WARMUP_REPLIES
    assert typed_resp3(replies[len(WARMUP_REPLIES) :]) == typed_resp3(RESP3_VALUES)


def test_resp3_verbatim_decodes_to_text() -> None:
    parser = ReplyParser(decode=True)
    parser.feed(b"=15\r\ntxt:Some string\r\n")
    reply = parser.next_reply()
    assert reply == "Some string" and isinstance(reply, Verbatim)


def typed_resp3(values: list[object]) -> list[object]:
    """Like :func:`typed`, also telling a set and a push message from an array."""
    out: list[object] = []
    for value in values:
        if isinstance(value, list):
            out.append((type(value).__name__, [typed(item) for item in value]))
        else:
            out.append(typed(value))
    return out


@pytest.mark.parametrize(
    "data",
    [
        b"?\r\n",
        b"_x\r\n",  # RESP3 null with a payload
        b"#x\r\n",  # RESP3 boolean neither t nor f
        b",1.5x\r\n",  # RESP3 double that is not a number
        b"(12a\r\n",  # RESP3 big number that is not a number
        b"%-1\r\n",  # only the RESP2 array has a null form
        b"~-1\r\n",
        b"=-1\r\n",
        b"$?\r\n;4\r\nabcd\r\n;0\r\n",  # RESP3 streamed string: Redis never sends one
        b":abc\r\n",
        b":+1\r\n",
        b":01\r\n",
        b":\r\n",
        b":99999999999999999999\r\n",
        b"$-2\r\n",
        b"$x\r\n",
        b"$01\r\n0\r\n",
        b"$3\r\nabcXY",
        b"*-2\r\n",
        b"*x\r\n",
        b"*1\r\n?\r\n",
    ],
)
def test_malformed_replies_raise(data: bytes, core: str) -> None:
    for stream in (data, WARMUP + data):
        replies, message = parse(stream, core)
        assert message is not None and message.startswith("Protocol error")
        assert (replies, message) == parse(stream, PURE, [1])


def test_protocol_error_is_sticky(core: str) -> None:
    parser = reply_parser_for(core)
    parser.feed(b"+OK\r\n!\r\n")
    assert parser.next_reply() == "OK"
    with pytest.raises(ProtocolError) as first:
        parser.next_reply()
    parser.feed(b"+OK\r\n")
    with pytest.raises(ProtocolError) as again:
        parser.next_reply()
    assert again.value is first.value
    assert parser.buffered == 0


def test_status_and_bulk_keep_their_types(core: str) -> None:
    """``+OK`` is a SimpleString and ``$2 OK`` bytes, also nested (EXEC) and deep in a long buffer."""
    exec_reply = encode_reply([SimpleString("OK"), b"OK", ErrorReply("ERR x"), 1])
    data = WARMUP + (b"+OK\r\n" + exec_reply + b"$2\r\nOK\r\n") * 20
    expected = [*WARMUP_REPLIES] + [
        SimpleString("OK"),
        [SimpleString("OK"), b"OK", ErrorReply("ERR x"), 1],
        b"OK",
    ] * 20
    assert parse(data, core) == (typed(expected), None)


def test_every_split_point(core: str) -> None:
    data = WARMUP + b"+OK\r\n*3\r\n$3\r\nabc\r\n*1\r\n-ERR e\r\n:7\r\n$-1\r\n*-1\r\n" + WARMUP
    reference = parse(data)
    for cut in range(1, len(data)):
        assert parse(data, core, [cut, len(data)]) == reference, cut


# -- properties --------------------------------------------------------------------------------

line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=15)
scalars = st.one_of(
    st.binary(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.none(),
    line_text.map(SimpleString),
    line_text.map(ErrorReply),
)
values = st.recursive(scalars, lambda children: st.lists(children, max_size=5), max_leaves=25)
chunkings = st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=6)


def decoded(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [decoded(item) for item in value]
    return value


@settings(max_examples=200, deadline=None)
@given(replies=st.lists(values, min_size=1, max_size=12), sizes=chunkings, warm=st.booleans())
def test_encode_reply_round_trips(replies: list[object], sizes: list[int], warm: bool) -> None:
    prefix, prefix_replies = (WARMUP, WARMUP_REPLIES) if warm else (b"", [])
    data = prefix + b"".join(encode_reply(value) for value in replies)
    for core in PATHS:
        assert parse(data, core, sizes) == (typed(prefix_replies + replies), None)
        assert parse(data, core, sizes, decode=True) == (
            typed(decoded(prefix_replies + replies)),
            None,
        )


TOKENS = [
    b"+", b"-", b":", b"$", b"*", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"-1", b"x", b"\xff", b"_", b"%",
    b"+OK\r\n", b"$3\r\nabc\r\n", b"*2\r\n", b":5\r\n", b"-ERR e\r\n", b"*-1\r\n", b"$-1\r\n",
    encode_reply(b"v" * 1000), encode_reply([b"w" * 2000, 1]),
]  # fmt: skip
streams = st.builds(
    lambda warm, tokens, tail: (WARMUP if warm else b"") + b"".join(tokens) + tail,
    st.booleans(),
    st.lists(st.sampled_from(TOKENS), max_size=40),
    st.binary(max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(data=streams, sizes=chunkings)
def test_any_bytes_same_result_on_both_paths(data: bytes, sizes: list[int]) -> None:
    """Values or ProtocolError, never another exception; independent of chunking and path."""
    reference = parse(data)
    for core in PATHS:
        assert parse(data, core, sizes) == reference
        assert parse(data, core, [1]) == reference
