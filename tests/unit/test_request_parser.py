"""RequestParser: Redis's request grammar, byte for byte, on every parser core (pure and mypyc-compiled).

Expected values marked "redis-server 7.0.15" were checked against a real
redis-server (inline lines through ``EVAL "return ARGV" 0 <line>``, which
returns the arguments Redis parsed; errors by their reply bytes). The live
cross-check at the end of this file repeats that when redis-server is installed.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import (
    NOT_ENOUGH_DATA,
    ErrorReply,
    ProtocolError,
    ReplyParser,
    RequestParser,
    encode_command,
    encode_error,
)
from server.protocol.cores import AVAILABLE as CORES
from server.protocol.cores import CORE_ENV, PURE
from server.protocol.limits import (
    MAX_BULK_LENGTH,
    MAX_INLINE_SIZE,
    MAX_MULTIBULK_LENGTH,
    UNAUTHENTICATED_MAX_BULK_LENGTH,
)
from server.protocol.request_parser import (
    EXPECTED_DOLLAR,
    INVALID_BULK,
    INVALID_MBULK,
    TOO_BIG_BULK,
    TOO_BIG_INLINE,
    TOO_BIG_MBULK,
    UNAUTH_BULK,
    UNAUTH_MBULK,
    UNBALANCED_QUOTES,
)
from tests.client_fixtures import RedisServer

#: Every parser core built here (see server.protocol.cores): each test runs on each.
PATHS = list(CORES)

#: A run of complete requests ahead of what a test appends: the parser must
#: get the appended bytes right in the middle of a buffer, not only at its start.
WARMUP_COUNT = 20
WARMUP = encode_command("SET", "key", "value") * WARMUP_COUNT
WARMUP_REQUESTS = [[b"SET", b"key", b"value"]] * WARMUP_COUNT


@pytest.fixture(params=PATHS)
def core(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def parser_for(core: str = PURE, **kwargs: object) -> RequestParser:
    """A request parser of the named core."""
    return CORES[core].request_parser.RequestParser(**kwargs)  # type: ignore[no-any-return]


Result = tuple[list[list[bytes]], str | None]


def pieces(data: bytes, sizes: list[int] | None) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes, cycling; whole when ``sizes`` is None."""
    if not sizes:
        yield data
        return
    i = k = 0
    while i < len(data):
        yield data[i : i + sizes[k % len(sizes)]]
        i += sizes[k % len(sizes)]
        k += 1


def run(data: bytes, core: str = PURE, sizes: list[int] | None = None, **kwargs: object) -> Result:
    """Every request, then the protocol error message if any, feeding ``data`` in pieces."""
    parser = parser_for(core, **kwargs)
    requests: list[list[bytes]] = []
    try:
        for piece in pieces(data, sizes):
            parser.feed(piece)
            while (request := parser.next_request()) is not None:
                requests.append(request)
    except ProtocolError as exc:
        return requests, exc.message
    return requests, None


def run_batches(data: bytes, core: str, sizes: list[int] | None = None) -> Result:
    """Same as :func:`run` with parse_all, checking the error-after-good-requests contract."""
    parser = parser_for(core)
    requests: list[list[bytes]] = []
    for piece in pieces(data, sizes):
        parser.feed(piece)
        try:
            batch = parser.parse_all()
        except ProtocolError as exc:
            return requests, exc.message
        requests += batch
        if batch:
            # If an error is pending it must surface now, and only now.
            try:
                requests += parser.parse_all()
            except ProtocolError as exc:
                return requests, exc.message
    return requests, None


def run_parse_chunk(data: bytes, core: str, sizes: list[int] | None = None) -> Result:
    """Same as :func:`run_batches` through ``parse_chunk`` (the front ends' call, with its fast path)."""
    parser = parser_for(core)
    requests: list[list[bytes]] = []
    for piece in pieces(data, sizes):
        try:
            batch = parser.parse_chunk(piece)
        except ProtocolError as exc:
            return requests, exc.message
        assert parser.held == parser.buffered  # the front ends read the attribute, not the property
        requests += batch
        if batch and parser.failed:
            try:
                parser.parse_all()
            except ProtocolError as exc:
                return requests, exc.message
            raise AssertionError("failed is set but parse_all did not raise")
    return requests, None


