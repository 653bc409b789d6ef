"""Latency histograms: a cheap per-reply tally, HdrHistogram for storage, encode/decode to merge processes.

Recording straight into ``HdrHistogram.record_value`` costs about a microsecond
of pure Python per call, which at 100k replies a second is a tenth of a core
the generator would spend on itself. So the hot path only bumps a ``dict``
keyed by the exact latency in microseconds (:class:`Tally`); replies cluster
in a few hundred distinct values, and once per progress interval the tally is
poured into an HdrHistogram with one ``record_value(value, count)`` per
distinct value. Nothing is lost: every reply is counted at its exact value,
and HdrHistogram then keeps it to :data:`SIGNIFICANT_FIGURES` digits.

Worker processes send their interval histograms to the parent as
``HdrHistogram.encode()`` strings (compressed, base64, a few hundred bytes);
the parent adds them with ``decode_and_add``. That is the standard
HdrHistogram way to merge histograms across processes, and it is lossless.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hdrh.histogram import HdrHistogram

#: Smallest latency tracked: 1 microsecond (loopback round trips are tens of microseconds).
LOWEST_US: Final = 1

#: Largest latency tracked: 10 minutes, in microseconds. Longer than any run is allowed to last
#: (see loadtest.config.MAX_DURATION), so no latency ever has to be clamped in practice.
HIGHEST_US: Final = 600_000_000

#: HdrHistogram precision: 3 significant digits, i.e. every value within 0.1 %.
SIGNIFICANT_FIGURES: Final = 3

#: Percentiles every report shows, as (JSON key, percentile).
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))

#: A dict from latency in microseconds to how many replies had it.
Tally = dict[int, int]


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds, with the project's range and precision."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def pour(tally: Tally, histogram: HdrHistogram) -> int:
    """Add every tallied latency to ``histogram``, empty the tally, and return how many were added.

    Values outside the tracked range are clamped to it (a zero-microsecond
    reply becomes 1 us) rather than dropped, so counts always add up.
    """
    added = 0
    for value, count in tally.items():
        histogram.record_value(min(max(value, LOWEST_US), HIGHEST_US), count)
        added += count
    tally.clear()
    return added


def encode(histogram: HdrHistogram) -> bytes:
    """The histogram as HdrHistogram's compressed wire form (for a queue between processes)."""
    return bytes(histogram.encode())


def merge_encoded(encoded: Iterable[bytes], into: HdrHistogram | None = None) -> HdrHistogram:
    """Decode each encoded histogram and add it to ``into`` (a new histogram if None)."""
    merged = into if into is not None else new_histogram()
    for blob in encoded:
        if blob:
            merged.decode_and_add(blob)
    return merged


def summarize(histogram: HdrHistogram) -> dict[str, float | int]:
    """Count, min, mean, the standard percentiles and max, in milliseconds (3 decimals)."""
    count = int(histogram.get_total_count())
    summary: dict[str, float | int] = {"count": count}
    if count == 0:
        for key in ("min", "mean", *(name for name, _ in PERCENTILES), "max"):
            summary[key] = 0.0
        return summary
    summary["min"] = _ms(histogram.get_min_value())
    summary["mean"] = _ms(histogram.get_mean_value())
    for name, percentile in PERCENTILES:
        summary[name] = _ms(histogram.get_value_at_percentile(percentile))
    summary["max"] = _ms(histogram.get_max_value())
    return summary


def _ms(microseconds: float) -> float:
    return round(float(microseconds) / 1000.0, 3)
