"""The one error type for a peer's protocol mistakes (the h11 pattern)."""

from server.errors import CrossdockError


class ProtocolError(CrossdockError):
    """The peer sent bytes that are not a valid RESP2 request.

    ``message`` is the exact error reply text Redis sends for the same mistake,
    without the leading ``-`` and trailing CRLF (for example
    ``"ERR Protocol error: too big inline request"``). A server answers it with
    :func:`server.protocol.reply.encode_error` and then closes the connection,
    as Redis does: after a framing error the stream cannot be resynchronised.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
