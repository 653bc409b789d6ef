"""Per-command statistics: calls, time, rejected and failed calls, and a latency histogram per command.

These feed INFO commandstats and latencystats (Redis's formats) and the
Prometheus request metrics, which read the same numbers at scrape time. The
dispatcher bumps them once per request (see
:meth:`server.commands.dispatch.Dispatcher.execute`), so the recording must be
a handful of integer operations:

* ``ns`` (total time), ``rejected``, ``failed``: plain integers; ``calls``
  is the histogram's total, one increment fewer per request.
  Redis's meaning: a *rejected* call never ran (wrong arity, and later auth or
  a full cpu queue) and is not in ``calls``; a *failed* call ran and answered
  an error, and is in ``calls``.
* the histogram is a log-linear array of counts, the HdrHistogram layout with
  :data:`SUB_BUCKET_BITS` bits of precision: a value of ``b`` significant bits
  lands in slot ``b << 5 | <the 5 bits after its leading 1>``, so each slot is
  at most 1/32 (3.1 %) of its value wide; values under 64 ns have a slot each.
  Recording is a ``bit_length``, two shifts and an index increment (about
  0.1 us in CPython), where the ``hdrh`` package's ``record_value`` costs about
  0.7 us: too much to pay on every PING. Percentiles are read off it the way
  HdrHistogram does (the highest value equivalent to the slot holding the
  percentile), at INFO or scrape time.

Under the threaded front end an increment may be lost to a race between
threads: these are statistics, not data (see docs/decisions.md).
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import Final

#: Bits of precision kept under a value's leading bit: 5 gives slots at most 1/32 of their value wide (3.1 %).
#: Redis's own per-command histograms keep 2 significant decimal digits (1 %); 3 % is plenty for p50/p99 and
#: keeps the array small enough (2048 slots) to sum at scrape time without stalling the event loop.
SUB_BUCKET_BITS: Final = 5

#: Values of at most this many bits (below 2 ** (SUB_BUCKET_BITS + 1) = 64 ns) get a slot each.
LINEAR_LIMIT_BITS: Final = SUB_BUCKET_BITS + 1
#: The sub-bucket bits of a slot.
SUB_MASK: Final = (1 << SUB_BUCKET_BITS) - 1
_LINEAR_LIMIT_BITS: Final = LINEAR_LIMIT_BITS
_SUB_MASK: Final = SUB_MASK
#: Slots from 64 up to the first slot of 7-bit values (7 << 5 = 224) are never used.
_FIRST_UNUSED_SLOT = 1 << _LINEAR_LIMIT_BITS
_FIRST_LOG_SLOT = (_LINEAR_LIMIT_BITS + 1) << SUB_BUCKET_BITS

#: Slots in one histogram: a 64-bit nanosecond count (292 years) has at most 64 significant bits.
HISTOGRAM_SLOTS = 64 << SUB_BUCKET_BITS

#: The percentiles INFO latencystats prints, Redis's latency-tracking-info-percentiles default.
LATENCY_PERCENTILES: tuple[float, ...] = (50.0, 99.0, 99.9)


def histogram_slot(ns: int) -> int:
    """The histogram slot of a duration in nanoseconds.

    The dispatcher inlines this same expression, with these same constants, to save a call per request.
    """
    bits = ns.bit_length()
    if bits <= _LINEAR_LIMIT_BITS:
        return ns
    return (bits << SUB_BUCKET_BITS) | ((ns >> (bits - _LINEAR_LIMIT_BITS)) & _SUB_MASK)


def slot_bounds(slot: int) -> tuple[int, int]:
    """The lowest and highest nanosecond values that land in ``slot``."""
    if slot < _FIRST_LOG_SLOT:
        return slot, slot  # exact below 64 ns (slots 64..223 are unused)
    bits = slot >> SUB_BUCKET_BITS
    shift = bits - _LINEAR_LIMIT_BITS
    sub = (slot & _SUB_MASK) | (1 << SUB_BUCKET_BITS)
    return sub << shift, ((sub + 1) << shift) - 1


def _slot_midpoints() -> list[float]:
    """Each slot's middle value, non-decreasing over the slots no value maps to, so it can be bisected."""
    mids: list[float] = []
    for slot in range(HISTOGRAM_SLOTS):
        if _FIRST_UNUSED_SLOT <= slot < _FIRST_LOG_SLOT:
            mids.append(mids[-1])
        else:
            low, high = slot_bounds(slot)
            mids.append((low + high) / 2)
    return mids


