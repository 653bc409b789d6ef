"""The exceptions every crossdock client raises, one type per thing a caller reacts to differently.

::

    ClientError                               base: catch this to catch everything below
    ├── ReplyError                            the server answered with an error reply (-ERR, -NOAUTH ...)
    ├── ClientConnectionError(ConnectionError)  the connection cannot be used
    │   ├── ConnectFailedError                  ... because it was never established
    │   └── ConnectionLostError                 ... because it broke or was closed after connecting
    └── ClientTimeoutError(TimeoutError)      a connect or a command took longer than its timeout

Why these and not more: a caller either fixes its request (``ReplyError``,
switching on ``.code``), reconnects (``ClientConnectionError``), or retries
later / gives up on a slow call (``ClientTimeoutError``). The connection and
timeout errors also subclass the builtin :class:`ConnectionError` and
:class:`TimeoutError`, so code written against sockets or asyncio
(``except TimeoutError``) keeps working.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every exception raised by :mod:`clients`."""


class ReplyError(ClientError):
    """The server answered a command with an error reply.

    ``str(exc)`` is the whole reply text as the server sent it
    (``"ERR unknown command 'FOO', with args beginning with: "``); ``code`` is
    its first word, Redis's error prefix (``ERR``, ``NOAUTH``, ``WRONGTYPE``,
    ``BUSY`` ...), which is what a caller should switch on; ``message`` is the
    rest of the text after the code.

    The connection is still healthy after a ``ReplyError``: the error was one
    well-formed reply to one request. In a pipeline's ``results`` an error
    reply is stored as a ``ReplyError`` instance instead of being raised, so
    one failed command does not hide the replies of the others.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        code, _, message = text.partition(" ")
        self.code: str = code
        self.message: str = message

    def __eq__(self, other: object) -> bool:
        # Value semantics, so ``results == [..., ReplyError("ERR x")]`` reads naturally in tests.
        if isinstance(other, ReplyError):
            return type(self) is type(other) and str(self) == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((type(self), str(self)))

    def __repr__(self) -> str:
        return f"ReplyError({str(self)!r})"


class ClientConnectionError(ClientError, ConnectionError):
    """The connection cannot carry commands: never established, lost, or closed by us."""


class ConnectFailedError(ClientConnectionError):
    """Connecting failed: refused, unreachable host, name resolution.

    ``__cause__`` holds the underlying :class:`OSError`. Nothing was sent, so
    retrying is always safe. (A refused AUTH at connect is raised as the
    server's :class:`ReplyError`, code ``WRONGPASS`` or ``ERR``, instead:
    retrying would not help.)
    """


class ConnectionLostError(ClientConnectionError):
    """The connection broke after it was established, or the client was closed.

    Raised for every call that was waiting for a reply when the connection
    went away, and for every later call on the same client. Whether a
    command whose reply was lost ran on the server is unknown: retry only
    idempotent commands. A reply stream that cannot be parsed (the server
    sent bytes that are not RESP2) is reported as this too, because after a
    framing error the stream cannot be resynchronised and the client closes
    the connection.
    """


class ClientTimeoutError(ClientError, TimeoutError):
    """A connect, or a command's reply, did not arrive within its timeout.

    For a command the connection stays usable: the late reply is read and
    dropped when it arrives, and later calls get their own replies (see the
    clients' "Timeouts and cancellation" notes). A command that timed out may
    still have run, or still be running, on the server.
    """
