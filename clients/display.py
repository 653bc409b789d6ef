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
for errors, ``int``, ``None``, ``list``; and RESP3's (``redis-cli -3``):
``dict`` (maps, ``1# key => value``), sets (``1~``), pushes, ``bool``
(``(true)``), ``float`` (``(double) 1.5``), verbatim strings (printed as they
are). A plain ``str`` is shown as a bulk string, so ``decode=True`` replies
render the same.
"""

from __future__ import annotations

from typing import Any

from clients.errors import ReplyError
from server.protocol import ErrorReply, SimpleString
from server.protocol.reply import PushReply, SetReply, Verbatim
from server.protocol.reply_parser import VerbatimBytes


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


def _double(value: float) -> str:
    """A double as Redis 7.0 writes it (``%.17g``), so a value read back prints as the server sent it."""
    return "%.17g" % value  # noqa: UP031 - printf's %g, which format() spells differently for inf and nan


def _multiline(reply: Any) -> bool:
    """redis-cli's cliIsMultilineValueTTY: whether a map's value goes on the lines below its key."""
    if isinstance(reply, dict):
        return len(reply) > 1 or (len(reply) == 1 and _multiline(next(iter(reply.values()))))
    if isinstance(reply, list | tuple):
        return len(reply) > 1 or (len(reply) == 1 and _multiline(reply[0]))
    return False


_EMPTY = {dict: "(empty hash)", SetReply: "(empty set)", PushReply: "(empty push)"}


def format_standard(reply: Any, prefix: str = "") -> str:
    """The standard (terminal) rendering of one reply, ending with a newline.

    ``prefix`` is the indentation of a nested aggregate's continuation lines;
    the caller has already printed the element's number on the first line.
    """
    if _is_error(reply):
        return f"(error) {reply}\n"
    if isinstance(reply, SimpleString):
        return f"{reply}\n"
    if isinstance(reply, VerbatimBytes | Verbatim):  # verbatim text is printed as it is (redis-cli -3)
        return (reply.decode(errors="replace") if isinstance(reply, bytes) else reply) + "\n"
    if isinstance(reply, bytes | str):
        return quote(reply) + "\n"
    if isinstance(reply, bool):
        return "(true)\n" if reply else "(false)\n"
    if isinstance(reply, int):
        return f"(integer) {reply}\n"
    if isinstance(reply, float):
        return f"(double) {_double(reply)}\n"
    if reply is None:
        return "(nil)\n"
    if isinstance(reply, dict | list | tuple):
        if not reply:
            return _EMPTY.get(type(reply), "(empty array)") + "\n"
        is_map = isinstance(reply, dict)
        width = len(str(len(reply)))
        child_prefix = prefix + " " * (width + 2)
        separator = "#" if is_map else "~" if isinstance(reply, SetReply) else ")"
        items = list(reply.items()) if isinstance(reply, dict) else [(element, None) for element in reply]
        parts = []
        for i, (element, value) in enumerate(items):
            parts.append(f"{prefix if i else ''}{i + 1:>{width}}{separator} ")
            parts.append(format_standard(element, child_prefix))
            if is_map:
                parts[-1] = parts[-1][:-1] + " => " + ("\n" + child_prefix if _multiline(value) else "")
                parts.append(format_standard(value, child_prefix))
        return "".join(parts)
    return f"{reply!r}\n"  # not a RESP value; shown rather than hidden


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
    if isinstance(reply, bool):
        return b"(true)" if reply else b"(false)"
    if isinstance(reply, int):
        return str(reply).encode()
    if isinstance(reply, float):
        return _double(reply).encode()
    if reply is None:
        return b""
    if isinstance(reply, dict):
        return b"\n".join([format_raw(key) + b" " + format_raw(value) for key, value in reply.items()])
    if isinstance(reply, list | tuple):
        return b"\n".join([format_raw(element) for element in reply])
    return repr(reply).encode()


__all__ = ["format_raw", "format_standard", "quote"]
