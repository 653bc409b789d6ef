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

Performance. Pipelined multibulk requests go through hiredis's C reader when
it is installed, proved byte for byte (see :mod:`server.protocol._hiredis_fast`);
inline commands, small feeds, partial tails, odd framing and every error go
through the pure-Python code, which stays complete on its own
(``use_hiredis=False``). ``python -m server.protocol._bench``, best of 5, on
the 2-vCPU build container when otherwise idle (Python 3.11.7, hiredis 3.5.0;
about 5 % between runs)::

    requests per second                                  pure     hiredis path
    100k "*3 SET key value", 64 KiB feeds, parse_all     443 k    1 190 k
    same, one next_request() call per request            396 k      894 k
    4 such requests (132 bytes) per feed                 396 k      515 k
    one request per feed                                 339 k    = pure (below HIREDIS_MIN_REGION)
    100k inline "SET key value", 64 KiB feeds          1 317 k    = pure (inline is never hiredis)
    10k SETs of 5 kB values, 64 KiB feeds                336 k    = pure (values above BIG_ELEMENT)

hiredis wins from about three small requests per feed, hence
:data:`HIREDIS_MIN_REGION`; for large values (more than
:data:`~server.protocol._hiredis_fast.BIG_ELEMENT` bytes per element) and
requests still arriving the pure parser, which only slices, is as fast or
faster, so those skip hiredis. For scale, redis-server 7.0.15 itself serves
2.3 M SET/s on the same machine under ``redis-benchmark -t set -P 64`` (parse
*and* execute, in C, over loopback), 157 k/s with ``-c 50`` and no pipelining.

Error handling: every malformed input raises :class:`ProtocolError` whose
``message`` is Redis's reply text; the error is sticky (every later call
raises it again, and :meth:`RequestParser.feed` discards data) because a
framing error cannot be resynchronised: answer it and close, as Redis does.
:meth:`RequestParser.parse_all` first returns the requests that preceded the
error, then raises on the next call. Nothing else is ever raised for any
input.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from itertools import islice
from typing import Any, Final

from server.protocol import _hiredis_fast
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

#: Fewest unparsed bytes worth handing to hiredis. Below this, creating or
#: refilling a hiredis reader and proving its result costs more than the pure
#: parser spends on the one or two requests such a region holds (measured:
#: see the module docstring).
HIREDIS_MIN_REGION: Final = 128

# The line end must lie within this many bytes of the line's start.
_WINDOW: Final = MAX_INLINE_SIZE + 1
# _scan value meaning "a NUL was seen: this line can never end" (see _line_end()).
_BLOCKED: Final = sys.maxsize
_NO_LIMIT: Final = sys.maxsize
_STAR: Final = 0x2A
_DOLLAR: Final = 0x24
_ZERO: Final = 0x30
_CR: Final = b"\r"
_LF: Final = b"\n"
_NUL: Final = b"\x00"


#: Smallest chunk worth parsing with hiredis on the fast path: the shortest request (``*1\r\n$0\r\n\r\n``).
HIREDIS_FAST_MIN: Final = 10

#: Chunks shorter than this take the pure fast path even with hiredis: for one short request (PING is 14
#: bytes, a GET of a 16-byte key 39) the fence and the proof cost as much as hiredis saves. Measured per
#: chunk through Connection.data_received: PING 2.6 us pure vs 2.7 us hiredis; SET of 48 bytes 3.5 vs 3.2.
HIREDIS_FAST_MIN_CHUNK: Final = 40

#: One idle hiredis reader per thread for :meth:`RequestParser._hiredis_prefix`, shared by every parser in
#: that thread: the fast path uses a reader only within one call and keeps it only when it is empty, so
#: connections need not each hold one (a reader is about 1.1 KiB; idle connections cost 2.4 KiB in all).
_FAST_PATH_READER = threading.local()

#: Longest ``*N`` / ``$N`` header text (digits) the fast path handles; longer goes the ordinary way.
_FAST_HEADER_DIGITS: Final = 10


