"""Run redis-benchmark against a server and read its figures: the yardstick tool, driven from Python.

redis-benchmark is Redis's own load generator (C, hiredis, one event loop).
The benchmarks in ``bench/`` run it against crossdock and redis-server alike,
so the two are measured by the same tool. This module builds the command
(pinned with ``taskset`` when CPUs are given), runs it with a time limit, and
parses its ``-q`` output.

Parsing: with ``-q`` redis-benchmark prints, per test, progress lines ended by
``\\r`` (``PING_MBULK: rps=...``) and one final line ended by ``\\n``
(``PING_MBULK: 178253.00 requests per second, p50=0.143 msec``). The output is
split on both and only the final lines are read.

Error handling: nothing raises for a failed run. redis-benchmark 7 exits at
the first error reply (``Error from server: ...``; ``-e`` no longer changes
that), prints ``Could not connect ...`` or ``Error: ...`` for connection
trouble, and can hang forever when the server refuses connections; each of
those, a non-zero exit, a run past its time limit and a test with no final
figure lands in :attr:`BenchmarkRun.problems`, and ``ok`` is false.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: Seconds one redis-benchmark run may take. A healthy run of the sizes used here takes a few
#: seconds; a minute of slack covers a loaded machine, and the limit stops the hang redis-benchmark
#: falls into when its connections are refused.
RUN_TIMEOUT: Final = 300.0

#: Characters of output kept in a run's record for a reader to see what went wrong.
OUTPUT_TAIL: Final = 2000

#: A test's final line: ``NAME: 123.45 requests per second[, p50=0.143 msec]``.
_FINAL = re.compile(r"^(?P<name>[A-Za-z_][^:]*): (?P<rps>[\d.]+) requests per second(?:, p50=(?P<p50>[\d.]+) msec)?")

#: Lines redis-benchmark prints when a run is not to be trusted (an error reply, a lost connection).
_TROUBLE = re.compile(r"^(Error|Could not connect|Writing to socket|Reading from socket)|\bERR\b|Connection reset")


@dataclass
class BenchmarkRun:
    """One redis-benchmark run: the command, the figures per test and whatever went wrong."""

    command: list[str]
    rps: dict[str, float] = field(default_factory=dict)
    p50_ms: dict[str, float] = field(default_factory=dict)
    returncode: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "command": " ".join(self.command),
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "returncode": self.returncode,
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "output_tail": self.output_tail,
        }


def available() -> bool:
    """Whether redis-benchmark is on PATH."""
    return shutil.which("redis-benchmark") is not None


def label_of(test: str) -> str:
    """The name redis-benchmark prints for a ``-t`` test: ``ping_mbulk`` -> ``PING_MBULK``."""
    return test.upper()


def build_command(
    port: int,
    tests: Sequence[str],
    connections: int,
    requests: int,
    pipeline: int = 1,
    cpus: Sequence[int] = (),
    host: str = "127.0.0.1",
) -> list[str]:
    """The redis-benchmark command line, behind ``taskset -c CPUS`` when CPUs are given."""
    command = [
        "redis-benchmark", "-h", host, "-p", str(port), "-c", str(connections), "-n", str(requests),
        "-P", str(pipeline), "-t", ",".join(tests), "-q",
    ]  # fmt: skip
    if cpus:
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    return command


def parse_output(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """(requests per second by test name, p50 ms by test name) from ``-q`` output, progress lines ignored."""
    rps: dict[str, float] = {}
    p50: dict[str, float] = {}
    for line in re.split(r"[\r\n]+", text):
        match = _FINAL.match(line.strip())
        if match is None:
            continue
        name = match.group("name").strip()
        rps[name] = float(match.group("rps"))
        if match.group("p50") is not None:
            p50[name] = float(match.group("p50"))
    return rps, p50


def find_problems(text: str, returncode: int | None, expected: Sequence[str], rps: dict[str, float]) -> list[str]:
    """Why a run is not to be trusted (empty if it is)."""
    problems = []
    if returncode is None:
        problems.append(f"redis-benchmark did not finish within {RUN_TIMEOUT:g} s and was killed")
    elif returncode != 0:
        problems.append(f"redis-benchmark exited with status {returncode}")
    for line in re.split(r"[\r\n]+", text):
        line = line.strip()
        if line and _TROUBLE.search(line) and not _FINAL.match(line):
            problems.append(line[:300])
    missing = [name for name in expected if name not in rps]
    if missing:
        problems.append(f"no final figure for {', '.join(missing)}")
    return problems


def run_redis_benchmark(
    port: int,
    tests: Sequence[str],
    connections: int,
    requests: int,
    pipeline: int = 1,
    cpus: Sequence[int] = (),
    timeout: float = RUN_TIMEOUT,
) -> BenchmarkRun:
    """Run redis-benchmark once and return its figures and problems. Never raises for a failed run."""
    command = build_command(port, tests, connections, requests, pipeline, cpus)
    run = BenchmarkRun(command=command)
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout)
        text, run.returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
    except OSError as exc:  # redis-benchmark or taskset missing
        run.problems.append(f"cannot run {command[0]}: {exc}")
        return run
    run.rps, run.p50_ms = parse_output(text)
    run.problems = find_problems(text, run.returncode, [label_of(t) for t in tests], run.rps)
    run.warnings = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip().startswith("WARNING")]
    run.output_tail = text[-OUTPUT_TAIL:]
    return run
