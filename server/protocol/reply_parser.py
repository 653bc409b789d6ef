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
RESP3 values are never proven by hiredis (their RESP2 re-encoding cannot
match the input), so they always take the pure path. There is no size
cap: a client trusts its server; watch :attr:`ReplyParser.buffered` if not.

hiredis and status replies: ``hiredis.Reader`` returns ``+OK`` as ``b"OK"``,
the same as the bulk ``$2 OK``, so on its own it cannot tell the two apart.
The pure parser is therefore the reference, and hiredis is only used through
the prove-or-fall-back scheme of :mod:`server.protocol._hiredis_fast`: each
value it returns is re-encoded (a top-level status as ``+line``, anything
else with :func:`~server.protocol.reply.encode_reply`) and compared with the
bytes at the parser's position. A status *nested* in an array (MULTI/EXEC
results), a ``*-1``, or any lossy decode therefore fails the proof and is
parsed by the pure code, so both paths give identical values and types for
every input. Measured with ``python -m server.protocol._bench`` (best of 5,
2-vCPU build container when otherwise idle, about 5 % between runs)::

    replies per second                                 pure     hiredis path
    100k "+OK", 64 KiB feeds                         1 744 k    2 768 k
    10k arrays of 10 bulk strings, 64 KiB feeds        116 k      457 k
    100k "$5 value", 64 KiB feeds                    1 051 k    1 060 k (a wash)
    10k 1 kB bulk strings, 64 KiB feeds                967 k    = pure (values above BIG_ELEMENT)
    one "+OK" per feed                               1 314 k    = pure (below HIREDIS_MIN_REGION)

so hiredis is used for regions of :data:`HIREDIS_MIN_REGION` bytes or more
and stops at the first large value.

Error handling: malformed input raises :class:`ProtocolError` (sticky: the
stream cannot be resynchronised, close the connection). ``-ERR`` replies are
values, not exceptions.
"""

from __future__ import annotations

from typing import Any, Final

from server.protocol import _hiredis_fast
from server.protocol._redis_text import string2ll
from server.protocol.errors import ProtocolError
from server.protocol.reply import ErrorReply, PushReply, SetReply, SimpleString, Verbatim, encode_reply


class VerbatimBytes(bytes):
    """A RESP3 verbatim string (``=N txt:...``) as bytes, its three-letter format dropped.

    A subclass only so that a display can tell it from a bulk string (redis-cli
    prints verbatim text as it is); everywhere else it is ``bytes``.
    """

    __slots__ = ()


class _NotEnoughData:
    """The type of :data:`NOT_ENOUGH_DATA`; a singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_ENOUGH_DATA"


#: Returned by :meth:`ReplyParser.next_reply` while a reply is incomplete.
NOT_ENOUGH_DATA: Final = _NotEnoughData()

