"""The container's HEALTHCHECK: ``python -m server.observability.healthcheck`` exits 0 if the server answers.

It reads the same ``CROSSDOCK_*`` variables the server does (``PORT``,
``TLS_CERT``), connects to 127.0.0.1, sends ``PING`` and calls the server
healthy when the reply is ``+PONG`` or ``-NOAUTH ...``: with ``--requirepass``
the server is up and answering, it just wants a password the check does not
need to know. With ``CROSSDOCK_TLS_CERT`` set it speaks TLS without verifying
the certificate (it is our own server, on loopback; liveness is the question,
not identity). A server started with ``--tls-ca`` refuses clients without a
certificate, so the check would fail there: configure such a container's
health check yourself.

Loopback peers are never refused by protected mode, so the check works with
protected mode on or off.

Error handling: any connection error, timeout or other reply exits 1 with
the reason on stderr, which ``docker inspect`` shows.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Mapping

from server.config import DEFAULT_PORT

#: Seconds for the whole check (connect, handshake, reply). Docker's own --timeout (3 s in the Dockerfile)
#: is the outer bound; this keeps a hung server from holding the check until Docker kills it.
HEALTHCHECK_TIMEOUT = 2.0

#: Replies that mean "up and answering".
HEALTHY_PREFIXES = (b"+PONG\r\n", b"-NOAUTH ")


def check(environ: Mapping[str, str]) -> str | None:
    """Run the check; ``None`` when healthy, else the reason."""
    port = int(environ.get("CROSSDOCK_PORT", DEFAULT_PORT))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=HEALTHCHECK_TIMEOUT) as plain:
            sock: socket.socket = plain
            if environ.get("CROSSDOCK_TLS_CERT"):
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(plain)
            sock.sendall(b"PING\r\n")
            reply = b""
            while b"\n" not in reply and len(reply) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return f"cannot reach 127.0.0.1:{port}: {exc}"
    if reply.startswith(HEALTHY_PREFIXES):
        return None
    return f"unexpected reply to PING: {reply[:80]!r}"


def main() -> int:
    reason = check(os.environ)
    if reason is None:
        return 0
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
