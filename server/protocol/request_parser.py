"""Incremental RESP2 request parser: bytes in, argument lists out, exactly as Redis.

This is Redis's own request reader (``src/networking.c``: ``processInputBuffer``,
``processInlineBuffer``, ``processMultibulkBuffer``; ``sdssplitargs`` for inline
quoting) redone as a sans-IO state machine. A request whose first byte is
``*`` is a multibulk (``*N`` then ``N`` times ``$len`` + data); anything else is
an inline line ended by ``\\n`` (one preceding ``\\r`` is dropped), split like
redis-cli splits what you type. Empty lines, blank lines, ``*0`` and ``*-1``
(any count <= 0) are no request at all.

Redis quirks matched on purpose (each checked against redis-server 7.0.15):

* Lines are found the way Redis's ``strchr()`` finds them: a multibulk header
  or ``$len`` line ends at the first ``\\r``, and the byte after it is skipped
  *whatever it is* (``*1\\rX$4\\r\\nPING\\r\\n`` is a PING); a bulk's two trailing
  bytes are skipped unchecked too (``$4\\r\\nPINGxy`` is fine). A NUL byte stops
  ``strchr()``, so a line with a NUL before its end never ends: Redis waits and
  then fails with the "too big" error once more than 64 KiB are buffered.
* Integers follow ``string2ll``: ``*+1``, ``*01``, ``*-0``, ``* 1`` are
  invalid; ``*-5`` is a valid count that means "no request".
* ``expected '$', got 'X'`` reports the raw byte; Redis (and the encoder)
  turn a CR or LF there into a space. ``message`` is text, so a byte above
  0x7F is held as its ``surrogateescape`` character (U+DC80 + its value
  - 0x80), which :func:`~server.protocol.reply.encode_error` sends as the raw
  byte, as Redis does.
* Before AUTH (:attr:`RequestParser.auth_required`) Redis caps a multibulk at
  10 elements and a bulk at 16 KiB with "unauthenticated" wording, checked
  after the ordinary limits.

One deliberate difference: Redis applies the 64 KiB header limit only when a
``read()`` ends without a line end, so whether a 70 KiB line is "too big" or
"invalid" depends on its TCP segmentation. Here it is decided as if bytes
arrived one at a time (the line end must lie within :data:`MAX_INLINE_SIZE`
+ 1 bytes), so the result never depends on chunking.

One grammar over one buffer: every request, whatever its shape or chunking,
goes through the same state machine over :attr:`RequestParser._buf`. The
same source is also compiled with mypyc where a C compiler was available
(:mod:`server.protocol.cores` picks one core once, at import); both cores
run the same protocol tests. Measurements and the decision that removed the
hiredis and chunk-prefix fast paths: ``docs/decisions.md`` (issue 11 item 5).

Error handling: every malformed input raises :class:`ProtocolError` whose
``message`` is Redis's reply text; the error is sticky (every later call
raises it again, and :meth:`RequestParser.feed` discards data) because a
framing error cannot be resynchronised: answer it and close, as Redis does.
:meth:`RequestParser.parse_all` first returns the requests that preceded the
error, then raises on the next call. Nothing else is ever raised for any
input.
"""

from __future__ import annotations

import sys
from itertools import islice
from typing import Final

from server.protocol._redis_text import split_args, string2ll
from server.protocol.errors import ProtocolError
from server.protocol.limits import (
    MAX_BULK_LENGTH,
    MAX_INLINE_SIZE,
    MAX_MULTIBULK_LENGTH,
    UNAUTHENTICATED_MAX_BULK_LENGTH,
    UNAUTHENTICATED_MAX_MULTIBULK_LENGTH,
)