# -- the basics -----------------------------------------------------------------------------


def test_multibulk_and_inline(core: str) -> None:
    data = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\nPING\r\nECHO hi\n"
    assert run(data, core) == ([[b"ECHO", b"hello"], [b"PING"], [b"ECHO", b"hi"]], None)


def test_binary_safe_bulk(core: str) -> None:
    value = bytes(range(256)) + b"\r\n*1\r\n\x00"
    assert run(encode_command(b"SET", b"k", value), core) == ([[b"SET", b"k", value]], None)


def test_empty_bulk_and_empty_command_name(core: str) -> None:
    # redis-server 7.0.15 runs it (and answers "unknown command ''").
    assert run(b"*1\r\n$0\r\n\r\n", core) == ([[b""]], None)


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n",
        b"\n",
        b"   \t\r\n",
        b"\x0b\x0c\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"*-5\r\n",
        b"*-9223372036854775808\r\n",
    ],
)
def test_skipped_inputs_are_no_request(data: bytes, core: str) -> None:
    """Blank lines and counts <= 0 produce nothing; the next request still parses."""
    assert run(data + b"PING\r\n", core) == ([[b"PING"]], None)
    assert run(WARMUP + data + encode_command("PING"), core) == ([*WARMUP_REQUESTS, [b"PING"]], None)


def test_incomplete_input_waits(core: str) -> None:
    parser = parser_for(core)
    for partial in (b"*", b"2", b"\r", b"\n$4\r\nEC", b"HO\r\n$5\r\nhel", b"lo\r"):
        parser.feed(partial)
        assert parser.next_request() is None
    parser.feed(b"\n")
    assert parser.next_request() == [b"ECHO", b"hello"]
    assert parser.next_request() is None


def test_pipelined_mixed_stream(core: str) -> None:
    expected: list[list[bytes]] = []
    data = b""
    for i in range(300):
        if i % 7 == 3:
            data += b"ECHO inline%d\r\n" % i
            expected.append([b"ECHO", b"inline%d" % i])
        else:
            data += encode_command("SET", f"key:{i}", "v" * (i % 50))
            expected.append([b"SET", f"key:{i}".encode(), b"v" * (i % 50)])
    assert run(data, core) == (expected, None)
    assert run_batches(data, core) == (expected, None)
    assert run(data, core, [1]) == (expected, None)
    assert run(data, core, [4096]) == (expected, None)


# -- Redis quirks, matched on purpose ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Redis finds a header's end by its "\r" and skips the next byte unchecked.
        (b"*1\rX$4\r\nPING\r\n", [[b"PING"]]),
        (b"*1\r\n$4\rXPING\r\n", [[b"PING"]]),
        # A bulk's two trailing bytes are skipped unchecked.
        (b"*1\r\n$4\r\nPINGxy*1\r\n$4\r\nPING\r\n", [[b"PING"], [b"PING"]]),
        # An inline line ends at "\n"; a single "\r" before it is dropped, others are blanks.
        (b"PING\r\r\n", [[b"PING"]]),
        (b"\rPING\r\n", [[b"PING"]]),
        (b"PI\rNG\n", [[b"PI", b"NG"]]),
        # Anything not starting with "*" is inline, even "$" and ":".
        (b"$4\r\n", [[b"$4"]]),
    ],
)
def test_redis_framing_quirks(data: bytes, expected: list[list[bytes]], core: str) -> None:
    # All checked against redis-server 7.0.15.
    assert run(data, core) == (expected, None)
    assert run(WARMUP + data, core) == (WARMUP_REQUESTS + expected, None)


