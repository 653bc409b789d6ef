"""Micro-benchmarks of the request and reply parsers, one column per parser core.

Run ``python -m server.protocol._bench`` (add ``--quick`` for a smoke run).
Each case prints the best of several runs in requests (or replies) per
second of this thread's CPU time (``time.thread_time``), so time the process
spends descheduled on a shared machine does not count. Pure computation
only: no sockets, to measure the parsers alone.
Run this file with another checkout first on ``PYTHONPATH`` to get that
checkout's columns in the same run: a tree without :mod:`server.protocol.cores`
(before issue 11) shows its hiredis and pure paths instead. Figures:
``docs/decisions.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from server.protocol import NOT_ENOUGH_DATA, encode_command, encode_reply

#: Socket read size assumed for pipelined input: asyncio's default read (64 KiB).
CHUNK = 64 * 1024
SET_REQUEST = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
#: redis-benchmark's -P 16: sixteen requests per read.
PIPELINE = 16

Factory = Callable[[], Any]


def _parsers() -> dict[str, tuple[Factory, Factory]]:
    """(request parser, reply parser) factories by column name, for whatever checkout is imported."""
    try:
        from server.protocol.cores import AVAILABLE
    except ImportError:  # a checkout from before issue 11: its hiredis and pure paths
        old: Any = importlib.import_module("server.protocol")
        return {
            f"old {name}": (
                functools.partial(old.RequestParser, use_hiredis=flag),
                functools.partial(old.ReplyParser, use_hiredis=flag),
            )
            for name, flag in (("hiredis", True), ("pure", False))
        }
    return {
        name: (core.request_parser.RequestParser, core.reply_parser.ReplyParser) for name, core in AVAILABLE.items()
    }


def _chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _best(fn: Callable[[], int], repeat: int) -> float:
    """Best items per CPU-second over ``repeat`` runs of ``fn`` (which returns the item count)."""
    best = 0.0
    for _ in range(repeat):
        start = time.thread_time()
        items = fn()
        best = max(best, items / (time.thread_time() - start))
    return best


def requests_pipelined(chunks: Iterable[bytes], make: Factory) -> int:
    parser = make()
    count = 0
    for chunk in chunks:
        parser.feed(chunk)
        count += len(parser.parse_all())
    return count


def requests_chunk(chunks: Iterable[bytes], make: Factory) -> int:
    """What the servers call per read: ``parse_chunk``."""
    parser = make()
    count = 0
    for chunk in chunks:
        count += len(parser.parse_chunk(chunk))
    return count


def requests_next(chunks: Iterable[bytes], make: Factory) -> int:
    parser = make()
    count = 0
    for chunk in chunks:
        parser.feed(chunk)
        while parser.next_request() is not None:
            count += 1
    return count


def replies_pipelined(chunks: Iterable[bytes], make: Factory) -> int:
    parser = make()
    count = 0
    for chunk in chunks:
        parser.feed(chunk)
        while parser.next_reply() is not NOT_ENOUGH_DATA:
            count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description="parser micro-benchmarks")
    cli.add_argument("--quick", action="store_true", help="small inputs, one run")
    opts = cli.parse_args(argv)
    n = 10_000 if opts.quick else 100_000
    repeat = 1 if opts.quick else 5
    parsers = _parsers()

    lrange = encode_reply([b"value%d" % i for i in range(10)])
    # (name, function, which parser (0 request, 1 reply), its input built once outside the timing)
    cases: list[tuple[str, Callable[[list[bytes], Factory], int], int, list[bytes]]] = [
        (f"requests: {n} x SET, 64 KiB feeds, parse_all", requests_pipelined, 0, _chunks(SET_REQUEST * n)),
        (f"requests: {n} x SET, 64 KiB feeds, next_request", requests_next, 0, _chunks(SET_REQUEST * n)),
        (
            f"requests: {n} x SET, {PIPELINE} per chunk, parse_chunk",
            requests_chunk,
            0,
            [SET_REQUEST * PIPELINE] * (n // PIPELINE),
        ),
        (f"requests: {n} x SET, one per chunk, parse_chunk", requests_chunk, 0, [SET_REQUEST] * n),
        (f"requests: {n} x SET, one per feed, next_request", requests_next, 0, [SET_REQUEST] * n),
        (f"requests: {n} x inline SET, 64 KiB feeds", requests_pipelined, 0, _chunks(b"SET key value\r\n" * n)),
        (
            f"requests: {n // 10} x SET of 5 kB values, 64 KiB feeds",
            requests_pipelined,
            0,
            _chunks(encode_command("SET", "key", b"v" * 5000) * (n // 10)),
        ),
        (f"replies: {n} x +OK, 64 KiB feeds", replies_pipelined, 1, _chunks(b"+OK\r\n" * n)),
        (f"replies: {n} x $5 value, 64 KiB feeds", replies_pipelined, 1, _chunks(b"$5\r\nvalue\r\n" * n)),
        (f"replies: {n // 10} x array of 10 bulks, 64 KiB feeds", replies_pipelined, 1, _chunks(lrange * (n // 10))),
        (
            f"replies: {n // 10} x 1 kB bulk strings, 64 KiB feeds",
            replies_pipelined,
            1,
            _chunks(encode_reply(b"v" * 1000) * (n // 10)),
        ),
        (f"replies: {n} x +OK, one per feed", replies_pipelined, 1, [b"+OK\r\n"] * n),
    ]
    print(f"{'case':56} " + "  ".join(f"{name:>12}" for name in parsers))
    for name, fn, which, data in cases:
        rates = [_best(functools.partial(fn, data, pair[which]), repeat) for pair in parsers.values()]
        print(f"{name:56} " + "  ".join(f"{rate / 1e3:>8.0f} k/s" for rate in rates))


if __name__ == "__main__":
    main()