def _simple_multibulk_prefix(data: bytes, cap_count: int, cap_bulk: int) -> tuple[list[list[bytes]], int]:
    """The complete, simple multibulk requests at the start of ``data`` and the bytes they take.

    "Simple" is the shape every client library writes: ``*N\r\n`` with N >= 1
    in plain digits (no sign, no leading zero), then N times ``$L\r\n`` and L
    bytes of data followed by two bytes, all within the caps. Anything else
    (inline commands, ``*0``, a bare ``\r`` line end, a cap exceeded, a
    request cut short) stops the scan; the ordinary parser then takes over
    at that request, so every Redis quirk and error wording stays in one
    place. The two bytes after each bulk are skipped unchecked, as Redis does.
    """
    out: list[list[bytes]] = []
    n = len(data)
    find = data.find
    pos = 0
    while pos < n and data[pos] == _STAR:
        nl = find(b"\r\n", pos + 1, pos + 3 + _FAST_HEADER_DIGITS)
        text = data[pos + 1 : nl]
        if nl < 0 or not text.isdigit() or text[0] == _ZERO:
            break
        count = int(text)
        if count > cap_count:
            break
        p = nl + 2
        args: list[bytes] = []
        for _ in range(count):
            if p >= n or data[p] != _DOLLAR:
                return out, pos
            nl = find(b"\r\n", p + 1, p + 3 + _FAST_HEADER_DIGITS)
            text = data[p + 1 : nl]
            if nl < 0 or not text.isdigit() or (text[0] == _ZERO and len(text) > 1):
                return out, pos
            end = nl + 2 + int(text)
            if end + 2 > n or end - nl - 2 > cap_bulk:
                return out, pos
            args.append(data[nl + 2 : end])
            p = end + 2
        out.append(args)
        pos = p
    return out, pos


#: How a run of :func:`_take_proven` ended.
_LIMIT_REACHED: Final = "limit"  # ``limit`` requests taken; the reader may go on
_REGION_DONE: Final = "clean"  # the region is used up exactly: the reader is empty and may be reused
_STOPPED: Final = "stopped"  # an unprovable, capped, incomplete or large request: the pure parser goes on


def _take_proven(
    reader: Any,
    startswith: Any,
    pos: int,
    region_end: int,
    out: list[list[bytes]],
    limit: int,
    cap_count: int,
    cap_bulk: int,
) -> tuple[int, str]:
    """Take requests from a hiredis ``reader`` fed the bytes from ``pos`` to ``region_end``, proving each one.

    A request is taken only when its canonical encoding is exactly the bytes
    at ``pos`` (``startswith`` of the buffer or chunk it was fed from) and it
    is within the caps; the first that is not ends the run. Returns the new
    position and how the run ended. Shared by the buffer path
    (:meth:`RequestParser._hiredis_take`) and the read-chunk fast path
    (:meth:`RequestParser._hiredis_prefix`).
    """
    gets = reader.gets
    canonical = _hiredis_fast.canonical_request
    big = _hiredis_fast.BIG_ELEMENT
    try:
        while len(out) < limit:
            args = gets()
            if args.__class__ is not list:
                # NEED_MORE: the region is used up. Anything else (None for
                # "*-1", an int, an error object) is left to the pure path.
                return pos, _REGION_DONE if args is _hiredis_fast.NEED_MORE and pos == region_end else _STOPPED
            if not args or len(args) > cap_count:
                return pos, _STOPPED
            wire = canonical(args)
            if len(wire) > cap_bulk and max(map(len, args)) > cap_bulk:
                return pos, _STOPPED
            if not startswith(wire, pos):
                return pos, _STOPPED
            pos += len(wire)
            out.append(args)
            if len(wire) > big * len(args):
                return pos, _STOPPED  # large values: the pure parser is faster from here
    except Exception:
        return pos, _STOPPED  # hiredis's own protocol error, or a non-bytes element: not provable
    return pos, _LIMIT_REACHED


