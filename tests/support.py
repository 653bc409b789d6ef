"""Test support: real crossdock servers in subprocesses, and a raw RESP socket for exact-bytes checks."""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from server.protocol import NOT_ENOUGH_DATA, ReplyParser, encode_command

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a server subprocess may take to log "started" (pool pre-warm included). Generous:
#: CI machines are shared and slow at times; a healthy start takes well under a second.
STARTUP_TIMEOUT = 30.0

#: Seconds any single socket read in a test may block before the test fails instead of hanging.
SOCKET_TIMEOUT = 20.0

#: The four modes of the README's Modes table: (front end, where cpu commands run).
MODES: list[tuple[str, str]] = [
    ("async", "pool"),
    ("async", "inline"),
    ("threaded", "inline"),
    ("threaded", "pool"),
]


_NOFILE = resource.RLIMIT_NOFILE


class ServerProcess:
    """``python -m server serve`` on 127.0.0.1 and a free port, with its JSON log lines collected."""

    def __init__(
        self,
        mode: str,
        cpu: str,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        nofile: tuple[int, int] | None = None,
        program: Sequence[str] = (sys.executable, "-m", "server"),
        cwd: Path = ROOT,
    ) -> None:
        """``nofile``: (soft, hard) RLIMIT_NOFILE for the server process, to test descriptor limits.

        ``program`` and ``cwd``: how and where to start it (e.g. the ``crossdock`` console script from a user's folder).
        """
        self.mode, self.cpu = mode, cpu
        command = [
            *program, "serve",
            "--host", "127.0.0.1", "--port", "0",
            "--mode", mode, "--cpu", cpu, "--workers", "2",
            "--log-format", "json", "--log-level", "debug",
            *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=None if nofile is None else functools.partial(resource.setrlimit, _NOFILE, nofile),
        )
        self.lines: list[dict[str, object]] = []
        self.raw_lines: list[str] = []
        self._started = threading.Event()
        self.port = 0
        self.host = "127.0.0.1"
        threading.Thread(target=self._read_logs, daemon=True).start()
        if not self._started.wait(STARTUP_TIMEOUT):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {self.raw_lines[-20:]}")
        if self.port == 0:
            raise RuntimeError(f"server exited during start-up: {self.raw_lines[-20:]}")

    def _read_logs(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.raw_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.lines.append(event)
            if event.get("event") == "started":
                self.port = int(event["port"])  # type: ignore[call-overload]
                self._started.set()
        self._started.set()

    def events(self, name: str) -> list[dict[str, object]]:
        return [line for line in self.lines if line.get("event") == name]

    def connect(self) -> RespSocket:
        return RespSocket(self.host, self.port)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class RespSocket:
    """A blocking socket that sends raw bytes or commands and reads decoded replies (via the sans-IO core)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
        self.parser = ReplyParser()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *args: object) -> None:
        self.sock.sendall(encode_command(*args))

    def read_reply(self) -> object:
        while True:
            reply = self.parser.next_reply()
            if reply is not NOT_ENOUGH_DATA:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.parser.feed(data)

    def call(self, *args: object) -> object:
        self.send(*args)
        return self.read_reply()

    def read_until_closed(self, timeout: float = SOCKET_TIMEOUT) -> bytes:
        """Everything the server sends until it closes the connection."""
        self.sock.settimeout(timeout)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def is_closed_by_server(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RespSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def info_fields(conn: RespSocket, *sections: str) -> dict[str, str]:
    """INFO's ``field:value`` lines of ``sections`` (default: the default sections) as one dict of strings."""
    text = conn.call("INFO", *sections)
    assert isinstance(text, bytes), text
    return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line and not line.startswith("#"))
