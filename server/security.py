"""Protected mode and cross-protocol (HTTP) detection: the checks Redis makes before it trusts a peer.

Both front ends call these at two points, and nothing else:

* :func:`protected_mode_refusal` once per accepted connection (after the TLS
  handshake, so the refusal is readable by a TLS client). With protected mode
  on and no password set, a peer that is not on the loopback interface gets
  Redis's ``-DENIED ...`` text and the connection is closed; INFO counts it in
  ``rejected_connections``. Redis 7 applies this whatever the bind address is;
  so does crossdock (with the default bind, 127.0.0.1, no outside peer can
  arrive to be refused).
* :func:`is_http_request` on the cold path of the dispatcher, for a request
  whose first word is not a command: ``POST`` or ``Host:`` (any case) is what
  a browser or an SSRF'd HTTP client sends, and is the first step of a
  cross-protocol attack. The connection is closed without a reply and
  :func:`log_security_attack` writes Redis's warning, at most once a minute so
  that a flood of such requests cannot flood the log.

Loopback means the whole loopback range (127.0.0.0/8 and ::1, IPv4-mapped
forms included). Redis 7.0 compares the peer's text with ``127.0.0.1`` and
``::1`` only, so it refuses a client that connects from 127.0.0.2; such an
address cannot come from another machine, so crossdock lets it in.

Error handling: an address that does not parse as an IP address (a Unix
socket path, say) is treated as not loopback: refusing is the safe side.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from typing import Final

import structlog

from server.config import Config

log = structlog.get_logger("crossdock.security")

#: Redis 7.0's reply to a refused peer (networking.c clientAcceptHandler), word for word, typo included.
#: Its advice names ``CONFIG SET``; crossdock's equivalent is ``--protected-mode no`` or ``--requirepass``.
DENIED_REPLY: Final = (
    b"-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for "
    b"the default user. In this mode connections are only accepted from the loopback interface. If you want to "
    b"connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable "
    b"protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting "
    b"to Redis from the same host the server is running, however MAKE SURE Redis is not publicly accessible from "
    b"internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just "
    b"disable the protected mode by editing the Redis configuration file, and setting the protected mode option "
    b"to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart "
    b"it with the '--protected-mode no' option. 4) Setup a an authentication password for the default user. "
    b"NOTE: You only need to do one of the above things in order for the server to start accepting connections "
    b"from the outside.\r\n"
)

#: Redis's log text when a request starts with POST or Host: (networking.c securityWarningCommand).
SECURITY_ATTACK_MESSAGE: Final = (
    "Possible SECURITY ATTACK detected. It looks like somebody is sending POST or Host: commands to Redis. "
    "This is likely due to an attacker attempting to use Cross Protocol Scripting to compromise your Redis "
    "instance. Connection aborted."
)

#: Seconds between two security-attack log lines. Redis logs "from time to time (to avoid creating a DOS as a
#: result of too many logs)": at most once every 60 seconds. The connection is closed every time.
SECURITY_ATTACK_LOG_INTERVAL: Final = 60.0

#: First words of an HTTP request that Redis treats as an attack (compared in lower case).
HTTP_FIRST_WORDS: Final = frozenset({b"post", b"host:"})

#: Seconds a refused peer's input is read and thrown away after the ``-DENIED`` text, before the close.
#: Closing a socket with unread input makes the kernel send a reset, which can destroy the refusal before the
#: client reads it (redis-cli sends its command at once). The client reads the text and closes within a round
#: trip; 2 s bounds a client that does not.
REFUSAL_LINGER: Final = 2.0

#: Bytes of a refused peer's input read and discarded at most, so lingering costs no memory and little time.
REFUSAL_DRAIN_LIMIT: Final = 64 * 1024

_last_attack_logged = -SECURITY_ATTACK_LOG_INTERVAL * 2


def protected_mode_active(config: Config) -> bool:
    """True when protected mode refuses non-loopback peers: it is on and no password is set."""
    return config.protected_mode and not config.requirepass


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address as text, an IPv6 scope allowed) is on the loopback interface."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def protected_mode_refusal(config: Config, peername: object) -> bytes | None:
    """The bytes to send before closing when this peer must be refused, or ``None`` to serve it.

    ``peername`` is the socket's peer address (a ``(host, port, ...)`` tuple).
    """
    if not protected_mode_active(config):
        return None
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    if is_loopback(str(host)):
        return None
    log.debug("protected_mode_denied", peer=str(host))
    return DENIED_REPLY


class Refusal(asyncio.Protocol):
    """Asyncio front end: takes a refused peer's transport over, sends ``reply``, then closes.

    Our side is ended at once (``write_eof``, where the transport has one;
    a TLS close sends close_notify instead); the peer's input is read and
    dropped until it closes, :data:`REFUSAL_DRAIN_LIMIT` bytes have come or
    :data:`REFUSAL_LINGER` has passed, whichever is first, so the reply is
    not destroyed by a reset. No task is created per refused peer.

    Error handling: a reset from the peer just ends it (``connection_lost``).
    """

    def __init__(self, transport: asyncio.Transport, reply: bytes) -> None:
        self._transport = transport
        self._drained = 0
        transport.write(reply)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained >= REFUSAL_DRAIN_LIMIT:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


def refuse_blocking(sock: socket.socket, reply: bytes) -> None:
    """Threaded front end: the same as :class:`Refusal` on a blocking (plain or TLS) socket.

    The caller closes the socket afterwards. Error handling: a reset or a timeout only ends the linger early.
    """
    try:
        sock.sendall(reply)
        if not isinstance(sock, ssl.SSLSocket):
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REFUSAL_LINGER
        drained = 0
        while drained < REFUSAL_DRAIN_LIMIT and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(REFUSAL_DRAIN_LIMIT)
            if not chunk:
                break
            drained += len(chunk)
    except (OSError, ValueError):
        pass


def is_http_request(first_word: bytes) -> bool:
    """Whether a request's first word is ``POST`` or ``Host:`` in any case (checked for unknown commands only)."""
    return len(first_word) <= 5 and first_word.lower() in HTTP_FIRST_WORDS


def log_security_attack(peer: str) -> None:
    """Log Redis's cross-protocol warning, unless it was logged less than a minute ago.

    Called from any thread (threaded front end): two threads may both log in the same instant, which is
    harmless; the interval only keeps a flood from flooding the log.
    """
    global _last_attack_logged
    now = time.monotonic()
    if now - _last_attack_logged < SECURITY_ATTACK_LOG_INTERVAL:
        return
    _last_attack_logged = now
    log.warning("possible_security_attack", message=SECURITY_ATTACK_MESSAGE, peer=peer)
