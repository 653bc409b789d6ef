"""What a benchmark report says about where it ran: CPU, kernel, memory, versions, commit, load.

Every figure crossdock's benchmark tools write (``bench/targets.py``,
``crossdock compare``, ``make bench``) carries this block, so a number in
docs/benchmarks.md can always be traced to the machine and the commit it
was measured on.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

#: The repository the tools run from (for ``git rev-parse``).
ROOT: Final = Path(__file__).resolve().parent.parent

#: Seconds a version query (``redis-server --version``, ``git rev-parse``) may take.
QUERY_TIMEOUT: Final = 10


def first_line(command: list[str]) -> str:
    """The first line ``command`` prints, "not installed" if it is not on PATH."""
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def version(package: str) -> str:
    """An installed distribution's version, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def commit() -> str:
    """The short commit of the checkout, with ``+dirty`` when the work tree has changes."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT,
        ).stdout.strip()
        if head:
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=QUERY_TIMEOUT,
            ).stdout.strip()
            return head + ("+dirty" if dirty else "")
    return "unknown"


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, kernel, memory, Python, uvloop, redis and crossdock versions, load average."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    redis = first_line(["redis-server", "--version"])
    head = commit()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "memory": memory,
        "python": platform.python_version(),
        "uvloop": version("uvloop"),
        "redis_server": redis.split(" sha=")[0],
        "redis_benchmark": first_line(["redis-benchmark", "--version"]),
        "crossdock": f"{version('crossdock')} (commit {head})",
        "commit": head,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(machine: dict[str, Any]) -> str:
    """The machine block as one markdown line."""
    return (
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}, uvloop {machine['uvloop']}, {machine['redis_server']}, "
        f"crossdock {machine['crossdock']}; load average at start {' '.join(map(str, machine['load_average']))}"
    )