@pytest.mark.parametrize(
    ("data", "too_big"),
    [
        (b"PI\x00NG\r\nPING\r\n", TOO_BIG_INLINE),
        (b"\x00\n", TOO_BIG_INLINE),
        (b"*1\x00\r\n$4\r\nPING\r\n", TOO_BIG_MBULK),
        (b"*1\r\n$4\x00\r\nPING\r\n", TOO_BIG_BULK),
        (b"*1\r\nx\x00\r\n", TOO_BIG_BULK),
    ],
)
def test_nul_hides_the_line_end(data: bytes, too_big: str, core: str) -> None:
    """Redis's strchr() stops at NUL: it waits (redis-server 7.0.15 sends nothing), then 'too big'."""
    assert run(data, core) == ([], None)
    parser = parser_for(core)
    parser.feed(data)
    assert parser.next_request() is None
    parser.feed(b"x" * MAX_INLINE_SIZE)
    with pytest.raises(ProtocolError) as info:
        parser.next_request()
    assert info.value.message == too_big


# -- errors, with Redis's exact wording ------------------------------------------------------

ERROR_CASES = [
    (b"*+1\r\n", INVALID_MBULK),
    (b"*01\r\n", INVALID_MBULK),
    (b"*-0\r\n", INVALID_MBULK),
    (b"*\r\n", INVALID_MBULK),
    (b"**\r\n", INVALID_MBULK),
    (b"* 1\r\n", INVALID_MBULK),
    (b"*1 \r\n", INVALID_MBULK),
    (b"*1\n$4\r\nPING\r\n", INVALID_MBULK),  # the header runs on to the first "\r"
    (b"*9223372036854775808\r\n", INVALID_MBULK),
    (b"*-9223372036854775809\r\n", INVALID_MBULK),
    (b"*%d\r\n" % (MAX_MULTIBULK_LENGTH + 1), INVALID_MBULK),
    (b"*1\r\n$-1\r\n", INVALID_BULK),
    (b"*1\r\n$-0\r\n", INVALID_BULK),
    (b"*1\r\n$+1\r\n", INVALID_BULK),
    (b"*1\r\n$01\r\n", INVALID_BULK),
    (b"*1\r\n$00\r\n", INVALID_BULK),
    (b"*1\r\n$\r\n", INVALID_BULK),
    (b"*1\r\n$ 1\r\n", INVALID_BULK),
    (b"*1\r\n$9223372036854775807\r\n", INVALID_BULK),
    (b"*1\r\n$%d\r\n" % (MAX_BULK_LENGTH + 1), INVALID_BULK),
    (b"*1\r\n$4\nPING\r\n", INVALID_BULK),
    (b"*1\r\nx4\r\n", EXPECTED_DOLLAR % "x"),
    (b"*1\r\n\r\n", EXPECTED_DOLLAR % "\r"),
    (b"*2\r\n$4\r\nPING\r\n:1\r\n", EXPECTED_DOLLAR % ":"),
    (b"*1\r\n+OK\r\n", EXPECTED_DOLLAR % "+"),
    (b"*1\r\n*1\r\n$4\r\nPING\r\n", EXPECTED_DOLLAR % "*"),
    (b"*1\r\n\xe94\r\n", EXPECTED_DOLLAR % "\udce9"),  # the raw byte on the wire, see encode_error
    (b'ECHO "abc\r\n', UNBALANCED_QUOTES),
    (b"ECHO 'a'b\n", UNBALANCED_QUOTES),
]


@pytest.mark.parametrize(("data", "message"), ERROR_CASES)
def test_protocol_errors(data: bytes, message: str, core: str) -> None:
    assert run(data, core) == ([], message)
    assert run(data, core, [1]) == ([], message)
    assert run(WARMUP + data, core) == (WARMUP_REQUESTS, message)
    assert run_batches(WARMUP + data, core) == (WARMUP_REQUESTS, message)


def test_error_wire_bytes_match_redis() -> None:
    """What the server sends for the trickiest messages (redis-server 7.0.15 sends the same)."""
    assert encode_error(EXPECTED_DOLLAR % "\r") == b"-ERR Protocol error: expected '$', got ' '\r\n"
    assert encode_error(INVALID_MBULK) == b"-ERR Protocol error: invalid multibulk length\r\n"
    assert encode_error(TOO_BIG_INLINE) == b"-ERR Protocol error: too big inline request\r\n"


