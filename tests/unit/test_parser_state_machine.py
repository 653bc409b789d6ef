"""RequestParser as a hypothesis state machine, and the fuzz target's checks over its seeds.

The machine builds a random stream of valid requests (multibulk with binary
arguments; inline lines with plain words, double quotes with every escape,
single quotes), blank lines and empty counts, and optionally corruption: a
known mistake whose Redis error is certain, or random byte damage. It feeds
the stream to a live parser in random chunk sizes, taking requests out with
``next_request()``, ``parse_all()`` or ``parse_chunk()`` at random, and checks
at every step:

* the requests parsed are exactly the requests encoded, in order, as long as
  no random damage was done;
* after a known mistake, the error is that mistake's, right after the
  requests encoded before it;
* ``parse_chunk()`` (the servers' way, with its fast path for whole simple
  multibulk requests) gives what ``feed()`` and ``next_request()`` give;
* whenever the parser waits for more bytes, ``buffered`` is at most the bytes
  fed and not yet returned, and at most one request in progress at the
  limits (:data:`BUFFER_BOUND`);
* after a ProtocolError the parser holds nothing and never yields a request
  again (every call raises the same error).

At the end of each run the whole stream is parsed again, fed at once and byte
by byte, on every parser core (pure and compiled): the same requests and the same
error after the same request as the live parser saw.

The second half runs ``fuzz/fuzz_request_parser.py``'s ``check`` (the atheris
target's invariants) over its seed corpus, without needing atheris.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.protocol import ProtocolError, RequestParser, encode_command, request_parser
from server.protocol.cores import AVAILABLE as CORES
from server.protocol.limits import MAX_INLINE_SIZE
from server.protocol.request_parser import (
    EXPECTED_DOLLAR,
    INVALID_BULK,
    INVALID_MBULK,
    UNBALANCED_QUOTES,
)

#: Every parser core built here: the machine runs on each, and the teardown compares them all.
PATHS = list(CORES)

#: The machine's parsers use small limits so that requests near them are cheap to build.
MAX_BULK = 64
MAX_COUNT = 8
#: A parser waiting for more bytes holds at most one request in progress: its arguments so far
#: (fewer than MAX_COUNT of at most MAX_BULK bytes) and one unfinished header, inline line or
#: bulk with its two trailing bytes.
BUFFER_BOUND = MAX_COUNT * (MAX_BULK + 2) + MAX_INLINE_SIZE + 2

#: Bounded so the whole machine runs in a few seconds: examples x steps x a few parses.
MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

#: Mistakes whose Redis error is certain whatever follows them (fed at a request boundary).
KNOWN_MISTAKES = [
    (b"*1\r\n$-1\r\n", INVALID_BULK),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n", INVALID_BULK),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n", INVALID_BULK),
    (b"*%d\r\n" % (MAX_COUNT + 1), INVALID_MBULK),
    (b"*1\r\n$%d\r\n" % (MAX_BULK + 1), INVALID_BULK),
    (b"*abc\r\n", INVALID_MBULK),
    (b"*01\r\n", INVALID_MBULK),
    (b"*1\r\nfoo\r\n", EXPECTED_DOLLAR % "f"),
    (b"*2\r\n$4\r\nPING\r\n:1\r\n", EXPECTED_DOLLAR % ":"),
    (b'ECHO "abc\r\n', UNBALANCED_QUOTES),
    (b"ECHO 'a'b\n", UNBALANCED_QUOTES),
]
# The 64 KiB line limits ("too big ...") are left to the fuzz target's seeds below and to
# test_request_parser.py: a 64 KiB stream parsed byte by byte would cost a second per example.

# Inline words: a plain word has no blank, quote or NUL (and a line must not start with "*").
_PLAIN_BYTES = bytes(b for b in range(1, 256) if b not in b" \t\r\n\x0b\x0c\"'")
_DQ_ESCAPES = {ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t", 8: b"\\b", 7: b"\\a"}

arguments = st.binary(max_size=MAX_BULK)
#: Bytes that matter to the inline splitter, drawn often so that every escape and blank is met.
_TRICKY = b"ab \t\r\n\"'\\\x00\x07\x08\x0b\x0c\xe9*$x0"
words = st.one_of(st.binary(max_size=12), st.lists(st.sampled_from(_TRICKY), max_size=10).map(bytes))


def double_quoted(word: bytes, hex_mask: int) -> bytes:
    """``word`` in double quotes: ``\\" \\\\``, the letter escapes, and ``\\xHH`` where ``hex_mask`` says."""
    out = bytearray(b'"')
    for i, byte in enumerate(word):
        if byte in _DQ_ESCAPES:
            out += _DQ_ESCAPES[byte]
        elif byte in b'"\\':
            out += b"\\" + bytes((byte,))
        elif byte == 0 or byte >= 0x7F or (hex_mask >> (i % 16)) & 1:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


