"""Start-up checks that turn a bad ``--host``, a busy ``--port`` or ``--metrics-port`` into one line.

``crossdock serve`` runs :func:`check` before it starts the pool or a front
end, so a mistake costs no pool start-up and prints one line naming the flag,
the value and what to do instead of a traceback. The checks bind (never
listen on) a throw-away socket the way the front ends will, then close it: a
port taken between this check and the real bind (a race) is reported through
:func:`bind_error_message`, which the front ends call with the real error.
"""

from __future__ import annotations

import errno
import socket

from server.config import Config
from server.errors import StartupError

#: Where the one-line messages come from, as a user typed it.
PROGRAM = "crossdock serve"


class PreflightError(StartupError):
    """A start-up check failed; ``str()`` is the whole one-line message for the user."""


def _resolve(flag_value: str, port: int) -> list[tuple[int, int, int, tuple[object, ...]]]:
    """Every address ``asyncio.start_server`` would bind for ``host`` (it binds them all)."""
    infos = socket.getaddrinfo(flag_value or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return [(family, kind, proto, address) for family, kind, proto, _name, address in infos]


def bind_error_message(flag: str, host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind of ``host:port`` given by ``flag`` (``--port`` or ``--metrics-port``).

    Names the flag, the value and what to do. Also used by the front ends when
    the real bind fails after :func:`check` passed (another process took the
    port in between).
    """
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return (
            f"{PROGRAM}: --host {host}: cannot resolve this name ({exc.strerror}); "
            "use an IP address such as 127.0.0.1 or 0.0.0.0, or a name this machine resolves"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{PROGRAM}: {flag} {port}: address {where} is already in use by another process; "
            f"stop it or choose another port with {flag} (0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{PROGRAM}: {flag} {port}: permission denied binding {where} (ports below 1024 need privileges); "
            f"choose a port from 1024 to 65535 with {flag}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{PROGRAM}: --host {host}: not an address of this machine; "
            "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of its own addresses"
        )
    return f"{PROGRAM}: {flag} {port}: cannot bind {where} ({exc.strerror or exc}); check --host and {flag}"


def _try_bind(flag: str, host: str, port: int) -> None:
    """Bind a throw-away socket on every address of ``host`` (with SO_REUSEADDR, as the servers do)."""
    try:
        targets = _resolve(host, port)
    except socket.gaierror as exc:
        raise PreflightError(bind_error_message(flag, host, port, exc)) from None
    for family, kind, proto, address in targets:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # e.g. an IPv6 address on a machine without IPv6: the server skips it too
            continue
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
                sock.bind(address)
            except OSError as exc:
                raise PreflightError(bind_error_message(flag, host, port, exc)) from None


def check(config: Config) -> None:
    """Check that the server can bind what ``config`` asks for. Raises :class:`PreflightError` with one line.

    Checks, in order: ``--host`` resolves to an address of this machine;
    ``--port`` is free (0 always is); ``--metrics-port`` differs from
    ``--port`` and is free.
    """
    _try_bind("--port", config.host, config.port)
    if config.metrics_port > 0:
        if config.metrics_port == config.port:
            raise PreflightError(
                f"{PROGRAM}: --metrics-port {config.metrics_port}: the same port as --port; "
                "choose another port for the metrics endpoint (0 picks a free one)"
            )
        _try_bind("--metrics-port", config.host, config.metrics_port)