def test_parse_all_returns_good_requests_then_raises_next_call(core: str) -> None:
    parser = parser_for(core)
    parser.feed(WARMUP + b"PING\r\n*1\r\n$-1\r\nPING\r\n")
    assert parser.parse_all() == [*WARMUP_REQUESTS, [b"PING"]]
    with pytest.raises(ProtocolError) as first:
        parser.parse_all()
    assert first.value.message == INVALID_BULK
    # Sticky: the stream cannot be resynchronised.
    parser.feed(b"PING\r\n")
    with pytest.raises(ProtocolError) as again:
        parser.next_request()
    assert again.value is first.value
    assert parser.buffered == 0


def test_parse_all_raises_at_once_without_good_requests(core: str) -> None:
    parser = parser_for(core)
    parser.feed(b"*x\r\n")
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        parser.parse_all()


def test_next_request_returns_good_requests_before_the_error(core: str) -> None:
    parser = parser_for(core)
    parser.feed(b"PING\r\nECHO a\r\n*1\r\n$x\r\n")
    assert parser.next_request() == [b"PING"]
    assert parser.next_request() == [b"ECHO", b"a"]
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parser.next_request()


# -- size limits --------------------------------------------------------------------------------


def test_inline_line_length_limit(core: str) -> None:
    """The line end must be within MAX_INLINE_SIZE + 1 bytes, as when Redis reads byte by byte."""
    fits = b"a" * MAX_INLINE_SIZE
    assert run(fits + b"\n", core) == ([[fits]], None)
    assert run(fits[:-1] + b"\r\n", core) == ([[fits[:-1]]], None)
    # MAX_INLINE_SIZE bytes plus "\r" are buffered with no "\n": too big.
    assert run(fits + b"\r\n", core) == ([], TOO_BIG_INLINE)
    assert run(fits + b"a\n", core, [1000]) == ([], TOO_BIG_INLINE)
    parser = parser_for(core)
    parser.feed(fits)
    assert parser.next_request() is None
    parser.feed(b"a")
    with pytest.raises(ProtocolError, match="too big inline request"):
        parser.next_request()


@pytest.mark.parametrize(
    ("prefix", "message"), [(b"*", TOO_BIG_MBULK), (b"*1\r\n$", TOO_BIG_BULK), (b"*1\r\nx", TOO_BIG_BULK)]
)
def test_header_line_length_limit(prefix: bytes, message: str, core: str) -> None:
    digits = b"1" * (MAX_INLINE_SIZE + 1)
    assert run(prefix + digits, core) == ([], message)
    assert run(prefix + digits + b"\r\n", core) == ([], message)
    assert run(prefix + digits[:1000], core) == ([], None)  # still waiting


def test_max_bulk_and_multibulk_length(core: str) -> None:
    ok = encode_command("a" * 100, *["b"] * 9)
    assert run(ok, core, max_bulk_length=100, max_multibulk_length=10)[1] is None
    assert run(encode_command("a" * 101), core, max_bulk_length=100) == ([], INVALID_BULK)
    assert run(encode_command(*["b"] * 11), core, max_multibulk_length=10) == ([], INVALID_MBULK)
    # The header alone is refused: nothing of the 101 bytes needs to arrive.
    assert run(b"*1\r\n$101\r\n", core, max_bulk_length=100) == ([], INVALID_BULK)


def test_set_limits_applies_to_following_requests(core: str) -> None:
    parser = parser_for(core, max_bulk_length=10)
    big = encode_command("SET", "k", "x" * 100)
    parser.feed(WARMUP)
    assert parser.parse_all() == WARMUP_REQUESTS
    parser.set_limits(max_bulk_length=1000, max_multibulk_length=3)
    parser.feed(big + WARMUP)
    assert parser.parse_all() == [[b"SET", b"k", b"x" * 100], *WARMUP_REQUESTS]
    parser.set_limits(max_bulk_length=1000, max_multibulk_length=2)
    parser.feed(WARMUP)
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        parser.parse_all()


