"""TLS for both front ends: the server's ``ssl.SSLContext`` and the threaded front end's handshake.

``--tls-cert`` and ``--tls-key`` turn the port into a TLS port (there is no
second, plain port: a TLS server should not also accept clear text on the
same address). ``--tls-ca`` adds client authentication: every client must
present a certificate signed by one of those CAs, or the handshake fails
(Redis's ``tls-auth-clients yes`` with ``tls-ca-cert-file``).

The context allows TLS 1.2 and 1.3 only: 1.0 and 1.1 are deprecated
(RFC 8996) and every client that speaks RESP over TLS today does 1.2.
Ciphers and options are Python's secure defaults for a TLS server context
(``ssl.PROTOCOL_TLS_SERVER``). The system's CA store is never loaded: with
``--tls-ca`` only that bundle can vouch for a client.

The asyncio front end passes the context to ``asyncio.start_server``; the
handshake then runs on the loop, bounded by :data:`TLS_HANDSHAKE_TIMEOUT`.
The threaded front end calls :func:`server_handshake` in the connection's
own thread, never in the accept loop, so a client that connects and never
finishes its handshake holds only its own thread, for at most that long.

Error handling: a certificate, key or CA file that is missing or unreadable
raises :class:`TLSSetupError` naming the flag and the file; the front ends
turn that into an ``error`` log line and exit status 2 before the port
opens. A handshake that fails or times out (a plain-text client, a client
without an accepted certificate) closes that connection only; it is logged
at debug, as a port scanner would otherwise fill the log.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Final

import structlog

from server.config import Config
from server.errors import CrossdockError

log = structlog.get_logger("crossdock.tls")

#: Seconds a client has to complete the TLS handshake. A handshake is two round trips plus a few
#: milliseconds of crypto; 10 s covers a slow intercontinental link with retransmits, while a peer that
#: connects and sends nothing cannot hold a thread (threaded front end) or a socket for long.
#: (asyncio's own default is 60 s.)
TLS_HANDSHAKE_TIMEOUT: Final = 10.0

#: Oldest protocol version accepted (RFC 8996 deprecates TLS 1.0 and 1.1).
TLS_MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2


class TLSSetupError(CrossdockError, ValueError):
    """A TLS file given in the configuration cannot be used; the message names the flag and the file."""


def server_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` when ``--tls-cert`` is not set (plain TCP).

    Error handling: raises :class:`TLSSetupError` when a file is missing,
    unreadable, or not a matching PEM certificate and key (or CA bundle).
    """
    if not config.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_MINIMUM_VERSION
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(
            f"--tls-cert {config.tls_cert} / --tls-key {config.tls_key}: cannot load the certificate and key ({exc})"
        ) from None
    if config.tls_ca:
        try:
            context.load_verify_locations(cafile=config.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError(f"--tls-ca {config.tls_ca}: cannot load the CA bundle ({exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context_or_exit(config: Config) -> ssl.SSLContext | None:
    """:func:`server_context` for a front end's start-up: a bad file logs ``tls_setup_failed`` and exits 2."""
    try:
        return server_context(config)
    except TLSSetupError as exc:
        log.error("tls_setup_failed", error=str(exc))
        raise SystemExit(2) from None


def start_server_arguments(context: ssl.SSLContext | None) -> dict[str, Any]:
    """Keyword arguments for ``asyncio.start_server``: TLS with a bounded handshake, or nothing for plain TCP."""
    if context is None:
        return {}
    return {"ssl": context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}


def server_handshake(context: ssl.SSLContext, sock: socket.socket) -> ssl.SSLSocket | None:
    """Wrap an accepted socket and complete the server side of the handshake (threaded front end).

    Runs in the connection's thread. Returns the TLS socket (blocking, no
    timeout, like the plain socket it replaces) or ``None`` when the
    handshake failed, in which case the socket is closed.

    Error handling: an ``ssl.SSLError`` (bad or missing client certificate,
    a plain-text client), a timeout after :data:`TLS_HANDSHAKE_TIMEOUT`, or a
    reset is logged at debug and answered by closing the connection.
    """
    sock.settimeout(TLS_HANDSHAKE_TIMEOUT)
    try:
        tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:
        log.debug("tls_handshake_failed", error=str(exc))
        sock.close()
        return None
    try:
        tls_sock.do_handshake()
    except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
        log.debug("tls_handshake_failed", error=str(exc) or type(exc).__name__)
        tls_sock.close()
        return None
    tls_sock.settimeout(None)
    return tls_sock
