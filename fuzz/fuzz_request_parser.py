"""Coverage-guided fuzz target for the request parser (atheris, libFuzzer flags).

Run it (atheris comes with the ``fuzz`` extra: ``.venv/bin/pip install -e '.[fuzz]'``)::

    .venv/bin/python fuzz/fuzz_request_parser.py -runs=100000
    .venv/bin/python fuzz/fuzz_request_parser.py -max_total_time=600 -max_len=8192 fuzz/corpus

Each input is one control byte and a byte stream. :func:`check` feeds the
stream to :class:`~server.protocol.RequestParser` several ways and raises
``AssertionError`` when an invariant breaks (atheris reports any exception as
a crash and writes the input to ``crash-<sha1>``):

* nothing but :class:`~server.protocol.ProtocolError` ever escapes;
* whole, in the control byte's chunk sizes, and byte by byte (streams up to
  :data:`BYTEWISE_MAX`; longer ones in 5-byte pieces); on every parser core
  (pure and mypyc-compiled); drained with ``next_request()``, with ``parse_all()`` and
  with ``parse_chunk()`` (the servers' way): the same
  requests and the same error message after the same request;
* whenever the parser asks for more bytes, ``buffered`` is at most one
  request in progress at the limits (:data:`BUFFER_BOUND`);
* after a ProtocolError the parser holds nothing, and every later call
  raises the same error object: it never yields another request.

The control byte: bits 0-2 and 3-6 give two chunk sizes (1-8 and 1-16) fed
in turn; bit 7 sets ``auth_required`` (Redis's pre-AUTH caps).

:func:`check` needs no atheris, so the test suite runs it over the seeds in
:data:`SEEDS` (``tests/unit/test_parser_state_machine.py``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Run as the fuzzer, atheris instruments the parser's package as it is imported (coverage
# feedback for the parser only: instrumenting everything costs most of the speed).
_instrumented: Any = contextlib.nullcontext()
if __name__ == "__main__":
    import atheris  # the fuzz extra; only the fuzzer itself needs it

    _instrumented = atheris.instrument_imports(include=["server.protocol"])
with _instrumented:
    from server.protocol import ProtocolError
    from server.protocol.cores import AVAILABLE as CORES
    from server.protocol.cores import PURE
    from server.protocol.limits import MAX_INLINE_SIZE

#: Limits of the fuzzed parsers, the same for every parser in one check. The count is small so
#: "invalid multibulk length" is reached with short inputs; the bulk cap is just above Redis's
#: 16 KiB pre-AUTH cap so both "invalid" and "unauthenticated bulk length" can be reached.
FUZZ_MAX_BULK: Final = 20_000
FUZZ_MAX_COUNT: Final = 16

#: Most bytes a parser may hold while it waits for more: one request in progress at the limits
#: (its arguments so far, at most FUZZ_MAX_COUNT of FUZZ_MAX_BULK bytes) plus one header or
#: inline line in progress (at most MAX_INLINE_SIZE + 1 bytes before it is "too big") and the
#: two bytes after a bulk.
BUFFER_BOUND: Final = FUZZ_MAX_COUNT * FUZZ_MAX_BULK + MAX_INLINE_SIZE + 3

#: Every parser core built here; the pure one first (it gives the reference result).
PATHS: Final = (PURE, *(name for name in CORES if name != PURE))

#: Longest stream also fed one byte at a time; longer ones (the 64 KiB line-limit seeds) are fed
#: in 5-byte pieces instead, which still split every header and line, at a fraction of the cost.
BYTEWISE_MAX: Final = 8 * 1024

Result = tuple[list[list[bytes]], str | None]


def pieces(data: bytes, sizes: tuple[int, ...]) -> Iterator[bytes]:
    """``data`` cut into pieces of ``sizes`` in turn; whole when ``sizes`` is empty."""
    if not sizes:
        yield data
        return
    i = k = 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        yield data[i : i + size]
        i += size
        k += 1


def run(data: bytes, sizes: tuple[int, ...], core: str, auth: bool, drain: str) -> Result:
    """Feed ``data`` in ``sizes``; every request, then the error message if any, checking as it goes.

    ``drain`` is how requests are taken out after each piece: ``"next"`` (``feed`` then
    ``next_request()`` until None), ``"all"`` (``feed`` then ``parse_all()`` until empty) or
    ``"chunk"`` (``parse_chunk(piece)``, the servers' way, with its fast path).
    """
    parser = CORES[core].request_parser.RequestParser(
        max_bulk_length=FUZZ_MAX_BULK,
        max_multibulk_length=FUZZ_MAX_COUNT,
        auth_required=auth,
    )
    requests: list[list[bytes]] = []
    error: str | None = None
    for piece in pieces(data, sizes):
        try:
            if drain == "chunk":
                requests += parser.parse_chunk(piece)
                if parser.failed:
                    parser.parse_all()  # raises the error that followed the good requests
                    raise AssertionError("failed is set but parse_all() did not raise")
            else:
                parser.feed(piece)
                if drain == "all":
                    while batch := parser.parse_all():
                        requests += batch
                else:
                    while (request := parser.next_request()) is not None:
                        requests.append(request)
        except ProtocolError as exc:
            _check_sticky(parser, exc)
            error = exc.message
            break
        assert not parser.failed
        assert parser.buffered <= BUFFER_BOUND, (parser.buffered, BUFFER_BOUND)
    assert all(request and all(arg.__class__ is bytes for arg in request) for request in requests)
    return requests, error


def _check_sticky(parser: Any, error: ProtocolError) -> None:
    """After an error: nothing held, data discarded, the same error from every call."""
    assert error.message.startswith("ERR Protocol error: "), error.message
    assert parser.buffered == 0
    assert parser.failed
    parser.feed(b"PING\r\n*1\r\n$4\r\nPING\r\n")
    calls = (parser.next_request, parser.parse_all, lambda: parser.parse_chunk(b"*1\r\n$4\r\nPING\r\n"))
    for call in calls:
        try:
            call()
        except ProtocolError as again:
            assert again is error
        else:
            raise AssertionError("the parser answered after a protocol error")
    assert parser.buffered == 0


def check(data: bytes) -> Result:
    """Run every way of feeding ``data`` (control byte first) and assert they agree; return the result."""
    if not data:
        return [], None
    control, stream = data[0], data[1:]
    sizes = ((control & 0x07) + 1, ((control >> 3) & 0x0F) + 1)
    auth = bool(control & 0x80)
    reference = run(stream, (), PURE, auth, "next")
    bytewise = (1,) if len(stream) <= BYTEWISE_MAX else (5,)
    # Each path and each drain style meets each chunking (not every combination: speed is
    # coverage for a fuzzer, and the combinations add no new code paths).
    ways = [
        (PURE, sizes, "all"),
        (PURE, bytewise, "next"),
        (PURE, (), "chunk"),
        (PURE, sizes, "chunk"),
    ]
    for core in PATHS[1:]:
        ways += [(core, (), "next"), (core, (), "all"), (core, sizes, "chunk"), (core, bytewise, "all")]
    for core, chunking, drain in ways:
        got = run(stream, chunking, core, auth, drain)
        assert got == reference, (core, chunking, drain, got, reference)
    return reference


def _one_input(data: bytes) -> None:
    check(data)


#: Seeds for the corpus and for the test suite: one of each kind of request and of each error.
#: The first byte of each is the control byte.
SEEDS: Final[tuple[bytes, ...]] = (
    b"\x00*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\nPING\r\nECHO hi\n",
    b"\x09" + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n" * 12,
    b"\x12\r\n\n   \t\r\n*0\r\n*-1\r\n*-5\r\nPING\r\n",
    b'\x1bSET "a b" \'c\\\'d\' "\\x41\\n\\"" \r\n',
    b"\x24*1\rX$4\r\nPING\r\n*1\r\n$4\r\nPINGxy",
    b"\x00*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
    b"\x00*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n",
    b"\x00*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
    b"\x00*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
    b"\x00*1\r\nfoo\r\n",
    b"\x00*3000000000\r\n",
    b"\x00*17\r\n",
    b"\x80*11\r\n",
    b"\x80*1\r\n$16385\r\n",
    b"\x00*1\r\n$20001\r\n",
    b'\x00set """test-key""" test-value\r\nping\r\n',
    b"\x00ECHO 'a'b\n",
    b"\x00*+1\r\n",
    b"\x00*1\r\n$01\r\n",
    b"\x00*1\r\n\xe94\r\n",
    b"\x00*2\r\n$4\r\nPING\r\n:1\r\n",
    b"\x3fPI\x00NG\r\nPING\r\n",
    b"\x00\x00" + b"A" * (MAX_INLINE_SIZE + 10) + b"\n",
    b"\x00*\x00" + b"payload" * 10_000,
    b"\x00$\x00" + b"payload" * 10_000,
    b"\x00*1\r\n$" + b"1" * (MAX_INLINE_SIZE + 1),
    b"\x07" + b"*1\r\n$4\r\nPING\r\n" * 20 + b"*2\r\n*999999\r\n",
)


def write_seed_corpus(directory: Path) -> None:
    """Write :data:`SEEDS` as files, a corpus directory for libFuzzer to start from."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (directory / f"seed-{i:02d}").write_bytes(seed)


def main(argv: list[str]) -> None:
    if "--write-seeds" in argv:
        write_seed_corpus(Path(argv[argv.index("--write-seeds") + 1]))
        return
    atheris.Setup(argv, _one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
