"""Ports of the two Redis text routines the request parser must match byte for byte.

* :func:`string2ll` is ``string2ll()`` from Redis ``src/util.c``: how Redis reads
  the ``N`` of a ``*N`` or ``$N`` header. It is stricter than :func:`int`: no
  sign other than a single leading ``-``, no leading zeros (``"0"`` alone is
  fine, ``"-0"`` and ``"01"`` are not), no spaces, no underscores, at most 20
  characters, and the value must fit a signed 64-bit integer.
* :func:`split_args` is ``sdssplitargs()`` from Redis ``src/sds.c``: how Redis
  (and redis-cli) split an inline command line into arguments, with double
  quotes (``\\n \\r \\t \\b \\a``, ``\\xHH`` and "backslash + any byte = that
  byte" escapes) and single quotes (only ``\\'`` is an escape).

Both work on ``bytes`` because arguments are binary-safe. Neither raises: a
value Redis would reject comes back as ``None`` and the caller chooses the
error reply, since the same routine serves several Redis error messages.
"""

from __future__ import annotations

import re
from typing import Final

#: Redis refuses numbers of LONG_STR_SIZE (21) characters or more before it
#: even looks at them (the longest int64 text, "-9223372036854775808", is 20).
_LONG_STR_SIZE: Final = 21
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def string2ll(text: bytes | bytearray) -> int | None:
    """Parse ``text`` exactly as Redis's ``string2ll()``; ``None`` where Redis fails.

    Error handling: never raises; an empty, over-long, signed-with-``+``,
    zero-padded, non-digit or out-of-int64-range text returns ``None``.
    """
    size = len(text)
    if size == 0 or size >= _LONG_STR_SIZE:
        return None
    if size == 1 and text[0] == 0x30:  # "0"
        return 0
    negative = text[0] == 0x2D  # "-"
    digits = text[1:] if negative else text
    # bytes.isdigit() is ASCII-only, so it rejects everything int() would
    # tolerate (spaces, "+", "_", non-ASCII digits). The first digit must be
    # 1-9: Redis has no leading zeros and no "-0".
    if not digits.isdigit() or digits[0] == 0x30:
        return None
    value = int(digits)
    if negative:
        value = -value
        return value if value >= _INT64_MIN else None
    return value if value <= _INT64_MAX else None


# Unquoted arguments end at ' ', '\t', '\r' (and '\n'/NUL, which an inline line
# never contains), but the blanks skipped *between* arguments are C isspace():
# those plus '\v' and '\f'. With no quote, '\v' or '\f' in the line the two
# sets act the same, and bytes.split() (which splits on ASCII whitespace) is an
# exact, C-speed equivalent.
_NEEDS_SLOW_SPLIT: Final = re.compile(rb"[\"'\x0b\x0c]")

_C_ISSPACE: Final = frozenset(b" \t\n\v\f\r")
_UNQUOTED_END: Final = frozenset(b" \n\r\t\x00")
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
_DQ_ESCAPES: Final = {
    ord("n"): ord("\n"),
    ord("r"): ord("\r"),
    ord("t"): ord("\t"),
    ord("b"): ord("\b"),
    ord("a"): ord("\a"),
}
_DQUOTE: Final = ord('"')
_SQUOTE: Final = ord("'")
_BACKSLASH: Final = ord("\\")


def split_args(line: bytes) -> list[bytes] | None:
    """Split an inline command line as Redis's ``sdssplitargs()``; ``None`` on unbalanced quotes.

    ``line`` is the request line without its ``\\n``/``\\r\\n`` and without NUL
    bytes (Redis's ``strchr()`` never finds the end of a line that has one, so
    such a line never reaches this function).

    Error handling: never raises. An unterminated quote, or a closing quote
    followed by anything but whitespace or the end of the line (``"foo"bar``),
    returns ``None``; Redis answers that with
    ``ERR Protocol error: unbalanced quotes in request``.
    """
    if _NEEDS_SLOW_SPLIT.search(line) is None:
        return line.split()
    return _split_args_slow(line)


def _split_args_slow(line: bytes) -> list[bytes] | None:
    """The literal state machine of ``sdssplitargs()``, for lines with quotes, ``\\v`` or ``\\f``."""
    args: list[bytes] = []
    size = len(line)
    i = 0
    while True:
        while i < size and line[i] in _C_ISSPACE:
            i += 1
        if i >= size:
            return args
        current = bytearray()
        in_dq = in_sq = False
        while True:
            c = line[i] if i < size else 0  # 0 plays the C string's NUL terminator
            nxt = line[i + 1] if i + 1 < size else 0
            if in_dq:
                if (
                    c == _BACKSLASH
                    and nxt == 0x78  # "x"
                    and i + 3 < size
                    and line[i + 2] in _HEX_DIGITS
                    and line[i + 3] in _HEX_DIGITS
                ):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == _BACKSLASH and nxt:
                    i += 1
                    current.append(_DQ_ESCAPES.get(nxt, nxt))
                elif c == _DQUOTE:
                    # A closing quote must be followed by a blank or the end.
                    if nxt and nxt not in _C_ISSPACE:
                        return None
                    i += 1
                    break
                elif not c:
                    return None  # unterminated "
                else:
                    current.append(c)
            elif in_sq:
                if c == _BACKSLASH and nxt == _SQUOTE:
                    i += 1
                    current.append(_SQUOTE)
                elif c == _SQUOTE:
                    if nxt and nxt not in _C_ISSPACE:
                        return None
                    i += 1
                    break
                elif not c:
                    return None  # unterminated '
                else:
                    current.append(c)
            elif c in _UNQUOTED_END:
                break
            elif c == _DQUOTE:
                in_dq = True
            elif c == _SQUOTE:
                in_sq = True
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))