def test_unauthenticated_limits_use_redis_wording(core: str) -> None:
    """Checked against redis-server 7.0.15 with requirepass set."""

    def unauth(data: bytes) -> Result:
        return run(data, core, auth_required=True)

    assert unauth(b"*11\r\n") == ([], UNAUTH_MBULK)
    assert unauth(b"*10\r\n") == ([], None)
    assert unauth(b"*1\r\n$16385\r\n") == ([], UNAUTH_BULK)
    assert unauth(b"*1\r\n$16384\r\n") == ([], None)
    # The ordinary checks come first.
    assert unauth(b"*1\r\n$-1\r\n") == ([], INVALID_BULK)
    assert run(b"*1\r\n$20000\r\n", core, max_bulk_length=100, auth_required=True) == (
        [],
        INVALID_BULK,
    )
    assert unauth(b"*%d\r\n" % (MAX_MULTIBULK_LENGTH + 1)) == ([], INVALID_MBULK)


def test_auth_required_can_be_lifted(core: str) -> None:
    parser = parser_for(core, auth_required=True)
    assert parser.auth_required
    parser.feed(encode_command("AUTH", "secret"))
    assert parser.next_request() == [b"AUTH", b"secret"]
    parser.auth_required = False
    value = b"v" * (UNAUTHENTICATED_MAX_BULK_LENGTH + 1)
    parser.feed(WARMUP + encode_command("SET", "k", value))
    assert parser.parse_all() == [*WARMUP_REQUESTS, [b"SET", b"k", value]]


def test_buffered_counts_unparsed_bytes_and_partial_arguments(core: str) -> None:
    parser = parser_for(core)
    assert parser.buffered == 0
    parser.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n01234")
    assert parser.next_request() is None
    assert parser.buffered == 3 + 1 + 5  # "SET", "k", and five bytes of the value
    parser.feed(b"56789\r\nPI")
    assert parser.next_request() == [b"SET", b"k", b"0123456789"]
    assert parser.buffered == 2
    parser.feed(b"NG\r\n")
    assert parser.next_request() == [b"PING"]
    assert parser.buffered == 0


def test_compiled_core_is_built_where_a_compiler_exists() -> None:
    """``make install`` builds the mypyc core wherever gcc is found; a silent fallback would hide a broken build."""
    if shutil.which("gcc") is None or os.environ.get("CROSSDOCK_NO_EXTENSIONS"):
        pytest.skip("no C compiler here: the pure core only")
    if os.environ.get(CORE_ENV) == PURE:
        pytest.skip(f"{CORE_ENV}=pure: the compiled core is not loaded at all in this process")
    assert set(CORES) == {"mypyc", "pure"}
    assert CORES["mypyc"].request_parser.RequestParser is not CORES["pure"].request_parser.RequestParser


# -- hostile and slow peers ----------------------------------------------------------------------


def test_large_counts_are_not_preallocated(core: str) -> None:
    """A huge count allocates nothing up front: it errors or waits like Redis."""
    nested = WARMUP + b"*2\r\n*999999999\r\n"
    assert run(nested, core) == (WARMUP_REQUESTS, EXPECTED_DOLLAR % "*")
    many = encode_command(*[b"a"] * 20_000)
    assert run(WARMUP + many + WARMUP, core) == (
        [*WARMUP_REQUESTS, [b"a"] * 20_000, *WARMUP_REQUESTS],
        None,
    )
    # A valid count that never completes just waits; nothing is preallocated for it.
    assert run(WARMUP + b"*1000000\r\n", core) == (WARMUP_REQUESTS, None)


@pytest.mark.parametrize(
    "hostile",
    [b"*999\r\n:1\r\n" * 5000, b"*9999\r\n:1\r\n" * 5000, b"*99\r\n" * 10000, b"*9\r\n" * 20000],
)
def test_nested_counts_cannot_make_the_parser_allocate(hostile: bytes, core: str) -> None:
    """Hostile "*N" headers after a good run: the error comes at once, with little memory used."""
    tracemalloc.start()
    try:
        result = run(WARMUP + hostile, core)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result == (WARMUP_REQUESTS, EXPECTED_DOLLAR % chr(hostile[hostile.index(b"\n") + 1]))
    assert peak < 4 * 1024 * 1024