def single_quoted(word: bytes) -> bytes:
    """``word`` in single quotes, where only ``\\'`` is an escape (so no backslash, CR, LF or NUL)."""
    return b"'" + word.replace(b"'", b"\\'") + b"'"


@st.composite
def inline_requests(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """One inline line and the arguments Redis's sdssplitargs() makes of it."""
    argv = draw(st.lists(words, min_size=1, max_size=5))
    pieces = []
    for index, word in enumerate(argv):
        style = draw(st.sampled_from(["plain", "double", "single"]))
        if style == "plain" and word and all(b in _PLAIN_BYTES for b in word) and not (index == 0 and word[0] == 42):
            pieces.append(word)
        elif style == "single" and not any(b in word for b in b"\\\r\n\x00"):
            pieces.append(single_quoted(word))
        else:
            pieces.append(double_quoted(word, draw(st.integers(0, 0xFFFF))))
    separators = [draw(st.sampled_from([b" ", b"  ", b"\t", b" \t "])) for _ in argv]
    lead = draw(st.sampled_from([b"", b" ", b"\t"]))
    line = lead + b"".join(sep + piece for sep, piece in zip([b"", *separators[1:]], pieces, strict=True))
    return line + draw(st.sampled_from([b"\n", b"\r\n", b" \r\n"])), argv


def new_parser(core: str) -> RequestParser:
    """A parser of the named core with the machine's small limits."""
    cls = CORES[core].request_parser.RequestParser
    return cls(max_bulk_length=MAX_BULK, max_multibulk_length=MAX_COUNT)  # type: ignore[no-any-return]


def parse_whole(data: bytes, sizes: int | None, core: str) -> tuple[list[list[bytes]], str | None]:
    """Every request from ``data`` fed at once (``sizes`` None) or in pieces, then the error if any."""
    parser = new_parser(core)
    requests: list[list[bytes]] = []
    step = sizes or max(len(data), 1)
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
            while (request := parser.next_request()) is not None:
                requests.append(request)
    except ProtocolError as exc:
        return requests, exc.message
    return requests, None


class ParserMachine(RuleBasedStateMachine):
    """A live parser fed a growing stream in random pieces; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.stream = b""  # everything generated so far
        self.fed = 0  # how much of it the live parser has been given
        self.expected: list[list[bytes]] = []  # requests encoded before any corruption
        self.known_error: str | None = None  # the error a known mistake must give
        self.damaged = False  # random damage: what follows is unpredictable
        self.got: list[list[bytes]] = []
        self.returned_bytes = 0  # argument bytes handed out: the parser no longer holds them
        self.error: ProtocolError | None = None
        self.parser = RequestParser(max_bulk_length=MAX_BULK, max_multibulk_length=MAX_COUNT)

    @initialize(core=st.sampled_from(PATHS))
    def choose_path(self, core: str) -> None:
        self.parser = new_parser(core)

    @property
    def corrupted(self) -> bool:
        return self.known_error is not None or self.damaged

    # -- building the stream ---------------------------------------------------------------------

    def _add(self, data: bytes, request: list[bytes] | None) -> None:
        self.stream += data
        if request is not None and not self.corrupted:
            self.expected.append(request)

    @rule(args=st.lists(arguments, min_size=1, max_size=MAX_COUNT))
    def add_multibulk(self, args: list[bytes]) -> None:
        self._add(encode_command(*args), args)

    @rule(line=inline_requests())
    def add_inline(self, line: tuple[bytes, list[bytes]]) -> None:
        self._add(line[0], line[1])

    @rule(count=st.integers(1, 12), size=st.integers(0, MAX_BULK))
    def add_pipeline(self, count: int, size: int) -> None:
        """A run of identical small requests: what pipelining clients send."""
        for _ in range(count):
            self._add(encode_command(b"SET", b"key", b"v" * size), [b"SET", b"key", b"v" * size])

    @rule(blank=st.sampled_from([b"\r\n", b"\n", b" \t\r\n", b"*0\r\n", b"*-1\r\n", b"*-10\r\n"]))
    def add_blank(self, blank: bytes) -> None:
        self._add(blank, None)

    @precondition(lambda self: not self.corrupted)
    @rule(mistake=st.sampled_from(KNOWN_MISTAKES))
    def add_known_mistake(self, mistake: tuple[bytes, str]) -> None:
        self._add(mistake[0], None)
        self.known_error = mistake[1]

    @precondition(lambda self: len(self.stream) > self.fed)
    @rule(data=st.data())
    def damage(self, data: st.DataObject) -> None:
        """Flip, insert or delete a byte in the part not fed yet."""
        position = data.draw(st.integers(self.fed, len(self.stream) - 1))
        byte = data.draw(st.sampled_from(b"*$\r\n0123456789-+ \"'\\x\x00\xe9"))
        how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        stream = bytearray(self.stream)
        if how == "flip":
            stream[position] = byte
        elif how == "insert":
            stream[position:position] = bytes((byte,))
        else:
            del stream[position]
        self.stream = bytes(stream)
        self.damaged = True

    # -- feeding the live parser -----------------------------------------------------------------

    @rule(size=st.integers(1, 300), drain=st.sampled_from(["next", "all", "chunk"]))
    def feed(self, size: int, drain: str) -> None:
        """Feed the next piece; take requests with next_request(), parse_all() or parse_chunk()."""
        piece = self.stream[self.fed : self.fed + size]
        self.fed += len(piece)
        try:
            if drain == "chunk":  # the servers' way: one call per chunk read, with its fast path
                self._took(self.parser.parse_chunk(piece))
                if self.parser.failed:
                    self.parser.parse_all()  # raises the error that followed the good requests
            else:
                self.parser.feed(piece)
                if drain == "all":
                    while batch := self.parser.parse_all():
                        self._took(batch)
                else:
                    while (request := self.parser.next_request()) is not None:
                        self._took([request])
        except ProtocolError as exc:
            assert self.error is None or exc is self.error, "a second, different error"
            self.error = exc
            if not self.damaged:
                assert self.known_error == exc.message
                assert self.got == self.expected

    def _took(self, requests: list[list[bytes]]) -> None:
        assert self.error is None, "a request after a protocol error"
        self.got += requests
        self.returned_bytes += sum(len(arg) for request in requests for arg in request)
        if not self.damaged:
            assert self.got == self.expected[: len(self.got)]

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def buffered_is_bounded(self) -> None:
        if self.error is not None:
            assert self.parser.buffered == 0
        else:
            assert self.parser.buffered <= BUFFER_BOUND
            assert self.parser.buffered + self.returned_bytes <= self.fed

    @invariant()
    def error_is_sticky(self) -> None:
        if self.error is None:
            return
        self.parser.feed(b"PING\r\n")
        with pytest.raises(ProtocolError) as again:
            self.parser.next_request()
        assert again.value is self.error
        with pytest.raises(ProtocolError) as batch:
            self.parser.parse_all()
        assert batch.value is self.error

    @invariant()
    def clean_stream_parses_exactly(self) -> None:
        if not self.corrupted and self.fed == len(self.stream):
            assert self.got == self.expected
            assert self.error is None

    def teardown(self) -> None:
        """Feed the rest; then whole and byte by byte, on each path, must agree with the live parser."""
        if self.fed < len(self.stream):
            self.feed(len(self.stream) - self.fed, drain="next")
        live = (self.got, None if self.error is None else self.error.message)
        for core in PATHS:
            assert parse_whole(self.stream, None, core) == live
            assert parse_whole(self.stream, 1, core) == live
        if not self.damaged:
            assert live == (self.expected, self.known_error)


ParserMachine.TestCase.settings = MACHINE_SETTINGS
TestParserMachine = ParserMachine.TestCase


# -- the atheris target's checks, over its seeds -----------------------------------------------------

FUZZ_TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_request_parser.py"


def load_fuzz_target() -> ModuleType:
    """Import fuzz/fuzz_request_parser.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("fuzz_request_parser", FUZZ_TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


fuzz_target = load_fuzz_target()


@pytest.mark.parametrize("seed", fuzz_target.SEEDS, ids=lambda seed: repr(seed[:24]))
def test_fuzz_target_holds_on_its_seeds(seed: bytes) -> None:
    fuzz_target.check(seed)


def test_fuzz_seeds_reach_every_protocol_error() -> None:
    """The corpus starts the fuzzer next to every error the parser can give."""
    # The reference way only (fed whole): the test above checks the others agree with it.
    reached = {fuzz_target.run(seed[1:], (), "pure", bool(seed[0] & 0x80), "next")[1] for seed in fuzz_target.SEEDS}
    messages = {
        getattr(request_parser, name)
        for name in dir(request_parser)
        if isinstance(getattr(request_parser, name), str) and getattr(request_parser, name).startswith("ERR Protocol")
    }
    assert {message for message in reached if message and "expected '$'" not in message} == {
        message for message in messages if "%s" not in message
    }
    assert any(message and "expected '$'" in message for message in reached)


def test_fuzz_target_catches_a_broken_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not vacuous: a parser whose result depends on chunking is reported."""
    # The pure core's class: a compiled class cannot be patched, and the check compares every core with it.
    pure_class = CORES["pure"].request_parser.RequestParser
    original = pure_class.feed

    def lossy_feed(self: RequestParser, data: bytes | bytearray | memoryview) -> None:
        original(self, bytes(data)[:-1] if len(data) == 1 and bytes(data) == b"\n" else data)

    monkeypatch.setattr(pure_class, "feed", lossy_feed)
    with pytest.raises(AssertionError):
        fuzz_target.check(b"\x00PING\n")