class RequestParser:
    """Feed it bytes, take requests (``list[bytes]``) out; see the module docstring.

    ``max_bulk_length`` and ``max_multibulk_length`` bound one argument and the
    argument count (answered with Redis's "invalid bulk/multibulk length");
    ``use_hiredis`` forces (True), forbids (False) or auto-detects (None) the
    hiredis fast path; ``auth_required`` adds Redis's pre-AUTH caps.
    """

    __slots__ = (
        "_args",
        "_auth_required",
        "_buf",
        "_bulklen",
        "_cap_bulk",
        "_cap_count",
        "_hr_reader",
        "_hr_region_end",
        "_hr_resume",
        "_hr_reusable",
        "_hr_spare",
        "_max_bulk",
        "_max_count",
        "_partial_bytes",
        "_pos",
        "_remaining",
        "_scan",
        "_use_hiredis",
        "error",
        "held",
    )

    def __init__(
        self,
        max_bulk_length: int = MAX_BULK_LENGTH,
        max_multibulk_length: int = MAX_MULTIBULK_LENGTH,
        use_hiredis: bool | None = None,
        *,
        auth_required: bool = False,
    ) -> None:
        if use_hiredis and not _hiredis_fast.AVAILABLE:
            raise RuntimeError("use_hiredis=True but the hiredis package is not installed")
        self._use_hiredis = _hiredis_fast.AVAILABLE if use_hiredis is None else use_hiredis
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
        self._hr_reader: Any = None  # hiredis reader working on a region
        self._hr_spare: Any = None  # an idle, empty reader kept for reuse
        self._hr_region_end = 0  # end of the region fed to _hr_reader
        self._hr_resume = 0  # the pure parser must reach this before hiredis is retried
        self._hr_reusable = False  # whether _hr_reader may become _hr_spare
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
        # The tightest limits in force; the hiredis path only needs to know
        # "within all limits or not", the pure path picks the exact message.
        self._cap_bulk, self._cap_count = self._max_bulk, self._max_count
        if self._auth_required:
            self._cap_bulk = min(self._cap_bulk, UNAUTHENTICATED_MAX_BULK_LENGTH)
            self._cap_count = min(self._cap_count, UNAUTHENTICATED_MAX_MULTIBULK_LENGTH)

    @property
    def failed(self) -> bool:
        """True once a protocol error was found (raised, or due from the next parse call)."""
        return self.error is not None

    @property
    def uses_hiredis(self) -> bool:
        """Whether the hiredis fast path is enabled for this parser."""
        return self._use_hiredis

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
            self._hr_region_end -= pos
            self._hr_resume -= pos
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

    def parse_chunk(self, data: bytes) -> list[list[bytes]]:
        """``feed(data)`` then ``parse_all()``, with a fast path for the common case.

        When nothing is buffered, the leading simple multibulk requests of
        ``data`` (short headers, counts and lengths within the caps, every
        byte present) are cut straight out of ``data`` without copying it into
        the buffer; the rest, if any, takes the ordinary path. A client that
        sends whole requests per write (redis-benchmark, redis-py, our
        clients) never leaves the fast path. With hiredis the prefix is parsed
        by hiredis straight from ``data`` and every request proven as on the
        hiredis path (:meth:`_hiredis_prefix`); without it, by
        :func:`_simple_multibulk_prefix`. The results are the same as
        ``feed`` + ``parse_all``, including the error contract: a protocol
        error after good requests is raised by the next call.
        """
        if self.error is None and self._args is None and self._pos == len(self._buf) and data[:1] == b"*":
            if self._use_hiredis and len(data) >= HIREDIS_FAST_MIN_CHUNK:
                out, used = self._hiredis_prefix(data)
            else:
                out, used = _simple_multibulk_prefix(data, self._cap_count, self._cap_bulk)
            if used == len(data):
                return out
            if used:
                data = data[used:]
                self.feed(data)
                # A ProtocolError here is sticky: the next call raises it, after these good requests are answered.
                with contextlib.suppress(ProtocolError):
                    out += self.parse_all()
                return out
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
            while len(out) < limit:
                if self._hr_reader is not None:
                    self._hiredis_take(out, limit)
                elif (
                    self._args is None
                    and self._use_hiredis
                    and len(self._buf) - self._pos >= HIREDIS_MIN_REGION  # cheap test first
                    and self._hiredis_start()
                ):
                    continue
                elif not self._pure(out, limit):
                    return  # needs more data
        except ProtocolError as exc:
            # Sticky from now on; drop everything held, the connection is done.
            self.error = exc
            self._hr_reader = self._hr_spare = None
            self._buf = bytearray()
            self._pos = 0
            self._args = None
            self._partial_bytes = 0
            if not out:
                raise
        finally:
            self.held = len(self._buf) - self._pos + self._partial_bytes

    # -- hiredis fast path ---------------------------------------------------------------

    def _hiredis_prefix(self, data: bytes) -> tuple[list[list[bytes]], int]:
        """The proven requests at the start of ``data`` and the bytes they take, parsed by hiredis.

        The same fence and proof as :meth:`_hiredis_take`, on the read chunk
        itself rather than the buffer: hiredis never sees a hostile count,
        and a request counts only if its canonical encoding is exactly the
        bytes at its position. The first request that is not provable, not
        complete, over a cap or large (the pure path is faster for those)
        ends the prefix; the ordinary parser takes it from there.
        """
        end, _resume = _hiredis_fast.fence(data, 0, len(data))  # type: ignore[arg-type]
        if end < HIREDIS_FAST_MIN:
            return [], 0
        spare = _FAST_PATH_READER
        reader = getattr(spare, "reader", None)
        if reader is None:
            reader = _hiredis_fast.new_reader(notEnoughData=_hiredis_fast.NEED_MORE)
        spare.reader = None
        reader.feed(data, 0, end)
        out: list[list[bytes]] = []
        pos, ended = _take_proven(reader, data.startswith, 0, end, out, _NO_LIMIT, self._cap_count, self._cap_bulk)
        if ended is _REGION_DONE and end <= _hiredis_fast.REUSE_MAX_REGION:
            spare.reader = reader
        return out, pos

    def _hiredis_start(self) -> bool:
        """Hand the unparsed region to hiredis if that is allowed and worth it."""
        if not self._use_hiredis:
            return False
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if pos < self._hr_resume or pos >= n or buf[pos] != _STAR:
            return False
        if n - pos < HIREDIS_MIN_REGION or not _hiredis_worth_it(buf, pos, n):
            # Too little data, or a first request that is incomplete or has
            # large values: the pure parser takes what is buffered, and hiredis
            # is considered again for data fed after it.
            self._hr_resume = n
            return False
        end, resume = _hiredis_fast.fence(buf, pos, n)
        self._hr_resume = resume
        if end - pos < HIREDIS_MIN_REGION:
            return False
        reader = self._hr_spare
        if reader is None:
            reader = _hiredis_fast.new_reader(notEnoughData=_hiredis_fast.NEED_MORE)
        self._hr_spare = None
        reader.feed(buf, pos, end - pos)
        self._hr_reader = reader
        self._hr_region_end = end
        self._hr_reusable = end - pos <= _hiredis_fast.REUSE_MAX_REGION
        return True

    def _hiredis_take(self, out: list[list[bytes]], limit: int) -> None:
        """Take proven requests from the hiredis reader; stop it at the first unprovable one."""
        reader = self._hr_reader
        pos, ended = _take_proven(
            reader, self._buf.startswith, self._pos, self._hr_region_end, out, limit, self._cap_count, self._cap_bulk
        )
        self._pos = pos
        if ended is _LIMIT_REACHED:
            return  # the reader stays active
        self._hr_reader = None
        if ended is _REGION_DONE and self._hr_reusable:
            self._hr_spare = reader

    # -- pure path -----------------------------------------------------------------------

    def _pure(self, out: list[list[bytes]], limit: int) -> bool:
        """Parse with Python code until ``limit`` requests, or more data is needed.

        Returns False when it stopped for lack of data, True when it stopped
        because ``limit`` was reached or hiredis may take over at a request start.
        """
        buf = self._buf
        n = len(buf)
        p = self._pos
        scan = self._scan
        args = self._args
        hr_stop = self._hr_resume if self._use_hiredis else _NO_LIMIT
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
                        return False
                    if buf[p] != _STAR:
                        # ---- inline request
                        s = scan if scan > p else p
                        nl = find(_LF, s, p + window)
                        if nl < 0 or find(_NUL, s, nl) >= 0:
                            nl = self._line_end(p, s, _LF, TOO_BIG_INLINE)
                            if nl < 0:
                                return False
                        end = nl - 1 if nl > p and buf[nl - 1] == 0x0D else nl
                        argv = split_args(bytes(buf[p:end]))
                        if argv is None:
                            raise ProtocolError(UNBALANCED_QUOTES)
                        p = nl + 1
                        if argv:
                            out.append(argv)
                            if len(out) >= limit:
                                return True
                        continue
                    # ---- multibulk header "*N"
                    if p >= hr_stop and n - p >= HIREDIS_MIN_REGION:
                        return True  # let hiredis try from here (same test as in _run)
                    s = scan if scan > p else p
                    nl = find(_CR, s, p + window)
                    if nl < 0 or nl + 1 >= n:
                        nl = self._line_end(p, s, _CR, TOO_BIG_MBULK)
                        if nl < 0:
                            return False
                    text = buf[p + 1 : nl]
                    # Fast path for plain digits; string2ll() has the exact rules
                    # (and refuses long texts before int() could choke on them).
                    if len(text) < 20 and text.isdigit() and (text[0] != _ZERO or len(text) == 1):
                        count = int(text)
                    else:
                        parsed = string2ll(text)
                        if parsed is None:
                            if self._nul_blocks(p, nl, TOO_BIG_MBULK):
                                return False
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
                        s = scan if scan > p else p
                        nl = find(_CR, s, p + window)
                        if nl < 0 or nl + 1 >= n:
                            nl = self._line_end(p, s, _CR, TOO_BIG_BULK)
                            if nl < 0:
                                return False
                        if buf[p] != _DOLLAR:
                            if self._nul_blocks(p, nl, TOO_BIG_BULK):
                                return False
                            raise ProtocolError(EXPECTED_DOLLAR % bytes((buf[p],)).decode("utf-8", "surrogateescape"))
                        text = buf[p + 1 : nl]
                        if len(text) < 20 and text.isdigit() and (text[0] != _ZERO or len(text) == 1):
                            bulklen = int(text)
                        else:
                            parsed = string2ll(text)
                            if parsed is None:
                                if self._nul_blocks(p, nl, TOO_BIG_BULK):
                                    return False
                                raise ProtocolError(INVALID_BULK)
                            if parsed < 0:
                                raise ProtocolError(INVALID_BULK)
                            bulklen = parsed
                        if bulklen > cap_bulk:
                            raise ProtocolError(INVALID_BULK if bulklen > self._max_bulk else UNAUTH_BULK)
                        p = nl + 2
                    end = p + bulklen
                    if end + 2 > n:
                        return False
                    # The two bytes after the data are skipped unchecked, as in Redis.
                    args.append(bytes(buf[p:end]))
                    p = end + 2
                    bulklen = -1
                    remaining -= 1
                out.append(args)
                args = None
                self._partial_bytes = 0
                if len(out) >= limit:
                    return True
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


