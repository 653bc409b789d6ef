"""TLS for the clients: the options of redis-cli (``--tls --cacert --cert --key --sni --insecure``) as one value.

:class:`TlsOptions` is what :class:`~clients.Client`, :class:`~clients.AsyncClient`,
:class:`~clients.AsyncClientPool` and ``crossdock cli`` take; it builds the
:class:`ssl.SSLContext` and names the server for SNI and hostname checks. No
I/O here beyond reading the certificate files.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

#: The oldest TLS version offered: the server accepts 1.2 and newer (server/tls.py), as Redis does by default.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsOptions:
    """How to speak TLS to the server, as redis-cli's flags say it.

    ``cacert``: PEM CA bundle that signed the server's certificate (default:
    the system's trust store). ``cert``/``key``: a client certificate, for a
    server started with ``--tls-ca``. ``sni``: the server name sent and
    checked (default: the host connected to). ``insecure``: skip verifying the
    server's certificate (redis-cli's ``--insecure``; for tests only).
    """

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    sni: str | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        """A client context with these options.

        Error handling: a missing or unreadable file raises :class:`OSError`
        (``FileNotFoundError``), a file that is not PEM :class:`ssl.SSLError`.
        """
        context = ssl.create_default_context(cafile=self.cacert)
        context.minimum_version = MINIMUM_VERSION
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def server_hostname(self, host: str) -> str:
        """The name to send as SNI and check the certificate against."""
        return self.sni or host


def resolve_tls(tls: TlsOptions | bool | None) -> TlsOptions | None:
    """A client's ``tls`` argument as options: ``True`` means TLS with the system's trust store."""
    if tls is True:
        return TlsOptions()
    if tls is False or tls is None:
        return None
    return tls
