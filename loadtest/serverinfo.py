"""Ask the server about itself (INFO) and read its memory, for reports and the hold scenario.

The server's resident memory comes from ``/proc/<pid>/status`` (VmRSS) when
the server is on this machine: the pid is INFO's ``process_id``, and a local
``/proc`` entry is only trusted for a loopback target. Otherwise INFO's
``used_memory_rss`` is used (crossdock and Redis both report it). The report
says which source it used.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

from server.protocol import NOT_ENOUGH_DATA, ErrorReply, ReplyParser, encode_command

#: Seconds an INFO round trip may take. INFO is answered on the front end, even while the pool
#: is busy, so a slow answer means an overloaded front end: the report then just lacks the field.
INFO_TIMEOUT: Final = 5.0

#: Largest INFO reply read, in bytes. A Redis INFO is about 5 KB; this refuses a runaway.
MAX_INFO_BYTES: Final = 1 << 20


def _info_on(sock: socket.socket) -> dict[str, str]:
    """Send INFO on a connected socket and parse the reply. Errors as :func:`query_info`."""
    sock.sendall(encode_command("INFO"))
    parser = ReplyParser()
    received = 0
    while True:
        reply = parser.next_reply()
        if reply is not NOT_ENOUGH_DATA:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("server closed the connection during INFO")
        received += len(chunk)
        if received > MAX_INFO_BYTES:
            raise ValueError("INFO reply too large")
        parser.feed(chunk)
    if isinstance(reply, ErrorReply) or not isinstance(reply, bytes | str):
        raise ValueError(f"unexpected INFO reply: {reply!r}")
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def query_info(host: str, port: int, timeout: float = INFO_TIMEOUT) -> dict[str, str]:
    """INFO as a dict of ``field: value`` (sections flattened), on a connection of its own.

    Error handling: raises OSError (connection trouble, timeout) or ValueError
    (an error reply, an oversized or non-bulk reply).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        return _info_on(sock)


class InfoProbe:
    """One connection opened before the load's connections and kept for every INFO of the run.

    The hold scenario opens as many connections as the server allows; an INFO
    connection opened after them would be refused at maxclients. Opened
    first, the probe holds its slot for the whole run.

    Error handling: :meth:`open` and :meth:`info` raise as :func:`query_info`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def open(cls, host: str, port: int, timeout: float = INFO_TIMEOUT) -> InfoProbe:
        return cls(socket.create_connection((host, port), timeout=timeout))

    def info(self) -> dict[str, str]:
        return _info_on(self._sock)

    def rss(self, local: bool) -> tuple[int | None, str]:
        """The server's resident memory and its source, as :func:`server_rss`, on this connection."""
        try:
            return rss_from_info(self.info(), local)
        except (OSError, ValueError) as exc:
            return None, f"unavailable ({exc})"

    def close(self) -> None:
        self._sock.close()


def proc_rss(pid: int) -> int | None:
    """VmRSS of a local process in bytes, or None if it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024  # reported in kB
    return None


def server_rss(host: str, port: int, local: bool) -> tuple[int | None, str]:
    """The server's resident memory in bytes and where the figure came from.

    ``local`` says the target is loopback, so INFO's process_id names a
    process in this machine's /proc.
    """
    try:
        info = query_info(host, port)
    except (OSError, ValueError) as exc:
        return None, f"unavailable ({exc})"
    return rss_from_info(info, local)


def rss_from_info(info: dict[str, str], local: bool) -> tuple[int | None, str]:
    """The resident memory an INFO reply leads to: local /proc by its process_id, else used_memory_rss."""
    pid = info.get("process_id", "")
    if local and pid.isdigit():
        rss = proc_rss(int(pid))
        if rss is not None:
            return rss, f"/proc/{pid}/status VmRSS"
    raw = info.get("used_memory_rss", "")
    if raw.isdigit():
        return int(raw), "INFO used_memory_rss"
    return None, "unavailable (no process_id or used_memory_rss in INFO)"


def describe_server(host: str, port: int) -> dict[str, str]:
    """A few identifying INFO fields for the report (empty if INFO fails)."""
    try:
        info = query_info(host, port)
    except (OSError, ValueError):
        return {}
    keys = ("redis_version", "crossdock_version", "process_id", "mode", "cpu", "workers", "multiplexing_api")
    return {key: info[key] for key in keys if key in info}