#: How many elements of the first request :func:`_hiredis_worth_it` frames
#: before assuming the rest fits too (a cheap heuristic, never a correctness
#: matter: hiredis results are proven either way).
_FRAME_ELEMENTS: Final = 8


def _hiredis_worth_it(buf: bytearray, pos: int, n: int) -> bool:
    """Cheaply guess whether the multibulk at ``pos`` is all buffered, with small elements.

    hiredis only pays off on a run of complete requests whose elements average
    at most :data:`~server.protocol._hiredis_fast.BIG_ELEMENT` bytes. Frames at
    most :data:`_FRAME_ELEMENTS` canonical elements; any oddity answers False
    and leaves the request to the pure parser.
    """
    nl = buf.find(b"\r\n", pos, pos + 8)
    if nl < 0:
        return False
    text = buf[pos + 1 : nl]
    if not text.isdigit():
        return False
    p = nl + 2
    framed = min(int(text), _FRAME_ELEMENTS)
    for _ in range(framed):
        nl = buf.find(b"\r\n", p, p + 24)
        if nl < 0 or buf[p] != _DOLLAR:
            return False
        text = buf[p + 1 : nl]
        if not text.isdigit():
            return False
        p = nl + 4 + int(text)
        if p > n:
            return False
    return p - pos <= _hiredis_fast.BIG_ELEMENT * max(framed, 1)