def test_slow_sender_is_linear(core: str) -> None:
    """A long line or header fed one byte at a time must not be rescanned per byte."""
    line = b"ECHO " + b"x" * (MAX_INLINE_SIZE - 10) + b"\r\n"
    start = time.perf_counter()
    assert run(line, core, [1]) == ([[b"ECHO", b"x" * (MAX_INLINE_SIZE - 10)]], None)
    assert run(b"*1\r\n$" + b"1" * (MAX_INLINE_SIZE - 10), core, [1]) == ([], None)
    value = os.urandom(1 << 20)
    assert run(encode_command("SET", "k", value), core, [1000]) == ([[b"SET", b"k", value]], None)
    assert time.perf_counter() - start < 5.0


# -- inline quoting ---------------------------------------------------------------------------------

#: Inline lines and the arguments redis-server 7.0.15 parsed from them (None:
#: "unbalanced quotes in request").
QUOTING = [
    (b"SET a b", [b"SET", b"a", b"b"]),
    (b"  SET   a\tb  ", [b"SET", b"a", b"b"]),
    (b'"a b" c', [b"a b", b"c"]),
    (b"'a b' c", [b"a b", b"c"]),
    (b'"\\n\\r\\t\\b\\a\\\\\\""', [b'\n\r\t\b\a\\"']),
    (b'"\\x41\\x4a\\xff\\x00"', [b"AJ\xff\x00"]),
    (b'"\\x4g"', [b"x4g"]),
    (b'"\\q\\\'"', [b"q'"]),
    (b"'a\\'b'", [b"a'b"]),
    (b"'a\\nb\\\\x'", [b"a\\nb\\\\x"]),
    (b"'a\"b' \"a'b\"", [b'a"b', b"a'b"]),
    (b'a"b c"', [b"ab c"]),
    (b"a'b c' d", [b"ab c", b"d"]),
    (b"\"\" ''", [b"", b""]),
    (b"a\\b", [b"a\\b"]),
    (b"a\x0bb", [b"a\x0bb"]),
    (b"\x0ba\x0c b", [b"a\x0c", b"b"]),
    (b'"a"\x0bb', [b"a", b"b"]),
    (b"a\rb", [b"a", b"b"]),
    (b"caf\xc3\xa9", [b"caf\xc3\xa9"]),
    (b'"abc', None),
    (b"'abc", None),
    (b'"a"b', None),
    (b"'a'b", None),
    (b'"a\\"', None),
    (b'"abc\\', None),
    (b'a"b c"d', None),
]


@pytest.mark.parametrize(("line", "expected"), QUOTING)
def test_inline_quoting(line: bytes, expected: list[bytes] | None, core: str) -> None:
    result = run(b"CMD " + line + b"\r\n", core)
    if expected is None:
        assert result == ([], UNBALANCED_QUOTES)
    else:
        assert result == ([[b"CMD", *expected]], None)


# -- properties -------------------------------------------------------------------------------------

#: Building blocks that make random streams hit every branch: headers,
#: separators, quotes, NULs, and whole valid requests.
TOKENS = [
    b"*", b"$", b"\r", b"\n", b"\r\n", b"0", b"1", b"2", b"3", b"-", b"+", b" ", b"\t", b"\x0b",
    b'"', b"'", b"\\", b"x", b"4", b"a", b"\x00", b"\xff", b"PING", b"*1\r\n", b"*2\r\n", b"$1\r\n",
    b"$3\r\n", b"*-1\r\n", b"*0\r\n", b"ECHO \"a b\"\n",
    encode_command("SET", "k", "v"), encode_command("ECHO", b"\r\n\x00"),
    encode_command("SET", "k", "v" * 2000),
]  # fmt: skip
streams = st.builds(
    lambda warm, tokens, tail: (WARMUP if warm else b"") + b"".join(tokens) + tail,
    st.booleans(),
    st.lists(st.sampled_from(TOKENS), max_size=40),
    st.binary(max_size=20),
)
chunkings = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams, sizes=chunkings)
def test_any_bytes_any_chunking_same_result_on_both_paths(data: bytes, sizes: list[int]) -> None:
    """Requests or ProtocolError, never another exception; independent of chunking and path."""
    reference = run(data)
    for core in PATHS:
        assert run(data, core, sizes) == reference
        assert run(data, core, [1]) == reference
        assert run_batches(data, core, sizes) == reference
        assert run_parse_chunk(data, core, sizes) == reference
        assert run_parse_chunk(data, core) == reference


