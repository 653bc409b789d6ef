"""The CLI's pure parts: line splitting (redis-cli's sdssplitargs) and reply rendering (redis-cli's formats).

These need no server; the byte-for-byte comparison with redis-cli itself is
in test_cli_client.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.cli import SplitError, split_args
from clients.display import format_raw, format_standard, quote
from clients.errors import ReplyError
from server.protocol import ErrorReply, SimpleString


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"", []),
        (b"   ", []),
        (b"PING", [b"PING"]),
        (b"  SET  k   v  ", [b"SET", b"k", b"v"]),
        (b'ECHO "a b"', [b"ECHO", b"a b"]),
        (b'ECHO "a\\nb\\t\\x41\\"q\\\\"', [b"ECHO", b'a\nb\tA"q\\']),
        (b"ECHO 'it\\'s' 'raw \\n'", [b"ECHO", b"it's", b"raw \\n"]),
        (b'ECHO ""', [b"ECHO", b""]),
        (b'ECHO a"b c"', [b"ECHO", b"ab c"]),
        (b'ECHO "\\xZZ"', [b"ECHO", b"xZZ"]),
        (b"ECHO caf\xc3\xa9", [b"ECHO", b"caf\xc3\xa9"]),
    ],
)
def test_split_args_like_redis_cli(line: bytes, words: list[bytes]) -> None:
    assert split_args(line) == words


@pytest.mark.parametrize("line", [b'ECHO "open', b"ECHO 'open", b'ECHO "a"b', b"ECHO 'a'b"])
def test_split_args_rejects_unbalanced_quotes(line: bytes) -> None:
    with pytest.raises(SplitError):
        split_args(line)


@given(st.lists(st.binary(min_size=0, max_size=20), min_size=1, max_size=6))
def test_quoted_words_split_back_to_themselves(words: list[bytes]) -> None:
    # quote() produces redis-cli's escaped form; splitting it must give the original bytes back.
    line = " ".join(quote(word) for word in words).encode()
    assert split_args(line) == words


def test_standard_rendering_matches_redis_cli() -> None:
    assert format_standard(SimpleString("OK")) == "OK\n"
    assert format_standard(ErrorReply("ERR nope")) == "(error) ERR nope\n"
    assert format_standard(ReplyError("WRONGTYPE bad")) == "(error) WRONGTYPE bad\n"
    assert format_standard(42) == "(integer) 42\n"
    assert format_standard(None) == "(nil)\n"
    assert format_standard(b'a"b\n\x00\xe9') == '"a\\"b\\n\\x00\\xe9"\n'
    assert format_standard([]) == "(empty array)\n"
    assert format_standard([1, [2, b"x", []], b"y", None]) == (
        '1) (integer) 1\n2) 1) (integer) 2\n   2) "x"\n   3) (empty array)\n3) "y"\n4) (nil)\n'
    )
    ten = format_standard([b"v"] * 10).splitlines()
    assert ten[0] == ' 1) "v"' and ten[9] == '10) "v"'


def test_raw_rendering_matches_redis_cli() -> None:
    assert format_raw(SimpleString("OK")) == b"OK"
    assert format_raw(42) == b"42"
    assert format_raw(None) == b""
    assert format_raw(b"\x00bin") == b"\x00bin"
    assert format_raw([1, [2, b"x", []], b"y", None]) == b"1\n2\nx\n\ny\n"
    assert format_raw(ErrorReply("ERR nope")) == b"ERR nope\n"