# Redis's reply texts (addReplyError adds the "ERR " prefix).
TOO_BIG_INLINE: Final = "ERR Protocol error: too big inline request"
TOO_BIG_MBULK: Final = "ERR Protocol error: too big mbulk count string"
TOO_BIG_BULK: Final = "ERR Protocol error: too big bulk count string"
UNBALANCED_QUOTES: Final = "ERR Protocol error: unbalanced quotes in request"
INVALID_MBULK: Final = "ERR Protocol error: invalid multibulk length"
INVALID_BULK: Final = "ERR Protocol error: invalid bulk length"
UNAUTH_MBULK: Final = "ERR Protocol error: unauthenticated multibulk length"
UNAUTH_BULK: Final = "ERR Protocol error: unauthenticated bulk length"
EXPECTED_DOLLAR: Final = "ERR Protocol error: expected '$', got '%s'"

# The line end must lie within this many bytes of the line's start.
_WINDOW: Final = MAX_INLINE_SIZE + 1
# _scan value meaning "a NUL was seen: this line can never end" (see _line_end()).
_BLOCKED: Final = sys.maxsize
_NO_LIMIT: Final = sys.maxsize
_STAR: Final = 0x2A
_DOLLAR: Final = 0x24
_ZERO: Final = 0x30
_NINE: Final = 0x39
_CR_BYTE: Final = 0x0D
#: Most digits the header fast path reads: 18 digits always fit a machine integer, so the
#: compiled core computes the value without big-integer arithmetic; longer texts (and every oddity)
#: take string2ll().
_DIGITS_MAX: Final = 18
_CR: Final = b"\r"
_LF: Final = b"\n"
_NUL: Final = b"\x00"



