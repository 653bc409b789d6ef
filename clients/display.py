"""Replies rendered the way redis-cli renders them, so the CLI's output reads (and diffs) the same.

Two renderings, as in redis-cli (``cliFormatReplyTTY`` and
``cliFormatReplyRaw`` in its source):

* standard, for a person at a terminal: ``(integer) 1``, ``"text"`` with C
  escapes for anything unprintable, ``(nil)``, ``(error) ERR ...``,
  ``(empty array)``, arrays numbered ``1) ...`` with nested arrays indented
  under their number;
* raw (``--raw``, and the default when stdout is not a terminal): the bare
  bytes of each value, array elements one per line, nil as an empty line,
  so the output pipes into other tools.

Values are those the reply parser produces with ``decode=False``: ``bytes``
for bulk strings, :class:`~server.protocol.SimpleString` for status replies,
:class:`~server.protocol.ErrorReply` (or a :class:`~clients.errors.ReplyError`)
for errors, ``int``, ``None``, ``list``. A plain ``str`` is shown as a bulk
string, so ``decode=True`` replies render the same.
"""

from __future__ import annotations

from typing import Any

from clients.errors import ReplyError
from server.protocol import ErrorReply, SimpleString


def _repr_table() -> list[str]:
    # sdscatrepr: backslash and quote escaped, \n \r \t \a \b by name, other
    # non-printable bytes (C isprint, so anything outside 0x20-0x7e) as \xHH.
    table = []
    for byte in range(256):
        char = chr(byte)
        if char in '\\"':
            table.append("\\" + char)
        elif char in "\n\r\t\a\b":
            table.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\a": "\\a", "\b": "\\b"}[char])
        elif 0x20 <= byte <= 0x7E:
            table.append(char)
        else:
            table.append(f"\\x{byte:02x}")
    return table


_REPR = _repr_table()


def quote(data: bytes | str) -> str:
    """A bulk string as redis-cli shows it: in double quotes, escaped byte by byte."""
    if isinstance(data, str):
        data = data.encode()
    return '"' + "".join([_REPR[byte] for byte in data]) + '"'


def _is_error(value: Any) -> bool:
    return isinstance(value, ErrorReply | ReplyError)


def format_standard(reply: Any, prefix: str = "") -> str:
    """The standard (terminal) rendering of one reply, ending with a newline.

    ``prefix`` is the indentation of a nested array's continuation lines; the
    caller has already printed the element's number on the first line.
    """
    if _is_error(reply):
        return f"(error) {reply}\n"
    if isinstance(reply, SimpleString):
        return f"{reply}\n"
    if isinstance(reply, bytes | str):
        return quote(reply) + "\n"
    if isinstance(reply, int):
        return f"(integer) {reply}\n"
    if reply is None:
        return "(nil)\n"
    if isinstance(reply, list | tuple):
        if not reply:
            return "(empty array)\n"
        width = len(str(len(reply)))
        child_prefix = prefix + " " * (width + 2)
        parts = []
        for i, element in enumerate(reply):
            parts.append(f"{prefix if i else ''}{i + 1:>{width}}) ")
            parts.append(format_standard(element, child_prefix))
        return "".join(parts)
    return f"{reply!r}\n"  # not a RESP2 value; shown rather than hidden


def format_raw(reply: Any) -> bytes:
    """The raw rendering of one reply, without the final newline (the caller adds it, as redis-cli does).

    An error keeps redis-cli's own trailing newline, so an error in raw mode
    is followed by an empty line exactly as redis-cli prints it.
    """
    if _is_error(reply):
        return str(reply).encode() + b"\n"
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode()
    if isinstance(reply, int):
        return str(reply).encode()
    if reply is None:
        return b""
    if isinstance(reply, list | tuple):
        return b"\n".join([format_raw(element) for element in reply])
    return repr(reply).encode()


__all__ = ["format_raw", "format_standard", "quote"]
