"""The one exception hierarchy of the server: every error it raises on purpose derives from CrossdockError.

h11's habit (``_util.py``): one base, a few meaningful branches, each caught
where it can be answered. A client's mistake becomes a reply
(:class:`CommandError`, and :class:`~server.protocol.errors.ProtocolError`
which also closes the connection); an operator's mistake stops start-up with
one line (:class:`StartupError` and its subclasses elsewhere, e.g. the TLS and
pool ones). Anything that is not a ``CrossdockError`` is a bug.
"""

from __future__ import annotations


class CrossdockError(Exception):
    """Base of every exception the server raises deliberately."""


class CommandError(CrossdockError):
    """Raised by a handler or an argument converter: answered as an error reply, the connection goes on.

    ``message`` is the full reply text including its code, e.g.
    ``"ERR value is not an integer or out of range"``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StartupError(CrossdockError):
    """The server cannot start with this configuration; the message is for the operator (exit 1)."""
