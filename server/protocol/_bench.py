"""Micro-benchmarks of the two parsers, pure path against hiredis path.

Run ``python -m server.protocol._bench`` (add ``--quick`` for a smoke run).
Each case prints the best of several runs in requests (or replies) per
second, so the figures quoted in the parser docstrings can be reproduced on
any machine. Pure computation only: no sockets, to measure the parsers alone.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Iterable

from server.protocol import _hiredis_fast
from server.protocol.reply import encode_command, encode_reply
from server.protocol.reply_parser import NOT_ENOUGH_DATA, ReplyParser
from server.protocol.request_parser import RequestParser

#: Socket read size assumed for pipelined input: asyncio's default read (64 KiB).
CHUNK = 64 * 1024
SET_REQUEST = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"


def _chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _best(fn: Callable[[], int], repeat: int) -> float:
    """Best items-per-second over ``repeat`` runs of ``fn`` (which returns the item count)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        items = fn()
        best = max(best, items / (time.perf_counter() - start))
    return best


def requests_pipelined(chunks: Iterable[bytes], use_hiredis: bool) -> int:
    parser = RequestParser(use_hiredis=use_hiredis)
    count = 0
    for chunk in chunks:
        parser.feed(chunk)
        count += len(parser.parse_all())
    return count


def requests_next(chunks: Iterable[bytes], use_hiredis: bool) -> int:
    parser = RequestParser(use_hiredis=use_hiredis)
    count = 0
    for chunk in chunks:
        parser.feed(chunk)
        while parser.next_request() is not None:
            count += 1
    return count


def replies_pipelined(chunks: Iterable[bytes], use_hiredis: bool) -> int:
    parser = ReplyParser(use_hiredis=use_hiredis)
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
    paths = [False, True] if _hiredis_fast.AVAILABLE else [False]

    lrange = encode_reply([b"value%d" % i for i in range(10)])
    # (name, function, its input built once outside the timing)
    cases: list[tuple[str, Callable[[list[bytes], bool], int], list[bytes]]] = [
        (
            f"requests: {n} x SET pipelined, 64 KiB feeds, parse_all",
            requests_pipelined,
            _chunks(SET_REQUEST * n),
        ),
        (
            f"requests: {n} x SET pipelined, 64 KiB feeds, next_request",
            requests_next,
            _chunks(SET_REQUEST * n),
        ),
        (f"requests: {n} x SET, 4 requests per feed", requests_next, [SET_REQUEST * 4] * (n // 4)),
        (f"requests: {n} x SET, one request per feed", requests_next, [SET_REQUEST] * n),
        (
            f"requests: {n} x inline SET pipelined, 64 KiB feeds",
            requests_pipelined,
            _chunks(b"SET key value\r\n" * n),
        ),
        (
            f"requests: {n // 10} x SET of 5 kB values, 64 KiB feeds",
            requests_pipelined,
            _chunks(encode_command("SET", "key", b"v" * 5000) * (n // 10)),
        ),
        (f"replies: {n} x +OK pipelined, 64 KiB feeds", replies_pipelined, _chunks(b"+OK\r\n" * n)),
        (
            f"replies: {n} x $5 value pipelined, 64 KiB feeds",
            replies_pipelined,
            _chunks(b"$5\r\nvalue\r\n" * n),
        ),
        (
            f"replies: {n // 10} x array of 10 bulks, 64 KiB feeds",
            replies_pipelined,
            _chunks(lrange * (n // 10)),
        ),
        (
            f"replies: {n // 10} x 1 kB bulk strings, 64 KiB feeds",
            replies_pipelined,
            _chunks(encode_reply(b"v" * 1000) * (n // 10)),
        ),
        (f"replies: {n} x +OK, one reply per feed", replies_pipelined, [b"+OK\r\n"] * n),
    ]
    print(f"{'case':62} " + "  ".join(f"{'hiredis' if hr else 'pure':>12}" for hr in paths))
    for name, fn, data in cases:
        rates = [_best(functools.partial(fn, data, hr), repeat) for hr in paths]
        print(f"{name:62} " + "  ".join(f"{rate / 1e3:>9.0f} k/s" for rate in rates))


if __name__ == "__main__":
    main()
