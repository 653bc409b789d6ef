"""Reply values and their encoders, RESP2 and RESP3: Python values in, wire bytes out.

Commands return plain Python values; the dispatcher encodes each one once,
in the protocol its client chose with HELLO (:func:`encode_reply` for RESP2,
:func:`encode_reply3` for RESP3, the shapes Redis 7.0 sends):

=========================  ===========================  ==============================
Python value               RESP2 on the wire            RESP3 on the wire
=========================  ===========================  ==============================
``SimpleString("OK")``     ``+OK``                      same
``ErrorReply("ERR x")``    ``-ERR x``                   same
``int``                    ``:42``                      same
``bool``                   ``:1`` / ``:0``              ``#t`` / ``#f``
``bytes`` / ``str``        ``$5 hello`` (str as UTF-8)  same
``Verbatim("text")``       ``$N text``                  ``=N txt:text``
``None`` / ``NULL_ARRAY``  ``$-1`` / ``*-1``            ``_``
``list`` / ``tuple``       ``*N`` then each element     same
``SetReply([...])``        ``*N``                       ``~N``
``PushReply([...])``       ``*N``                       ``>N`` (out-of-band: pub/sub)
``dict``                   ``*2N`` key, value, ...      ``%N`` key, value, ...
``float``                  ``$N`` of its repr           ``,1.5`` (``,inf``, ``,-inf``, ``,nan``)
``RawReply(b"...")``       the bytes as they are        the bytes as they are
=========================  ===========================  ==============================

``RawReply`` constants are protocol-neutral except :data:`NULL_BULK`, which
the dispatcher swaps for ``_`` on a RESP3 connection (:func:`resp3_raw`).
"""

from __future__ import annotations

from typing import Final, TypeAlias


class SimpleString(str):
    """A status reply: ``+text``. Must not contain CR or LF."""

    __slots__ = ()


class ErrorReply(str):
    """An error reply: ``-PREFIX message``. The first word is the error code (ERR, NOAUTH, BUSY...)."""

    __slots__ = ()

    @property
    def code(self) -> str:
        """The error prefix, the first word of the message (``ERR`` for ``ERR unknown command``)."""
        return self.split(" ", 1)[0]


class RawReply(bytes):
    """Bytes that are already a complete RESP2 reply, written as they are."""

    __slots__ = ()


class _NullArray:
    """The RESP2 null array, ``*-1``; a singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


NULL_ARRAY: Final = _NullArray()


class Verbatim(str):
    """Text a person reads (INFO, CLIENT LIST): a bulk string in RESP2, a ``txt`` verbatim string in RESP3."""

    __slots__ = ()


class SetReply(list):
    """An unordered collection Redis sends as a RESP3 set (``~N``); an array in RESP2. Order is kept as given."""

    __slots__ = ()


class PushReply(list):
    """An out-of-band message (pub/sub): ``>N`` in RESP3, an ordinary array in RESP2."""

    __slots__ = ()


Reply: TypeAlias = "SimpleString | ErrorReply | RawReply | int | bytes | str | float | list[Reply] | tuple[Reply, ...] | dict[Reply, Reply] | _NullArray | None"  # noqa: E501

# Precomputed replies for the constants a hot path sends most.
OK: Final = RawReply(b"+OK\r\n")
PONG: Final = RawReply(b"+PONG\r\n")
NULL_BULK: Final = RawReply(b"$-1\r\n")
QUEUED: Final = RawReply(b"+QUEUED\r\n")
ZERO: Final = RawReply(b":0\r\n")
ONE: Final = RawReply(b":1\r\n")
EMPTY_ARRAY: Final = RawReply(b"*0\r\n")
#: RESP3's one null, for every RESP2 null (``$-1`` and ``*-1``).
RESP3_NULL: Final = RawReply(b"_\r\n")

_CRLF = b"\r\n"
_SMALL_INTS = [f":{i}\r\n".encode() for i in range(-1, 1024)]


def _sanitize_line(text: str) -> str:
    """Status and error replies are one line: CR/LF inside would desync the client, so they become spaces."""
    if "\r" in text or "\n" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


def encode_error(message: str) -> bytes:
    """Encode ``message`` (``"ERR something"``) as an error reply.

    Text is sent as UTF-8, except lone surrogates U+DC80..U+DCFF, which become
    the raw bytes 0x80..0xFF (``surrogateescape``): an error that quotes the
    client's bytes holds them decoded with ``errors="surrogateescape"``, so
    they go back on the wire exactly as sent, as Redis sends them.
    """
    return b"-" + _sanitize_line(message).encode("utf-8", "surrogateescape") + _CRLF


def encode_bulk(data: bytes) -> bytes:
    """Encode bytes as a bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def encode_integer(value: int) -> bytes:
    """Encode an integer reply, from a table for small values."""
    if -1 <= value < 1023:
        return _SMALL_INTS[value + 1]
    return b":%d\r\n" % value