args_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(requests=st.lists(args_lists, min_size=1, max_size=30), sizes=chunkings)
def test_encoded_commands_round_trip(requests: list[list[bytes]], sizes: list[int]) -> None:
    data = b"".join(encode_command(*args) for args in requests)
    for core in PATHS:
        assert run(data, core, sizes) == (requests, None)
        assert run_batches(WARMUP + data, core, sizes) == (WARMUP_REQUESTS + requests, None)
        assert run_parse_chunk(data, core) == (requests, None)
        assert run_parse_chunk(WARMUP + data, core, sizes) == (WARMUP_REQUESTS + requests, None)


@pytest.mark.parametrize(
    "data",
    [
        encode_command("SET", "k", "v") + b"*1\r\n$-1\r\n",
        encode_command("PING") + b"*1\rX$4\r\nPING\r\n" + encode_command("PING"),
        encode_command("PING") + b"*01\r\n$4\r\nPING\r\n",
        encode_command("PING") + b"*1\r\n$04\r\nPING\r\n",
        encode_command("PING") + b"*0\r\n*-1\r\nPING\r\n",
        encode_command("PING") + b"*1\r\n+4\r\nPING\r\n",
        encode_command("PING") + b"*1\r\n$4\r\nPINGxy" + encode_command("ECHO", ""),
        encode_command("PING") + b"*2\r\n$4\r\nECHO\r\n$99999999999\r\n",
        encode_command("PING") + b"*9999999999\r\n",
        b"*1\r\n$4\r\nPI\x00G\r\n" + encode_command("PING"),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n" + b"v" * 20000 + b"\r\n",
        encode_command("SET", "key", "value") + b"*999\r\n" * 30 + encode_command("PING"),
        encode_command("SET", "key", "value") + b"*2\r\n*1\r\n$1\r\nx\r\n$1\r\ny\r\n",
        encode_command("SET", "key", "value") + b"*1\r\n:1\r\n" + encode_command("PING"),
        encode_command("SET", "key", "value") * 3 + b"*1\r\n$5\r\nPING\r\n",
        encode_command("SET", "key", "value", "EX", "100") * 2 + encode_command("GET", "x" * 600),
    ],
)
def test_parse_chunk_fast_path_agrees_with_the_parser(data: bytes, core: str) -> None:
    """Quirks at the edge of the fast path's "simple multibulk" shape go to the ordinary parser, same result."""
    reference = run(data)
    assert run_parse_chunk(data, core) == reference
    assert run_parse_chunk(data, core, [7]) == reference
    parser = parser_for(core, auth_required=True)
    expected = run(data, auth_required=True)
    got: list[list[bytes]] = []
    try:
        got += parser.parse_chunk(data)
        got += parser.parse_all()
    except ProtocolError as exc:
        assert (got, exc.message) == expected
    else:
        assert (got, None) == expected


def test_every_split_point_gives_the_same_result(core: str) -> None:
    data = (
        b"PING\r\n*2\r\n$4\r\nECHO\r\n$3\r\na\r\n\r\n\r\n*0\r\n"
        + b"SET \"k 1\" 'v\\'' \n*1\rX$4\r\nPINGxy"
        + encode_command("SET", "key", "value") * 10
        + b"*1\r\n$-1\r\n"
    )
    reference = run(data)
    assert reference[1] == INVALID_BULK
    for cut in range(1, len(data)):
        parser = parser_for(core)
        got: list[list[bytes]] = []
        message = None
        try:
            for piece in (data[:cut], data[cut:]):
                parser.feed(piece)
                got += parser.parse_all()
                got += parser.parse_all()
        except ProtocolError as exc:
            message = exc.message
        assert (got, message) == reference, cut