#: Fewest unparsed bytes worth handing to hiredis (below it a fresh reader
#: and the proof cost more than the pure parser; see the module docstring).
HIREDIS_MIN_REGION: Final = 128

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
        "_hr_reader",
        "_hr_region_end",
        "_hr_resume",
        "_hr_reusable",
        "_hr_spare",
        "_pos",
        "_scan",
        "_stack",
        "_use_hiredis",
    )

    def __init__(self, decode: bool = False, use_hiredis: bool | None = None) -> None:
        if use_hiredis and not _hiredis_fast.AVAILABLE:
            raise RuntimeError("use_hiredis=True but the hiredis package is not installed")
        self._use_hiredis = _hiredis_fast.AVAILABLE if use_hiredis is None else use_hiredis
        self._decode = decode
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0  # no CRLF in the current line before this index
        # Aggregates being filled, outermost first: (items, elements expected, type byte).
        self._stack: list[tuple[list[object], int, int]] = []
        self._error: ProtocolError | None = None
        self._hr_reader: Any = None
        self._hr_spare: Any = None
        self._hr_region_end = 0
        self._hr_resume = 0
        self._hr_reusable = False  # whether _hr_reader may become _hr_spare

    @property
    def uses_hiredis(self) -> bool:
        """Whether the hiredis fast path is enabled for this parser."""
        return self._use_hiredis

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
            self._hr_region_end -= pos
            self._hr_resume -= pos
        self._buf += data

    def next_reply(self) -> object:
        """Return the next complete reply, or :data:`NOT_ENOUGH_DATA`.

        Error handling: raises :class:`ProtocolError` on malformed input, and
        again on every later call.
        """
        if self._error is not None:
            raise self._error
        try:
            while True:
                if self._hr_reader is not None:
                    reply = self._hiredis_one()
                    if reply is not NOT_ENOUGH_DATA:
                        return reply
                elif (
                    self._stack
                    or len(self._buf) - self._pos < HIREDIS_MIN_REGION  # cheap test first
                    or not self._hiredis_start()
                ):
                    return self._pure_one()
        except ProtocolError as exc:
            self._error = exc
            self._hr_reader = self._hr_spare = None
            self._buf = bytearray()
            self._pos = 0
            self._stack = []
            raise

    # -- hiredis fast path ---------------------------------------------------------------

    def _hiredis_start(self) -> bool:
        """Hand the unparsed region to hiredis if that is allowed and worth it."""
        if not self._use_hiredis:
            return False
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if pos < self._hr_resume or pos >= n:
            return False
        if n - pos < HIREDIS_MIN_REGION or _big_bulk(buf, pos):
            self._hr_resume = n  # the pure parser takes what is buffered
            return False
        end, resume = _hiredis_fast.fence(buf, pos, n)
        self._hr_resume = resume
        if end - pos < HIREDIS_MIN_REGION:
            return False
        reader = self._hr_spare
        if reader is None:
            kwargs: dict[str, object] = {"replyError": ErrorReply, "notEnoughData": NOT_ENOUGH_DATA}
            if self._decode:
                kwargs.update(encoding="utf-8", errors="replace")
            reader = _hiredis_fast.new_reader(**kwargs)
        self._hr_spare = None
        reader.feed(buf, pos, end - pos)
        self._hr_reader = reader
        self._hr_region_end = end
        self._hr_reusable = end - pos <= _hiredis_fast.REUSE_MAX_REGION
        return True

    def _hiredis_one(self) -> object:
        """One proven reply from hiredis, or NOT_ENOUGH_DATA after stopping the reader."""
        reader = self._hr_reader
        buf = self._buf
        pos = self._pos
        clean = False
        try:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                clean = pos == self._hr_region_end
            elif buf[pos] == _PLUS:
                # hiredis gives a status as bytes (or str); prove it is this very line.
                line = reply.encode() if isinstance(reply, str) else reply
                common = _COMMON_STATUS.get(line)
                if common is not None:
                    if buf.startswith(common[0], pos):
                        self._pos = pos + len(common[0])
                        return common[1]
                else:
                    wire = b"+" + line + _CRLF
                    if line.__class__ is bytes and _CRLF not in line and buf.startswith(wire, pos):
                        self._pos = pos + len(wire)
                        return SimpleString(line.decode("utf-8", "replace"))
            else:
                wire = _wire(reply)
                if buf.startswith(wire, pos):
                    self._pos = pos + len(wire)
                    size = len(reply) if reply.__class__ is list else 1
                    if len(wire) > _hiredis_fast.BIG_ELEMENT * max(size, 1):
                        self._hr_reader = None  # large values: pure is faster from here
                    return reply
        except Exception:
            pass  # hiredis's own protocol error, or a value encode_reply refuses: not provable
        self._hr_reader = None
        if clean and self._hr_reusable:
            self._hr_spare = reader
        return NOT_ENOUGH_DATA

    # -- pure path -----------------------------------------------------------------------

    def _pure_one(self) -> object:
        """The reference parser: one complete reply, or NOT_ENOUGH_DATA (arrays resume on the stack).

        Error handling: raises :class:`ProtocolError` for anything outside strict RESP2/RESP3.
        """
        buf = self._buf
        n = len(buf)
        p = self._pos
        stack = self._stack
        try:
            while True:
                if p >= n:
                    return NOT_ENOUGH_DATA
                scan = self._scan
                nl = buf.find(_CRLF, scan if scan > p else p)
                if nl < 0:
                    self._scan = max(p, n - 1)  # a "\r" at the end may meet its "\n" next
                    return NOT_ENOUGH_DATA
                kind = buf[p]
                value: object
                if kind in _BLOBS:
                    length = string2ll(buf[p + 1 : nl])
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
                            return NOT_ENOUGH_DATA
                        if buf[end : end + 2] != _CRLF:
                            raise ProtocolError("Protocol error: bulk string not followed by CRLF")
                        data = bytes(buf[start:end])
                        if kind == _DOLLAR:
                            value = data.decode("utf-8", "replace") if self._decode else data
                        else:
                            value = _blob3(kind, data, self._decode)
                        p = end + 2
                elif kind == _PLUS:
                    line = bytes(buf[p + 1 : nl])
                    common = _COMMON_STATUS.get(line)
                    value = common[1] if common is not None else SimpleString(line.decode("utf-8", "replace"))
                    p = nl + 2
                elif kind == _COLON:
                    value = string2ll(buf[p + 1 : nl])
                    if value is None:
                        raise ProtocolError("Protocol error: invalid integer reply")
                    p = nl + 2
                elif kind == _MINUS:
                    value = ErrorReply(buf[p + 1 : nl].decode("utf-8", "replace"))
                    p = nl + 2
                elif kind in _AGGREGATES:
                    count = string2ll(buf[p + 1 : nl])
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
                    value = _simple3(kind, bytes(buf[p + 1 : nl]))
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


def _wire(reply: object) -> bytes:
    """The canonical RESP2 encoding of a value hiredis returned, to prove it against the input.

    Flat arrays of bytes (the common case) take the fast request encoder;
    everything else the general :func:`~server.protocol.reply.encode_reply`.

    Error handling: raises :class:`TypeError` for values RESP2 cannot carry
    (a RESP3 map, say), which the caller treats as "not provable".
    """
    if reply.__class__ is list:
        try:
            return _hiredis_fast.canonical_request(reply)
        except TypeError:
            pass
    return encode_reply(reply)


def _big_bulk(buf: bytearray, pos: int) -> bool:
    """Whether the reply at ``pos`` is a bulk string longer than ``BIG_ELEMENT`` (pure is faster)."""
    if buf[pos] != _DOLLAR:
        return False
    nl = buf.find(b"\r", pos, pos + 22)
    text = buf[pos + 1 : nl] if nl > 0 else b""
    return text.isdigit() and int(text) > _hiredis_fast.BIG_ELEMENT