def _encode_into(value: object, out: list[bytes]) -> None:
    # Order matters: RawReply before bytes, the str subclasses before str, bool is an int.
    if isinstance(value, RawReply):
        out.append(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, SimpleString):
        out.append(b"+" + _sanitize_line(value).encode() + _CRLF)
    elif isinstance(value, ErrorReply):
        out.append(encode_error(value))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, int):
        out.append(encode_integer(int(value)))
    elif value is None:
        out.append(b"$-1\r\n")
    elif isinstance(value, list | tuple):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, out)
    elif value is NULL_ARRAY:
        out.append(b"*-1\r\n")
    elif isinstance(value, dict):
        out.append(b"*%d\r\n" % (2 * len(value)))
        for key, item in value.items():
            _encode_into(key, out)
            _encode_into(item, out)
    elif isinstance(value, float):
        data = repr(value).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a RESP2 reply")


#: RESP3 doubles that are not finite, spelled as Redis spells them.
_SPECIAL_DOUBLES: Final = {float("inf"): b",inf\r\n", float("-inf"): b",-inf\r\n"}


def _encode3_into(value: object, out: list[bytes]) -> None:
    # RESP2's order, with RESP3's own types first where a subclass would otherwise be taken for its base.
    if isinstance(value, RawReply):
        out.append(RESP3_NULL if value is NULL_BULK else value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, SimpleString):
        out.append(b"+" + _sanitize_line(value).encode() + _CRLF)
    elif isinstance(value, ErrorReply):
        out.append(encode_error(value))
    elif isinstance(value, Verbatim):
        data = value.encode()
        out.append(b"=%d\r\ntxt:%b\r\n" % (len(data) + 4, data))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, bool):
        out.append(b"#t\r\n" if value else b"#f\r\n")
    elif isinstance(value, int):
        out.append(encode_integer(int(value)))
    elif value is None or value is NULL_ARRAY:
        out.append(RESP3_NULL)
    elif isinstance(value, list | tuple):
        prefix = b">" if isinstance(value, PushReply) else b"~" if isinstance(value, SetReply) else b"*"
        out.append(b"%b%d\r\n" % (prefix, len(value)))
        for item in value:
            _encode3_into(item, out)
    elif isinstance(value, dict):
        out.append(b"%%%d\r\n" % len(value))
        for key, item in value.items():
            _encode3_into(key, out)
            _encode3_into(item, out)
    elif isinstance(value, float):
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            out.append(special)
        else:
            out.append(b",nan\r\n" if value != value else b",%b\r\n" % repr(value).encode())
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a RESP3 reply")


def encode_reply3(value: object) -> bytes:
    """Encode any :data:`Reply` value to RESP3 bytes (see the table above); errors as :func:`encode_reply`."""
    if isinstance(value, RawReply):
        return RESP3_NULL if value is NULL_BULK else value
    out: list[bytes] = []
    _encode3_into(value, out)
    return out[0] if len(out) == 1 else b"".join(out)


def encode_for(value: object, resp: int) -> bytes:
    """Encode ``value`` in the protocol a client speaks (``ClientState.resp``: 2 or 3)."""
    return encode_reply(value) if resp == 2 else encode_reply3(value)


def encode_reply(value: object) -> bytes:
    """Encode any :data:`Reply` value to RESP2 bytes.

    Error handling: a value of an unsupported type raises :class:`TypeError`;
    that is a bug in a command, not a peer's mistake, and the front ends turn
    it into an ``-ERR`` reply for that one request.
    """
    if type(value) is int:  # the commonest replies by exact type first (a count, a value): no isinstance chain
        return encode_integer(value)
    if type(value) is bytes:
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if isinstance(value, RawReply):
        return value
    out: list[bytes] = []
    _encode_into(value, out)
    return out[0] if len(out) == 1 else b"".join(out)


def encode_command(*args: object) -> bytes:
    """Encode a request as a RESP2 array of bulk strings (what clients send).

    ``bytes`` go as they are, ``str`` as UTF-8, ``int``/``float`` as their
    decimal text, as redis-py and redis-cli do.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("bool is not a valid command argument; send 0/1 or a string")
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        elif isinstance(arg, bytearray | memoryview):
            data = bytes(arg)
        else:
            raise TypeError(f"cannot send {type(arg).__name__} as a command argument")
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class VerbatimBytes(bytes):
    """A RESP3 verbatim string (``=N txt:...``) as bytes, its three-letter format dropped.

    A subclass only so that a display can tell it from a bulk string (redis-cli
    prints verbatim text as it is); everywhere else it is ``bytes``.
    """

    __slots__ = ()
