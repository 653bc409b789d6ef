"""Servers that `crossdock compare` and the tests start themselves: crossdock in each mode, redis-server.

Each is started on 127.0.0.1 with a port chosen by the kernel, optionally
pinned to a set of CPUs (``os.sched_setaffinity`` in the child before exec,
which the crossdock pool workers inherit), and stopped with SIGTERM (then
SIGKILL after :data:`STOP_TIMEOUT`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final

#: Seconds a server may take to start listening (crossdock pre-warms its pool: ~1 s is normal).
START_TIMEOUT: Final = 30.0

#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT: Final = 15.0

#: The four crossdock modes of the README's Modes table as (name, --mode, --cpu), in the order reports list them.
MODES: Final = (
    ("async+pool", "async", "pool"),
    ("async+inline", "async", "inline"),
    ("threaded+inline", "threaded", "inline"),
    ("threaded+pool", "threaded", "pool"),
)


def pin_to(cpus: Sequence[int]) -> None:
    """Restrict the calling process (and what it later starts) to ``cpus``; nothing if empty."""
    if cpus:
        os.sched_setaffinity(0, set(cpus))


class RunningServer:
    """A server subprocess on 127.0.0.1:``port``. Use as a context manager or call :meth:`stop`."""

    def __init__(self, name: str, command: list[str], cpus: Sequence[int], port: int | None) -> None:
        self.name = name
        self.command = command
        self.cpus = tuple(cpus)
        self.host = "127.0.0.1"
        self.port = port or 0
        self.log: list[str] = []
        self._started = threading.Event()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: pin_to(self.cpus)) if self.cpus else None,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if port is not None:
            self._wait_for_port()
        elif not self._started.wait(START_TIMEOUT) or not self.port:
            self.stop()
            raise RuntimeError(f"{name} did not start: {self.log[-10:]}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if len(self.log) < 1000:
                self.log.append(line)
            if not self._started.is_set() and line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "started":
                    self.port = int(event["port"])
                    self._started.set()
        self._started.set()

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log[-10:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on port {self.port}")

    def event(self, name: str) -> dict[str, object] | None:
        """The first JSON log line whose ``event`` is ``name`` (e.g. crossdock's ``pool_ready``), or None."""
        for line in list(self.log):
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == name:
                    return event
        return None

    def stop(self) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return int(self.proc.returncode)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_crossdock(
    mode: str, cpu: str, workers: int, cpus: Sequence[int] = (), extra: Sequence[str] = ()
) -> RunningServer:
    """``python -m server serve`` in one mode, on a kernel-chosen port; ``extra`` flags are appended."""
    command = [
        sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0",
        "--mode", mode, "--cpu", cpu, "--workers", str(workers),
        "--log-format", "json", "--log-level", "info", *extra,
    ]  # fmt: skip
    return RunningServer(f"{mode}+{cpu}", command, cpus, None)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; a race is possible but unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_available() -> bool:
    """Whether redis-server is on PATH."""
    return shutil.which("redis-server") is not None


def redis_command(port: int) -> list[str]:
    """The redis-server command line used everywhere: 127.0.0.1:``port``, no persistence, quiet.

    Error handling: raises RuntimeError if redis-server is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    return [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--maxclients", "100000", "--loglevel", "warning",
    ]  # fmt: skip


def start_redis(cpus: Sequence[int] = ()) -> RunningServer:
    """redis-server on 127.0.0.1, no persistence, no protected mode surprises."""
    port = free_port()
    return RunningServer("redis", redis_command(port), cpus, port)