class RequestParser:
    """Feed it bytes, take requests (``list[bytes]``) out; see the module docstring.

    ``max_bulk_length`` and ``max_multibulk_length`` bound one argument and the
    argument count (answered with Redis's "invalid bulk/multibulk length");
    ``auth_required`` adds Redis's pre-AUTH caps.
    """

    __slots__ = (
        "_args",
        "_auth_required",
        "_buf",
        "_bulklen",
        "_cap_bulk",
        "_cap_count",
        "_max_bulk",
        "_max_count",
        "_partial_bytes",
        "_pos",
        "_remaining",
        "_scan",
        "error",
        "held",
    )

    def __init__(
        self,
        max_bulk_length: int = MAX_BULK_LENGTH,
        max_multibulk_length: int = MAX_MULTIBULK_LENGTH,
        *,
        auth_required: bool = False,
    ) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the unparsed bytes in _buf
        self._args: list[bytes] | None = None  # arguments of a half-read multibulk
        self._remaining = 0  # elements that multibulk still expects
        self._bulklen = -1  # -1: a "$len" line comes next; else the data length awaited
        self._partial_bytes = 0  # bytes held in _args
        self._scan = 0  # the current line has no end before this index (or _BLOCKED)
        #: The protocol error found, once there is one (sticky); :attr:`failed` says the same.
        self.error: ProtocolError | None = None
        #: :attr:`buffered` as of the last feed or parse: a plain attribute, read once per chunk by the
        #: front ends (a property call there costs more than the parse of a small request).
        self.held = 0
        self._max_bulk = self._max_count = self._cap_bulk = self._cap_count = 0
        self._auth_required = auth_required
        self.set_limits(max_bulk_length, max_multibulk_length)

    # -- configuration -------------------------------------------------------------------

    def set_limits(self, max_bulk_length: int, max_multibulk_length: int) -> None:
        """Change the argument length and count limits for the requests parsed from now on.

        Exceeding them gives Redis's "invalid bulk length" / "invalid multibulk
        length". To reproduce Redis's pre-AUTH behaviour, with its
        "unauthenticated ..." wording, set :attr:`auth_required` instead.
        """
        if max_bulk_length < 0 or max_multibulk_length < 0:
            raise ValueError("limits must be >= 0")
        self._max_bulk = max_bulk_length
        self._max_count = max_multibulk_length
        self._update_caps()

    @property
    def auth_required(self) -> bool:
        """While True, Redis's pre-AUTH caps (10 arguments, 16 KiB each) apply too."""
        return self._auth_required

    @auth_required.setter
    def auth_required(self, value: bool) -> None:
        self._auth_required = bool(value)
        self._update_caps()

    def _update_caps(self) -> None:
        # The tightest limits in force: one comparison per header; the exact
        # message (ordinary or "unauthenticated") is picked only on failure.
        self._cap_bulk, self._cap_count = self._max_bulk, self._max_count
        if self._auth_required:
            self._cap_bulk = min(self._cap_bulk, UNAUTHENTICATED_MAX_BULK_LENGTH)
            self._cap_count = min(self._cap_count, UNAUTHENTICATED_MAX_MULTIBULK_LENGTH)

    @property
    def failed(self) -> bool:
        """True once a protocol error was found (raised, or due from the next parse call)."""
        return self.error is not None

    @property
    def buffered(self) -> int:
        """Bytes held for requests not yet returned (unparsed input plus half-read arguments).

        A server compares this with its query-buffer cap after each feed.
        """
        return len(self._buf) - self._pos + self._partial_bytes

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Consumed bytes are dropped here, so memory stays bounded.

        After a protocol error the data is discarded: the connection is about
        to be closed and nothing more will be parsed.
        """
        if self.error is not None or not data:
            return
        buf = self._buf
        pos = self._pos
        if pos:
            # bytearray deletes a prefix by moving its start pointer (O(1)),
            # shrinking the allocation only once most of it is free.
            del buf[:pos]
            self._pos = 0
            if self._scan != _BLOCKED:
                self._scan -= pos
        buf += data
        self.held = len(buf) - self._pos + self._partial_bytes

    # -- output --------------------------------------------------------------------------

    def next_request(self) -> list[bytes] | None:
        """Return the next complete request, or ``None`` when more bytes are needed.

        Error handling: raises :class:`ProtocolError` (sticky) on malformed input.
        """
        out: list[list[bytes]] = []
        self._run(out, 1)
        return out[0] if out else None

    def parse_chunk(self, data: bytes | bytearray | memoryview) -> list[list[bytes]]:
        """``feed(data)`` then ``parse_all()``: the one call a server makes per read chunk.

        Error handling: as :meth:`parse_all` (good requests first, the error on the next call).
        """
        self.feed(data)
        return self.parse_all()

    def parse_all(self) -> list[list[bytes]]:
        """Return every complete request available now (possibly none).

        Error handling: when a protocol error follows some good requests, those
        are returned and the error is raised by the next call (so a server can
        answer them, then the error, then close, as Redis does); with nothing
        before it, it is raised at once. The error is sticky.
        """
        out: list[list[bytes]] = []
        self._run(out, _NO_LIMIT)
        return out

    def _run(self, out: list[list[bytes]], limit: int) -> None:
        if self.error is not None:
            raise self.error
        try:
            self._parse(out, limit)
        except ProtocolError as exc:
            # Sticky from now on; drop everything held, the connection is done.
            self.error = exc
            self._buf = bytearray()
            self._pos = 0
            self._args = None
            self._partial_bytes = 0
            if not out:
                raise
        finally:
            self.held = len(self._buf) - self._pos + self._partial_bytes

    # -- the grammar ---------------------------------------------------------------------

    def _parse(self, out: list[list[bytes]], limit: int) -> None:
        """Parse requests into ``out`` until it holds ``limit`` of them or more data is needed.

        Error handling: raises :class:`ProtocolError`; :meth:`_run` makes it sticky.
        """
        held = self._buf
        n = len(held)
        p = self._pos
        args = self._args
        if args is not None and self._bulklen >= 0:
            if p + self._bulklen + 2 > n:
                return  # still waiting for the data of a bulk argument: nothing to copy or parse yet
        elif self._scan > p and p < n:
            # An earlier call stopped on this line, searched up to _scan without its end: look on from
            # there before copying anything, so a line sent a byte at a time is neither copied nor
            # rescanned per byte (raises as the grammar below would for a line too long).
            if args is not None:
                waiting = self._line_end(p, self._scan, _CR, TOO_BIG_BULK) < 0
            elif held[p] == _STAR:
                waiting = self._line_end(p, self._scan, _CR, TOO_BIG_MBULK) < 0
            else:
                waiting = self._line_end(p, self._scan, _LF, TOO_BIG_INLINE) < 0
            if waiting:
                return
        # The grammar reads an immutable copy of the buffer: compiled, indexing and slicing bytes are
        # C primitives where a bytearray's go through the generic object protocol (boxing each byte and
        # index), and an argument is one slice instead of a slice plus a copy to bytes. The copy is of
        # what is buffered and not yet parsed: whole requests, plus at most one incomplete line or the
        # bulk whose data has all arrived (the line above returns before that).
        buf = bytes(held)
        scan = self._scan
        cap_bulk = self._cap_bulk
        cap_count = self._cap_count
        find = buf.find
        window = _WINDOW
        if args is None:
            remaining = 0
            bulklen = -1
            done_before = 0
        else:
            remaining = self._remaining
            bulklen = self._bulklen
            done_before = len(args)
        try:
            while True:
                if args is None:
                    # ---- start of a request
                    if p >= n:
                        return
                    if buf[p] != _STAR:
                        # ---- inline request
                        s = scan if scan > p else p
                        nl = find(_LF, s, p + window)
                        if nl < 0 or find(_NUL, s, nl) >= 0:
                            nl = self._line_end(p, s, _LF, TOO_BIG_INLINE)
                            if nl < 0:
                                return
                        end = nl - 1 if nl > p and buf[nl - 1] == 0x0D else nl
                        argv = split_args(buf[p:end])
                        if argv is None:
                            raise ProtocolError(UNBALANCED_QUOTES)
                        p = nl + 1
                        if argv:
                            out.append(argv)
                            if len(out) >= limit:
                                return
                        continue
                    # ---- multibulk header "*N"
                    # Fast path: plain digits, "\r" and the byte after it all buffered (see _DIGITS_MAX).
                    q = p + 1
                    stop = q + _DIGITS_MAX if q + _DIGITS_MAX < n - 1 else n - 1
                    value = 0
                    while q < stop:
                        c = buf[q]
                        if c < _ZERO or c > _NINE:
                            break
                        value = value * 10 + (c - _ZERO)
                        q += 1
                    if q < stop and buf[q] == _CR_BYTE and q > p + 1 and (buf[p + 1] != _ZERO or q == p + 2):
                        nl = q
                        count = value
                    else:
                        s = scan if scan > p else p
                        nl = find(_CR, s, p + window)
                        if nl < 0 or nl + 1 >= n:
                            nl = self._line_end(p, s, _CR, TOO_BIG_MBULK)
                            if nl < 0:
                                return
                        # string2ll() has Redis's exact rules (and refuses long texts before int() could choke).
                        parsed = string2ll(buf[p + 1 : nl])
                        if parsed is None:
                            if self._nul_blocks(p, nl, TOO_BIG_MBULK):
                                return
                            raise ProtocolError(INVALID_MBULK)
                        count = parsed
                    if count > cap_count:
                        # Redis checks its ordinary limit first, then the pre-AUTH one.
                        raise ProtocolError(INVALID_MBULK if count > self._max_count else UNAUTH_MBULK)
                    p = nl + 2
                    if count <= 0:
                        continue  # "*0", "*-1": no request
                    args = []
                    remaining = count
                    done_before = 0
                    self._partial_bytes = 0
                # ---- elements of a multibulk
                while remaining:
                    if bulklen < 0:
                        # Fast path: "$", plain digits, "\r" and the byte after it all buffered.
                        q = p + 1
                        stop = q + _DIGITS_MAX if q + _DIGITS_MAX < n - 1 else n - 1
                        value = 0
                        while q < stop:
                            c = buf[q]
                            if c < _ZERO or c > _NINE:
                                break
                            value = value * 10 + (c - _ZERO)
                            q += 1
                        if (
                            q < stop
                            and buf[q] == _CR_BYTE
                            and buf[p] == _DOLLAR
                            and q > p + 1
                            and (buf[p + 1] != _ZERO or q == p + 2)
                        ):
                            nl = q
                            bulklen = value
                        else:
                            s = scan if scan > p else p
                            nl = find(_CR, s, p + window)
                            if nl < 0 or nl + 1 >= n:
                                nl = self._line_end(p, s, _CR, TOO_BIG_BULK)
                                if nl < 0:
                                    return
                            if buf[p] != _DOLLAR:
                                if self._nul_blocks(p, nl, TOO_BIG_BULK):
                                    return
                                raise ProtocolError(
                                    EXPECTED_DOLLAR % bytes((buf[p],)).decode("utf-8", "surrogateescape")
                                )
                            parsed = string2ll(buf[p + 1 : nl])
                            if parsed is None:
                                if self._nul_blocks(p, nl, TOO_BIG_BULK):
                                    return
                                raise ProtocolError(INVALID_BULK)
                            if parsed < 0:
                                raise ProtocolError(INVALID_BULK)
                            bulklen = parsed
                        if bulklen > cap_bulk:
                            raise ProtocolError(INVALID_BULK if bulklen > self._max_bulk else UNAUTH_BULK)
                        p = nl + 2
                    end = p + bulklen
                    if end + 2 > n:
                        return
                    # The two bytes after the data are skipped unchecked, as in Redis.
                    args.append(buf[p:end])
                    p = end + 2
                    bulklen = -1
                    remaining -= 1
                out.append(args)
                args = None
                self._partial_bytes = 0
                if len(out) >= limit:
                    return
        finally:
            self._pos = p
            self._args = args
            self._remaining = remaining
            self._bulklen = bulklen
            if args is not None and len(args) > done_before:
                self._partial_bytes += sum(map(len, islice(args, done_before, None)))

    def _line_end(self, p: int, s: int, term: bytes, too_big: str) -> int:
        """Slow path of the line search for the line starting at ``p``; -1 means wait.

        Searches on from ``s`` (everything before was searched by an earlier
        call), within the window, stopping at a NUL as ``strchr()`` does. A
        ``\\r`` line end also needs the byte after it to be buffered.

        Error handling: raises ``too_big`` when no usable line end is within
        the window and more than :data:`MAX_INLINE_SIZE` bytes are buffered.
        """
        buf = self._buf
        n = len(buf)
        if s != _BLOCKED:
            limit = min(n, p + _WINDOW)
            nl = buf.find(term, s, limit)
            if buf.find(_NUL, s, limit if nl < 0 else nl) < 0:
                if nl >= 0 and (term == _LF or nl + 1 < n):
                    return nl
                if nl < 0 and n - p <= MAX_INLINE_SIZE:
                    self._scan = limit
                    return -1
                if nl >= 0:
                    self._scan = nl  # found, but the byte after "\r" is not here yet
                    return -1
                raise ProtocolError(too_big)
            self._scan = _BLOCKED
        if n - p > MAX_INLINE_SIZE:
            raise ProtocolError(too_big)
        return -1

    def _nul_blocks(self, p: int, nl: int, too_big: str) -> bool:
        """For an invalid header line: True (wait) if a NUL hides its line end from ``strchr()``.

        Redis never sees such a line end, so instead of the "invalid" error it
        keeps waiting, and fails with ``too_big`` once the buffer passes 64 KiB.
        """
        if self._buf.find(_NUL, p, nl) < 0:
            return False
        self._scan = _BLOCKED
        if len(self._buf) - p > MAX_INLINE_SIZE:
            raise ProtocolError(too_big)
        return True
