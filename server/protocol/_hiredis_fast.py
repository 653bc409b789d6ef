"""Let hiredis's C reader do the bulk of RESP parsing, and prove every result.

hiredis parses *replies*, which is a looser grammar than Redis's *requests*
(it accepts ``+status``, ``:int``, nested and RESP3 elements, ``\\r\\n`` only
as line ends, no length caps), and it pre-allocates a list as soon as it reads
an ``*N`` header. So it is never trusted, only used:

1. **Fence.** Before a region of the buffer is handed to hiredis, one fast
   pass bounds the counts of the aggregate headers in it (:func:`fence`), so
   a hostile ``*2147483647`` or a deep nest of ``*999`` never reaches
   hiredis's allocator. The region is also capped at :data:`MAX_REGION`
   bytes, because hiredis keeps its own copy of it.
2. **Proof.** Each value hiredis returns is re-encoded canonically and compared
   with the bytes at the parser's own position (:func:`canonical_request`).
   If they match, those bytes *are* the canonical encoding of that value, so
   the pure parser would have produced exactly the same value from them and
   consumed exactly that many bytes. The parser's position only ever moves by
   proven lengths, whatever hiredis believes it consumed.
3. **Fallback.** Anything else (no match, a non-list, an exception, a cap
   exceeded, not enough data) ends the hiredis run at the last proven
   position and the pure parser continues from there, producing the exact
   request or error. Results are therefore identical on both paths by
   construction; hiredis only changes the speed.
"""

from __future__ import annotations

from typing import Any, Final

try:  # hiredis is a declared dependency, but the pure path must work without it.
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - exercised only where hiredis is absent
    _hiredis = None  # type: ignore[assignment]

#: True when the hiredis C extension is importable.
AVAILABLE: Final = _hiredis is not None

#: Longest region copied into hiredis at once. hiredis keeps its own copy of
#: what it is fed, and this also bounds what a hostile region can make it
#: allocate (see :func:`fence`). Measured: regions of 8 KiB to 256 KiB parse
#: pipelined commands equally fast, so a small one costs nothing.
MAX_REGION: Final = 16 * 1024

#: hiredis only wins where Python's per-element overhead dominates: elements
#: of a few hundred bytes at most. Larger ones cost hiredis more than they
#: save (the region is scanned, copied in, copied out, re-encoded and
#: compared), so a value averaging more than this per element ends the
#: hiredis run and the pure parser, which only slices, takes over. Measured:
#: 5 kB SET requests ran 2x and 1 kB bulk replies 1.8x faster on the pure path.
BIG_ELEMENT: Final = 512

#: A reader whose region was at most this big is kept for the next region
#: (a new one costs about 0.5 us, which matters for a few requests per feed);
#: after a bigger one it is dropped, because hiredis keeps its buffer's
#: allocation until the next feed and thousands of idle connections must not
#: each hold one.
REUSE_MAX_REGION: Final = 2 * 1024

#: hiredis allocates ``count`` list slots the moment it reads an aggregate
#: header (RESP2 ``*``, RESP3 ``~ > % |``), before any element arrives, and it
#: nests without limit, so ``*999\r\n:1\r\n`` repeated would make it hold
#: 8 KB per 10 bytes of input. The fence therefore never lets hiredis see a
#: count of 1000 or more, and refuses a region whose counts of 10 or more
#: could add up to more than :data:`MAX_WIDE_SLOTS`. Single-digit counts need
#: no check: at most 9 slots per 4-byte header. Worst case per region: about
#: 2 x 36 Ki slots, well under 1 MiB, freed as soon as the proof fails.
#: Matches inside binary data are false positives that only send that
#: stretch down the pure path.
MAX_WIDE_SLOTS: Final = 32 * 1024

# The fence works on a translated copy of the region: every digit becomes
# "0" and every aggregate type byte "*", so "*00" marks a count of 10 or more,
# "*000" one of 100 or more and "*0000" one of 1000 or more, and C-speed
# bytes.find()/count() do the rest.
_FENCE_TABLE: Final = bytes.maketrans(b"0123456789~>%|", b"0000000000****")
_WIDE: Final = b"*00"
_WIDER: Final = b"*000"
_TOO_WIDE: Final = b"*0000"

_CRLF: Final = b"\r\n"
_HEADER_CACHE: Final = 1024
_ARRAY_HEADERS: Final = [b"*%d\r\n" % i for i in range(_HEADER_CACHE)]
_BULK_HEADERS: Final = [b"$%d\r\n" % i for i in range(_HEADER_CACHE)]


#: What a request reader's ``gets()`` returns when its region is used up: a
#: private object, since hiredis's default (False) is also a RESP3 value.
NEED_MORE: Final = object()


def new_reader(**kwargs: Any) -> Any:
    """A fresh ``hiredis.Reader`` (only call when :data:`AVAILABLE`)."""
    assert _hiredis is not None
    return _hiredis.Reader(**kwargs)


def fence(buf: bytearray, start: int, end: int) -> tuple[int, int]:
    """Return ``(region_end, resume_at)`` for a hiredis region starting at ``start``.

    ``region_end`` is where hiredis must stop reading: ``end`` capped at
    :data:`MAX_REGION`, cut before the first count of 1000 or more, or
    ``start`` itself (no region) when the wide counts exceed the
    :data:`MAX_WIDE_SLOTS` budget. ``resume_at`` is the position the pure
    parser has to pass before hiredis is tried again: past the cut or the
    refused region, so the same bytes are not fenced again and again.
    """
    end = min(end, start + MAX_REGION)
    marks = buf[start:end].translate(_FENCE_TABLE)
    wide = marks.find(_WIDE)
    if wide < 0:
        return end, end  # only single-digit counts: the common case
    cut = marks.find(_TOO_WIDE, wide)
    limit = len(marks) if cut < 0 else cut
    slots = 99 * marks.count(_WIDE, wide, limit) + 900 * marks.count(_WIDER, wide, limit)
    resume = start + limit if cut < 0 else start + cut + 1
    if slots > MAX_WIDE_SLOTS:
        return start, resume
    return start + limit, resume


def canonical_request(args: list[bytes]) -> bytes:
    """``*N\\r\\n`` then ``$len\\r\\narg\\r\\n`` per argument: what every client sends.

    Error handling: raises :class:`TypeError` when an element is not ``bytes``
    (hiredis produced an int, a list, an error...), which callers treat as
    "not provable".
    """
    count = len(args)
    pieces = [_ARRAY_HEADERS[count] if count < _HEADER_CACHE else b"*%d\r\n" % count]
    for arg in args:
        size = len(arg)
        pieces += (_BULK_HEADERS[size] if size < _HEADER_CACHE else b"$%d\r\n" % size, arg, _CRLF)
    return b"".join(pieces)