# -- live cross-check against redis-server ------------------------------------------------------


@pytest.fixture
def redis_address(redis_server: RedisServer) -> tuple[str, int]:
    """The address of the session's redis-server (tests/conftest.py)."""
    return redis_server.host, redis_server.port


def redis_reply_bytes(address: tuple[str, int], data: bytes) -> bytes:
    """Everything redis-server answers to ``data`` before it closes or we stop sending."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize(("line", "expected"), QUOTING)
def test_quoting_matches_live_redis(redis_address: tuple[str, int], line: bytes, expected: list[bytes] | None) -> None:
    reply = redis_reply_bytes(redis_address, b'EVAL "return ARGV" 0 ' + line + b"\r\n")
    if expected is None:
        assert reply == encode_error(UNBALANCED_QUOTES)
    else:
        assert reply == b"*%d\r\n" % len(expected) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in expected)


@pytest.mark.parametrize(("data", "message"), ERROR_CASES)
def test_errors_match_live_redis(redis_address: tuple[str, int], data: bytes, message: str) -> None:
    """Same wire bytes as Redis, except where crossdock's limits are lower than Redis's."""
    if b"%d" % (MAX_MULTIBULK_LENGTH + 1) in data or b"%d" % (MAX_BULK_LENGTH + 1) in data:
        pytest.skip("crossdock limit below Redis's")
    reply = redis_reply_bytes(redis_address, data)
    assert reply.endswith(encode_error(message))


def _eval_request(rng: random.Random) -> bytes:
    """An ``EVAL "return ARGV" 0 ...`` request (Redis answers with the arguments it parsed)."""
    args = [bytes(rng.choice(b"ab \r\n\"'\\x0\t") for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        quoted = [b'"' + b"".join(b"\\x%02x" % c for c in arg) + b'"' for arg in args]
        return b" ".join([b'EVAL "return ARGV" 0', *quoted]) + rng.choice([b"\n", b"\r\n"])
    return encode_command(b"EVAL", b"return ARGV", b"0", *args)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    alphabet = b"*$\r\n0123456789-+ \"'\\x\x00abEVAL"
    out = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        i = rng.randint(0, len(out))
        roll = rng.random()
        if roll < 0.4 and out:
            out[min(i, len(out) - 1)] = rng.choice(alphabet)
        elif roll < 0.7:
            out[i:i] = bytes([rng.choice(alphabet)])
        elif out:
            del out[min(i, len(out) - 1)]
    return bytes(out)


def test_random_streams_match_live_redis(redis_address: tuple[str, int]) -> None:
    """Differential check: mutated request streams, replies compared with what our parse implies.

    An EVAL "return ARGV" request must be answered with exactly the arguments
    we parsed; any other request with one reply (we do not model it); a
    protocol error with the same error line, last.
    """
    rng = random.Random(20260522)
    for _ in range(150):
        data = _mutate(rng, b"".join(_eval_request(rng) for _ in range(rng.randint(1, 3))))
        requests, error = run(data)
        expected: list[object] = []
        for request in requests:
            is_argv = len(request) >= 3 and request[0].upper() == b"EVAL" and request[1:3] == [b"return ARGV", b"0"]
            expected.append(request[3:] if is_argv else None)
        if error is not None:
            expected.append(ErrorReply(encode_error(error)[1:-2].decode()))
        reader = ReplyParser()
        reader.feed(redis_reply_bytes(redis_address, data))
        replies = []
        while (reply := reader.next_reply()) is not NOT_ENOUGH_DATA:
            replies.append(reply)
        assert len(replies) == len(expected), data
        for want, got in zip(expected, replies, strict=True):
            if want is not None:
                assert got == want, data
