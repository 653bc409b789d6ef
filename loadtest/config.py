"""What a load test run is asked to do, its bounds, and the safety checks made before any traffic.

Safety (from the issue): traffic goes to loopback only unless the user names
another host *and* passes ``--allow-remote-host``; every run is bounded in
time (:data:`MAX_DURATION`) and in count (:data:`MAX_CONNECTIONS`); the open
file limit is raised to its hard limit when the connections need it.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import socket
from dataclasses import dataclass
from typing import Final

from loadtest.scenarios import Scenario

#: Longest run, in seconds (ten minutes). A load generator left running by mistake hurts whatever
#: it points at; anything longer is a soak test, which deserves a dedicated tool.
MAX_DURATION: Final = 600.0

#: Default run length in seconds when neither --duration nor --requests is given.
DEFAULT_DURATION: Final = 10.0

#: Most connections one run may open: 100k. Beyond that the 28k ephemeral ports of one loopback
#: address pair run out anyway, and the number is a typo more often than an intent.
MAX_CONNECTIONS: Final = 100_000

#: Deepest --pipeline: 1000 requests in flight per connection is already far past any real client.
MAX_PIPELINE: Final = 1000

#: Most worker processes. More than a few per core only adds context switches.
MAX_PROCESSES: Final = 64

#: Highest --rate (requests per second, all processes together). Python cannot schedule more.
MAX_RATE: Final = 5_000_000

#: Open files kept free beyond one per connection: the queue pipes, the loop's self-pipe,
#: stdio, imported shared libraries and the INFO probe connection.
FD_MARGIN: Final = 64

#: Default progress interval in seconds.
DEFAULT_INTERVAL: Final = 1.0

#: Default probe rate (PINGs per second) of the responsiveness scenario: one every 10 ms, dense
#: enough to see a 7 ms stall, sparse enough to add no load of its own.
DEFAULT_PROBE_RATE: Final = 100.0


def default_processes() -> int:
    """Half the CPUs this process may run on (at least one).

    The server under test usually runs on the same machine; giving the
    generator every CPU would starve the thing it measures.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


@dataclass(frozen=True)
class LoadConfig:
    """One run. Built by ``crossdock loadtest`` or by ``crossdock compare``; picklable."""

    scenario: Scenario
    host: str = "127.0.0.1"
    port: int = 7379
    connections: int = 50
    processes: int = 1
    pipeline: int = 1
    rate: float | None = None
    duration: float = DEFAULT_DURATION
    requests: int | None = None
    interval: float = DEFAULT_INTERVAL
    probe_rate: float = DEFAULT_PROBE_RATE
    cpus: tuple[int, ...] = ()
    allow_remote_host: bool = False
    connect_timeout: float = 10.0

    def validate(self) -> None:
        """Check every bound. Error handling: raises ValueError with a command-line message."""
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"--connections must be 1..{MAX_CONNECTIONS}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"--processes must be 1..{MAX_PROCESSES}")
        if not 1 <= self.pipeline <= MAX_PIPELINE:
            raise ValueError(f"--pipeline must be 1..{MAX_PIPELINE}")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"--rate must be in (0, {MAX_RATE}]")
        if not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:g}] seconds")
        if self.requests is not None and self.requests < 1:
            raise ValueError("--requests must be at least 1")
        if self.interval <= 0:
            raise ValueError("--interval must be positive")
        if self.probe_rate <= 0:
            raise ValueError("--probe-rate must be positive")
        if not 0 < self.port <= 65535:
            raise ValueError("--port must be 1..65535")
        check_host(self.host, self.allow_remote_host)
        per_process = -(-self.connections // min(self.processes, self.connections)) + FD_MARGIN
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and per_process > hard:
            raise ValueError(
                f"{self.connections} connections over {self.processes} processes need {per_process} open "
                f"files per process but the hard limit is {hard}: use more --processes or raise the limit"
            )


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a target that is not loopback unless ``allow_remote`` is set.

    Every address the name resolves to must be loopback: ``localhost`` that
    resolves to a LAN address is refused too.

    Error handling: raises ValueError if the name does not resolve or is not loopback.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve host {host!r}: {exc}") from None
    if allow_remote:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_loopback:
            raise ValueError(
                f"{host!r} resolves to {address}, which is not loopback: pass --allow-remote-host "
                "to load a remote machine on purpose"
            )


def ensure_open_files(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit if ``needed`` files exceed it.

    Returns the soft limit now in force.

    Error handling: raises ValueError if even the hard limit is too low (the
    message says how to raise it), so a run fails before connecting rather
    than with a flood of EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return soft
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ValueError(
            f"need {needed} open files but the hard limit is {hard}: raise it (ulimit -Hn, "
            "limits.conf) or use more --processes"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(hard)


def parse_cpus(text: str) -> tuple[int, ...]:
    """``"1"``, ``"0,2"`` or ``"2-3"`` -> a tuple of CPU numbers (taskset's list syntax).

    Error handling: raises ValueError on a malformed list.
    """
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ValueError(f"bad CPU list {text!r}") from None
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.extend(range(first, last + 1))
    return tuple(dict.fromkeys(cpus))
