"""The sans-IO RESP2 core shared by both servers, the clients and the load generator.

No sockets, no asyncio, no threads here: bytes in, requests or replies out,
values in, bytes out (the h11 pattern). Every driver feeds whatever chunks
its transport produced; a chunk boundary may fall anywhere.

Requests (servers)::

    parser = RequestParser()
    parser.feed(chunk)
    while (args := parser.next_request()) is not None:   # list[bytes]
        ...                                              # may raise ProtocolError

Replies (clients)::

    reader = ReplyParser()
    reader.feed(chunk)
    while (reply := reader.next_reply()) is not NOT_ENOUGH_DATA:
        ...                          # bytes, int, SimpleString, ErrorReply, None, list
"""

from typing import TYPE_CHECKING

from server.protocol import cores
from server.protocol._redis_text import split_args, string2ll
from server.protocol.errors import ProtocolError
from server.protocol.incomplete import NOT_ENOUGH_DATA
from server.protocol.reply import (
    NULL_ARRAY,
    OK,
    PONG,
    ErrorReply,
    RawReply,
    Reply,
    SimpleString,
    encode_bulk,
    encode_command,
    encode_error,
    encode_integer,
    encode_reply,
)

#: Which parser core runs in this process: ``"mypyc"`` or ``"pure"`` (see :mod:`server.protocol.cores`).
CORE: str = cores.SELECTED.name
if TYPE_CHECKING:  # both cores are the same source: type-check against the pure one
    from server.protocol.reply_parser import ReplyParser
    from server.protocol.request_parser import RequestParser
else:
    RequestParser = cores.SELECTED.request_parser.RequestParser
    ReplyParser = cores.SELECTED.reply_parser.ReplyParser

__all__ = [
    "CORE",
    "NOT_ENOUGH_DATA",
    "NULL_ARRAY",
    "OK",
    "PONG",
    "ErrorReply",
    "ProtocolError",
    "RawReply",
    "Reply",
    "ReplyParser",
    "RequestParser",
    "SimpleString",
    "encode_bulk",
    "encode_command",
    "encode_error",
    "encode_integer",
    "encode_reply",
    "split_args",
    "string2ll",
]