#: Slot midpoints in nanoseconds, non-decreasing: the cut-offs for exporting fixed histogram buckets.
SLOT_MIDPOINTS = _slot_midpoints()


def bucket_cutoffs(bounds_ns: Sequence[float]) -> list[int]:
    """For each upper bound, the first slot whose middle lies above it (slots before it count as ``<= bound``)."""
    return [bisect_right(SLOT_MIDPOINTS, bound) for bound in bounds_ns]


def value_at_percentile(counts: Sequence[int], total: int, percentile: float) -> int:
    """HdrHistogram's value at ``percentile``: the highest value equivalent to the slot holding that rank."""
    if total <= 0:
        return 0
    rank = max(1, int(percentile / 100.0 * total + 0.5))
    cumulative = list(itertools.accumulate(counts))
    slot = bisect_left(cumulative, min(rank, cumulative[-1]))
    return slot_bounds(slot)[1]


class CommandStats:
    """The counters of one command (or ``command|subcommand``) in one server."""

    __slots__ = ("failed", "histogram", "kind", "name", "ns", "rejected")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        #: ``inline`` or ``cpu``: the Prometheus duration histogram is labelled by it.
        self.kind = kind
        self.ns = 0
        self.rejected = 0
        self.failed = 0
        self.histogram = [0] * HISTOGRAM_SLOTS

    @property
    def calls(self) -> int:
        """Calls that ran (failed ones included): the histogram's total, so the hot path keeps one counter less."""
        return sum(self.histogram)

    def zero(self) -> None:
        self.ns = self.rejected = self.failed = 0
        self.histogram = [0] * HISTOGRAM_SLOTS

    def record(self, elapsed_ns: int) -> None:
        """Count one call that took ``elapsed_ns`` (the off-hot-path form of what the dispatcher inlines)."""
        self.ns += elapsed_ns
        self.histogram[histogram_slot(elapsed_ns)] += 1

    def percentiles_us(self, percentiles: Sequence[float] = LATENCY_PERCENTILES) -> list[float]:
        """The latency at each percentile, in microseconds."""
        counts = list(self.histogram)
        total = sum(counts)
        return [value_at_percentile(counts, total, p) / 1000.0 for p in percentiles]


class CommandStatsTable:
    """``name -> CommandStats`` for one server. Entries appear on a command's first call; RESETSTAT zeroes them."""

    def __init__(self) -> None:
        self.by_name: dict[str, CommandStats] = {}

    def get(self, name: str, kind: str) -> CommandStats:
        """The stats of ``name``, created on first use."""
        stats = self.by_name.get(name)
        if stats is None:
            stats = self.by_name[name] = CommandStats(name, kind)
        return stats

    def snapshot(self) -> list[CommandStats]:
        """The entries sorted by name (a copy of the list: safe to walk from the metrics thread)."""
        return sorted(list(self.by_name.values()), key=lambda s: s.name)

    def reset(self) -> None:
        """CONFIG RESETSTAT: zero every command's counters and latencies in place, as Redis does.

        In place, so the RESETSTAT being answered (whose counters the
        dispatcher already holds) is counted afterwards, as Redis counts it.
        """
        for stats in list(self.by_name.values()):
            stats.zero()

    def __iter__(self) -> Iterator[CommandStats]:
        return iter(self.snapshot())
