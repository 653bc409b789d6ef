"""How big a cpu command must be to cost a given number of microseconds: timed in-process, not guessed.

``crossdock compare --scenario crossover`` sweeps the work per request in
microseconds of one core. The commands take a size (PRIMES n, PBKDF2
iterations), so this module times each command's own function (the one the
server runs, imported from ``server.commands.cpu``) on a geometric ladder
of sizes, picks for every asked microsecond figure the size that the ladder
says costs that much (log-log interpolation between the two ladder rungs
around it), and times that size again: the report quotes the measured
microseconds, never the asked ones.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from server.commands.cpu import PBKDF2_MAX_ITERATIONS, PRIMES_MAX_N, count_primes, pbkdf2_hex

#: Each rung of the ladder is this many times the size of the one below: coarse enough that the
#: ladder up to 100 ms is a dozen timings, fine enough that interpolating between rungs of an
#: almost linear cost lands within a few per cent of the asked time.
LADDER_FACTOR: Final = 4

#: Times one timing repeats; the fastest counts (the others met interruptions, as timeit advises).
TIMING_REPEAT: Final = 3

#: Seconds one timing runs at least (calls are looped until then): 20 ms keeps the clock's
#: resolution and a call's own overhead below 1 % of the figure even for sub-microsecond work.
MIN_TIMING_SECONDS: Final = 0.02


@dataclass(frozen=True)
class Command:
    """A cpu command as the sweep sees it: its function, how a size becomes arguments, its bounds."""

    name: str
    call: Callable[[int], object]
    smallest: int
    largest: int
    size_name: str


#: The commands the crossover sweeps: PRIMES holds the GIL (pure Python), PBKDF2 releases it (hashlib).
#: The arguments match what ``loadtest.scenarios`` sends (PBKDF2 password salt N).
COMMANDS: Final[dict[str, Command]] = {
    "primes": Command("primes", count_primes, 2, PRIMES_MAX_N, "n"),
    "pbkdf2": Command("pbkdf2", lambda n: pbkdf2_hex(b"password", b"salt", n), 1, PBKDF2_MAX_ITERATIONS, "iterations"),
}


@dataclass(frozen=True)
class Workload:
    """One step of the sweep: the size sent and what one call of it costs, measured."""

    command: str
    asked_us: float
    work: int
    measured_us: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_call(call: Callable[[int], object], size: int, min_seconds: float = MIN_TIMING_SECONDS) -> float:
    """Microseconds one ``call(size)`` takes: the fastest of :data:`TIMING_REPEAT` looped timings."""
    number = 1
    while True:  # find a loop count that runs for min_seconds (at most ~2x over)
        began = time.perf_counter()
        for _ in range(number):
            call(size)
        elapsed = time.perf_counter() - began
        if elapsed >= min_seconds:
            break
        number *= 2
    best = elapsed / number
    for _ in range(TIMING_REPEAT - 1):
        began = time.perf_counter()
        for _ in range(number):
            call(size)
        best = min(best, (time.perf_counter() - began) / number)
    return best * 1e6


def ladder(command: Command, up_to_us: float, min_seconds: float = MIN_TIMING_SECONDS) -> list[tuple[int, float]]:
    """(size, microseconds) from the smallest size up, x :data:`LADDER_FACTOR`, until past ``up_to_us``."""
    rungs: list[tuple[int, float]] = []
    size = command.smallest
    while True:
        rungs.append((size, time_call(command.call, size, min_seconds)))
        if rungs[-1][1] >= up_to_us or size >= command.largest:
            return rungs
        size = min(command.largest, max(size + 1, size * LADDER_FACTOR))


def size_for(rungs: Sequence[tuple[int, float]], asked_us: float, command: Command) -> int:
    """The size the ladder says costs ``asked_us`` (log-log interpolation), within the command's bounds."""
    if asked_us <= rungs[0][1]:
        return rungs[0][0]
    pairs = list(itertools.pairwise(rungs)) or [(rungs[0], rungs[0])]
    (low_n, low_t), (high_n, high_t) = next(
        ((a, b) for a, b in pairs if a[1] <= asked_us <= b[1]),
        pairs[-1],  # past the top rung: extrapolate from the last two
    )
    if high_n == low_n or high_t <= low_t or low_t <= 0:
        return max(command.smallest, min(command.largest, high_n))
    slope = (math.log(high_n) - math.log(low_n)) / (math.log(high_t) - math.log(low_t))
    size = math.exp(math.log(low_n) + slope * (math.log(asked_us) - math.log(low_t)))
    return max(command.smallest, min(command.largest, round(size)))


def calibrate(name: str, asked_us: Sequence[float], min_seconds: float = MIN_TIMING_SECONDS) -> list[Workload]:
    """One workload per asked microsecond figure, timed; sizes that coincide are kept once.

    Error handling: raises KeyError for a command the sweep does not know.
    """
    command = COMMANDS[name]
    rungs = ladder(command, max(asked_us), min_seconds)
    workloads: list[Workload] = []
    for asked in sorted(asked_us):
        size = size_for(rungs, asked, command)
        if any(existing.work == size for existing in workloads):
            continue  # the smallest size already costs more than this step asks
        workloads.append(Workload(name, asked, size, round(time_call(command.call, size, min_seconds), 2)))
    return workloads
