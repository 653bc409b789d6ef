"""Incremental RESP2 reply parser for clients: bytes in, Python values out.

=====================  ===================================================
on the wire            value returned by :meth:`ReplyParser.next_reply`
=====================  ===================================================
``+OK``                ``SimpleString("OK")``
``-ERR x``             ``ErrorReply("ERR x")`` (returned, never raised)
``:42``                ``42``
``$5 hello``           ``b"hello"`` (``"hello"`` with ``decode=True``)
``$-1`` / ``*-1``      ``None``
``*N ...``             ``list`` of the above, nested as sent
=====================  ===================================================

Status and error lines are always text (``SimpleString``/``ErrorReply`` are
``str``), decoded as UTF-8 with undecodable bytes replaced, as hiredis does;
``decode=True`` decodes bulk strings the same way. The grammar is strict
RESP2: lines end with ``\\r\\n``, integers and lengths follow Redis's
``string2ll`` (no ``+``, no leading zeros), a bulk must be followed by
``\\r\\n``, and only the five RESP2 type bytes are known. There is no size
cap: a client trusts its server; watch :attr:`ReplyParser.buffered` if not.

One grammar over one buffer, like the request parser: hiredis, which once
parsed long regions here behind a re-encoding proof, went with issue 11 (it
cannot tell ``+OK`` from ``$2 OK``, so it could never be a backend of its
own); the same source compiled with mypyc replaces it
(:mod:`server.protocol.cores`; figures in ``docs/decisions.md``).

Error handling: malformed input raises :class:`ProtocolError` (sticky: the
stream cannot be resynchronised, close the connection). ``-ERR`` replies are
values, not exceptions.
"""

from __future__ import annotations

from typing import Final

from server.protocol._redis_text import string2ll
from server.protocol.errors import ProtocolError
from server.protocol.incomplete import NOT_ENOUGH_DATA
from server.protocol.reply import ErrorReply, SimpleString

_CRLF: Final = b"\r\n"

#: The status replies a client sees most, decoded once: (wire bytes, value).
_COMMON_STATUS: Final = {
    text.encode(): (b"+%s\r\n" % text.encode(), SimpleString(text)) for text in ("OK", "PONG", "QUEUED")
}
_PLUS: Final = 0x2B
_MINUS: Final = 0x2D
_COLON: Final = 0x3A
_DOLLAR: Final = 0x24
_STAR: Final = 0x2A
_CR: Final = 0x0D
_LF: Final = 0x0A
_ZERO: Final = 0x30
_NINE: Final = 0x39
#: Most digits the header fast path reads: 18 digits always fit a machine integer, so the
#: compiled core computes the value without big-integer arithmetic; longer texts (and every oddity)
#: take string2ll().
_DIGITS_MAX: Final = 18


class ReplyParser:
    """Feed it what the server sent, take replies out; see the module docstring."""

    __slots__ = (
        "_buf",
        "_decode",
        "_error",
        "_pos",
        "_scan",
        "_stack",
    )

    def __init__(self, decode: bool = False) -> None:
        self._decode = decode
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0  # no CRLF in the current line before this index
        # Arrays being filled, outermost first: [items, elements still expected].
        self._stack: list[tuple[list[object], int]] = []
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a complete reply."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; consumed bytes are dropped here. Ignored after an error."""
        if self._error is not None or not data:
            return
        pos = self._pos
        if pos:
            del self._buf[:pos]
            self._pos = 0
            self._scan -= pos
        self._buf += data

    def next_reply(self) -> object:
        """Return the next complete reply, or :data:`NOT_ENOUGH_DATA`.

        Error handling: raises :class:`ProtocolError` on malformed input, and
        again on every later call.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._parse_one()
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            self._pos = 0
            self._stack = []
            raise

    # -- the grammar ---------------------------------------------------------------------

    def _parse_one(self) -> object:
        """One complete reply, or NOT_ENOUGH_DATA (arrays resume on the stack).

        Error handling: raises :class:`ProtocolError` for anything outside strict RESP2.
        """
        buf = self._buf
        n = len(buf)
        p = self._pos
        stack = self._stack
        try:
            while True:
                if p >= n:
                    return NOT_ENOUGH_DATA
                kind = buf[p]
                # Fast path for a "$", "*" or ":" line of plain digits ending in CRLF, all buffered
                # (see _DIGITS_MAX); anything else finds its CRLF and takes string2ll() below.
                number = -1
                nl = -1
                if kind in (_DOLLAR, _STAR, _COLON):
                    q = p + 1
                    stop = q + _DIGITS_MAX if q + _DIGITS_MAX < n - 1 else n - 1
                    digits = 0
                    while q < stop:
                        c = buf[q]
                        if c < _ZERO or c > _NINE:
                            break
                        digits = digits * 10 + (c - _ZERO)
                        q += 1
                    if (
                        q < stop
                        and buf[q] == _CR
                        and buf[q + 1] == _LF
                        and q > p + 1
                        and (buf[p + 1] != _ZERO or q == p + 2)
                    ):
                        nl = q
                        number = digits
                if nl < 0:
                    scan = self._scan
                    nl = buf.find(_CRLF, scan if scan > p else p)
                    if nl < 0:
                        self._scan = max(p, n - 1)  # a "\r" at the end may meet its "\n" next
                        return NOT_ENOUGH_DATA
                value: object
                if kind == _DOLLAR:
                    length = number if number >= 0 else string2ll(buf[p + 1 : nl])
                    if length is None or length < -1:
                        raise ProtocolError("Protocol error: invalid bulk length")
                    if length == -1:
                        value = None
                        p = nl + 2
                    else:
                        start = nl + 2
                        end = start + length
                        if end + 2 > n:
                            self._scan = nl  # the header line is found again at once
                            return NOT_ENOUGH_DATA
                        if buf[end] != _CR or buf[end + 1] != _LF:
                            raise ProtocolError("Protocol error: bulk string not followed by CRLF")
                        data = bytes(buf[start:end])
                        value = data.decode("utf-8", "replace") if self._decode else data
                        p = end + 2
                elif kind == _PLUS:
                    line = bytes(buf[p + 1 : nl])
                    common = _COMMON_STATUS.get(line)
                    value = common[1] if common is not None else SimpleString(line.decode("utf-8", "replace"))
                    p = nl + 2
                elif kind == _COLON:
                    value = number if number >= 0 else string2ll(buf[p + 1 : nl])
                    if value is None:
                        raise ProtocolError("Protocol error: invalid integer reply")
                    p = nl + 2
                elif kind == _MINUS:
                    value = ErrorReply(buf[p + 1 : nl].decode("utf-8", "replace"))
                    p = nl + 2
                elif kind == _STAR:
                    count = number if number >= 0 else string2ll(buf[p + 1 : nl])
                    if count is None or count < -1:
                        raise ProtocolError("Protocol error: invalid multibulk length")
                    p = nl + 2
                    if count > 0:
                        stack.append(([], count))
                        continue
                    value = None if count == -1 else []
                else:
                    raise ProtocolError(f"Protocol error: got {chr(kind)!r} as reply type byte")
                # Attach the value to the innermost open array, closing full ones.
                while stack:
                    items, expected = stack[-1]
                    items.append(value)
                    if len(items) < expected:
                        break
                    stack.pop()
                    value = items
                else:
                    return value
        finally:
            self._pos = p
