"""Incremental RESP2 and RESP3 reply parser for clients: bytes in, Python values out.

=====================  ===================================================
on the wire            value returned by :meth:`ReplyParser.next_reply`
=====================  ===================================================
``+OK``                ``SimpleString("OK")``
``-ERR x``             ``ErrorReply("ERR x")`` (returned, never raised)
``:42``                ``42``
``$5 hello``           ``b"hello"`` (``"hello"`` with ``decode=True``)
``$-1`` / ``*-1``      ``None``
``*N ...``             ``list`` of the above, nested as sent
RESP3:
``_``                  ``None``
``#t`` / ``#f``        ``True`` / ``False``
``,1.5``               ``1.5`` (``float``; ``inf``, ``-inf``, ``nan`` too)
``(123...``            ``int`` (a big number)
``!N ...``             ``ErrorReply`` (a blob error)
``=N txt:...``         :class:`VerbatimBytes` without its format prefix
                       (:class:`~server.protocol.reply.Verbatim`, a ``str``,
                       with ``decode=True``)
``%N ...``             ``dict`` (a key that is an aggregate becomes a tuple)
``~N ...``             :class:`~server.protocol.reply.SetReply` (a ``list``,
                       in the server's order)
``>N ...``             :class:`~server.protocol.reply.PushReply` (a ``list``)
``|N ...``             nothing: attributes are dropped, the value after
                       them is returned, as redis-py does
=====================  ===================================================

Status and error lines are always text (``SimpleString``/``ErrorReply`` are
``str``), decoded as UTF-8 with undecodable bytes replaced, as hiredis does;
``decode=True`` decodes bulk strings the same way. The grammar is strict:
lines end with ``\\r\\n``, integers and lengths follow Redis's
``string2ll`` (no ``+``, no leading zeros), a bulk must be followed by
``\\r\\n``, and only the type bytes above are known (RESP3's streamed
strings and aggregates, which Redis never sends, are refused).
There is no size cap: a client trusts its server; watch
:attr:`ReplyParser.buffered` if not.

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
from server.protocol.reply import ErrorReply, PushReply, SetReply, SimpleString, Verbatim, VerbatimBytes

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

# RESP3's type bytes.
_UNDERSCORE: Final = 0x5F
_HASH: Final = 0x23
_COMMA: Final = 0x2C
_LPAREN: Final = 0x28
_BANG: Final = 0x21
_EQUALS: Final = 0x3D
_PERCENT: Final = 0x25
_TILDE: Final = 0x7E
_GREATER: Final = 0x3E
_PIPE: Final = 0x7C
#: Aggregate type bytes -> elements per unit of their count (a map's count is in key/value pairs).
_AGGREGATES: Final = {_STAR: 1, _TILDE: 1, _GREATER: 1, _PERCENT: 2, _PIPE: 2}
#: Bulk-shaped type bytes: a length line, then that many bytes and CRLF.
_BLOBS: Final = frozenset({_DOLLAR, _EQUALS, _BANG})
#: Verbatim strings start with a three-letter format and a colon (``txt:``), dropped from the value.
VERBATIM_PREFIX_LENGTH: Final = 4

class ReplyParser:
    """Feed it what the server sent, take replies out; see the module docstring."""

    __slots__ = (
        "_buf",
        "_decode",
        "_error",
        "_need",
        "_pos",
        "_scan",
        "_stack",
        "_view",
    )

    def __init__(self, decode: bool = False) -> None:
        self._decode = decode
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0  # no CRLF in the current line before this index
        #: Bytes the buffer must hold before the reply at _pos can be complete (a bulk's data); 0: unknown.
        self._need = 0
        #: An immutable copy of _buf, made once per feed when there is something to parse (see _parse_one).
        self._view: bytes | None = None
        # Aggregates being filled, outermost first: (items, elements expected, type byte).
        self._stack: list[tuple[list[object], int, int]] = []
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
            self._need -= pos
        self._buf += data
        self._view = None

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
            self._view = None
            self._pos = 0
            self._stack = []
            raise

    # -- the grammar ---------------------------------------------------------------------

    def _parse_one(self) -> object:
        """One complete reply, or NOT_ENOUGH_DATA (arrays resume on the stack).

        Error handling: raises :class:`ProtocolError` for anything outside strict RESP2/RESP3.
        """
        p = self._pos
        buf = self._view
        if buf is None:
            held = self._buf
            n = len(held)
            if n < self._need:
                return NOT_ENOUGH_DATA  # still waiting for a bulk's data: nothing to copy or parse yet
            if self._scan > p and held.find(_CRLF, self._scan) < 0:
                self._scan = max(p, n - 1)  # the line searched before still has no end: no copy either
                return NOT_ENOUGH_DATA
            # The grammar reads an immutable copy, made once per feed: compiled, indexing and slicing bytes
            # are C primitives where a bytearray's go through the generic object protocol.
            buf = self._view = bytes(held)
            self._need = 0
        n = len(buf)
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
                if kind in _BLOBS:
                    length = number if number >= 0 else string2ll(buf[p + 1 : nl])
                    if length is None or length < -1 or (length == -1 and kind != _DOLLAR):
                        raise ProtocolError("Protocol error: invalid bulk length")
                    if length == -1:
                        value = None
                        p = nl + 2
                    else:
                        start = nl + 2
                        end = start + length
                        if end + 2 > n:
                            self._scan = nl  # the header line is found again at once
                            self._need = end + 2
                            return NOT_ENOUGH_DATA
                        if buf[end] != _CR or buf[end + 1] != _LF:
                            raise ProtocolError("Protocol error: bulk string not followed by CRLF")
                        data = buf[start:end]
                        if kind == _DOLLAR:
                            value = data.decode("utf-8", "replace") if self._decode else data
                        else:
                            value = _blob3(kind, data, self._decode)
                        p = end + 2
                elif kind == _PLUS:
                    line = buf[p + 1 : nl]
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
                elif kind in _AGGREGATES:
                    count = number if number >= 0 else string2ll(buf[p + 1 : nl])
                    if count is None or count < -1 or (count == -1 and kind != _STAR):
                        raise ProtocolError("Protocol error: invalid multibulk length")
                    p = nl + 2
                    if count > 0:
                        stack.append(([], count * _AGGREGATES[kind], kind))
                        continue
                    if kind == _PIPE:
                        continue  # an empty attribute: the value follows
                    value = None if count == -1 else [] if kind == _STAR else _aggregate(kind, [])
                else:
                    # nl == p when the type byte is the "\r" of a CRLF; a reversed slice is empty in Python, but
                    # mypyc's bytes slice (1.x) fails on it with SystemError: give it the empty line itself.
                    value = _simple3(kind, buf[p + 1 : nl] if nl > p else b"")
                    p = nl + 2
                # Attach the value to the innermost open aggregate, closing full ones.
                while stack:
                    items, expected, kind = stack[-1]
                    items.append(value)
                    if len(items) < expected:
                        break
                    stack.pop()
                    if kind == _PIPE:
                        break  # an attribute is complete: dropped, the value it describes comes next
                    value = items if kind == _STAR else _aggregate(kind, items)
                else:
                    return value
        finally:
            self._pos = p


def _simple3(kind: int, line: bytes) -> object:
    """A RESP3 one-line value: null, boolean, double or big number.

    Error handling: any other type byte, or a malformed value, raises :class:`ProtocolError`.
    """
    if kind == _UNDERSCORE and not line:
        return None
    if kind == _HASH and line in (b"t", b"f"):
        return line == b"t"
    if kind == _COMMA:
        try:
            return float(line)
        except ValueError:
            raise ProtocolError("Protocol error: invalid double reply") from None
    if kind == _LPAREN:
        try:
            return int(line)
        except ValueError:
            raise ProtocolError("Protocol error: invalid big number reply") from None
    if kind in (_UNDERSCORE, _HASH):
        raise ProtocolError(f"Protocol error: invalid {chr(kind)!r} reply")
    raise ProtocolError(f"Protocol error: got {chr(kind)!r} as reply type byte")


def _blob3(kind: int, data: bytes, decode: bool) -> object:
    """A RESP3 blob error (``!``) or verbatim string (``=``), from its payload."""
    if kind == _BANG:
        return ErrorReply(data.decode("utf-8", "replace"))
    text = data[VERBATIM_PREFIX_LENGTH:]
    return Verbatim(text.decode("utf-8", "replace")) if decode else VerbatimBytes(text)


def _aggregate(kind: int, items: list[object]) -> object:
    """A complete RESP3 aggregate other than an array: a map, a set or a push message."""
    if kind == _PERCENT:
        keys = [tuple(key) if isinstance(key, list) else key for key in items[::2]]
        return dict(zip(keys, items[1::2], strict=True))
    return SetReply(items) if kind == _TILDE else PushReply(items)
