"""Scenarios: what the generator sends, pre-encoded once so the hot path only picks bytes.

A scenario is parsed from the ``--scenario`` text:

==========================  ==================================================================
``ping``                    PING
``echo``                    ECHO with a ``--size``-byte payload
``set`` / ``get``           SET key value (``--size`` bytes) / GET key, keys drawn from ``--keyspace``
``setget``                  half SET, half GET (the same as ``mix:set=50,get=50``)
``primes`` / ``factor`` /   a cpu command; ``--work`` is n for PRIMES and FACTOR, the iteration
``pbkdf2`` (``cpu``,        count for PBKDF2 (defaults in :data:`DEFAULT_WORK`); ``cpu`` alone
``cpu:NAME``)               means primes
``mix:ping=90,primes=10``   a weighted mix of any of the above commands
``hold``                    open the connections, PING each once, then keep them idle
``storm``                   connect, PING, disconnect, as fast as possible
``responsiveness[:NAME]``   cpu requests (primes unless NAME) on every connection, plus one
                            probe connection sending PING at ``--probe-rate``
==========================  ==================================================================

Every request stream is a *deck*: :data:`DECK_SIZE` pre-encoded requests,
drawn once from the weights with a seeded RNG and then cycled, so a mix has
exactly the asked proportions over every full deck and picking the next
request costs one index.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from server.protocol import encode_command

#: Requests in one deck. Large enough that a weighted mix is represented to 0.1 % and
#: set/get touch thousands of distinct keys; small enough to encode in milliseconds.
DECK_SIZE: Final = 4096

#: Largest ``--size`` payload, in bytes: 1 MiB. Far below the server's bulk limit and big
#: enough for any "large value" experiment; bigger values measure the network, not the server.
MAX_SIZE: Final = 1 << 20

#: Default per-request work of each cpu command, picked to cost roughly 1-3 ms of one core in
#: CPython (measured on the development machine): long enough to be "heavy" next to a PING
#: (~20 us), short enough that a two-second test still completes hundreds of them.
DEFAULT_WORK: Final[dict[str, int]] = {
    "primes": 20_000,  # sieve up to n: ~1.2 ms
    "factor": 1_000_000_007,  # a prime: ~16k trial divisions, ~1.5 ms
    "pbkdf2": 5_000,  # PBKDF2-HMAC-SHA256 iterations: ~2 ms
}

#: Default cpu work for the responsiveness scenario: a bigger sieve (~7 ms) so that a busy pool
#: is clearly busy and a front end that runs it inline visibly stalls the probe.
RESPONSIVENESS_WORK: Final = 100_000

#: Commands a scenario or a mix may name.
COMMANDS: Final = ("ping", "echo", "set", "get", "primes", "factor", "pbkdf2")

#: Commands that run in the server's process pool (or inline, in ``--cpu inline`` mode).
CPU_COMMANDS: Final = ("primes", "factor", "pbkdf2")

#: Scenario kinds: "load" sends a deck on every connection; the other three are special.
KINDS: Final = ("load", "hold", "storm", "responsiveness")

#: The label under which the responsiveness probe's latencies are reported.
PROBE_LABEL: Final = "probe"


@dataclass(frozen=True)
class Scenario:
    """A parsed ``--scenario``: its kind, the weighted commands and their sizes. Picklable."""

    name: str
    kind: str
    weights: tuple[tuple[str, int], ...]
    size: int = 16
    work: dict[str, int] = field(default_factory=dict)
    keyspace: int = 10_000
    seed: int = 0

    @property
    def labels(self) -> list[str]:
        """Command labels in deck order (index = label id), plus the probe for responsiveness."""
        labels = [name for name, _ in self.weights]
        if self.kind == "responsiveness":
            labels.append(PROBE_LABEL)
        return labels

    def deck(self, salt: int = 0) -> list[tuple[int, bytes]]:
        """:data:`DECK_SIZE` (label id, encoded request) pairs in the weighted proportions, shuffled.

        ``salt`` varies the shuffle between worker processes so they do not send in lockstep.
        """
        rng = random.Random(self.seed * 1_000_003 + salt)
        total = sum(weight for _, weight in self.weights)
        entries: list[tuple[int, bytes]] = []
        for label_id, (name, weight) in enumerate(self.weights):
            share = round(DECK_SIZE * weight / total)
            entries.extend((label_id, self._encode(name, rng)) for _ in range(max(1, share)))
        rng.shuffle(entries)
        return entries

    def _encode(self, name: str, rng: random.Random) -> bytes:
        return encode_command(*_BUILDERS[name](self, rng))


def _payload(size: int) -> bytes:
    return (b"x" * size)[:size]


def _key(scenario: Scenario, rng: random.Random) -> bytes:
    return b"key:%d" % rng.randrange(scenario.keyspace)


_BUILDERS: Final[dict[str, Callable[[Scenario, random.Random], tuple[bytes | str | int, ...]]]] = {
    "ping": lambda s, r: ("PING",),
    "echo": lambda s, r: ("ECHO", _payload(s.size)),
    "set": lambda s, r: ("SET", _key(s, r), _payload(s.size)),
    "get": lambda s, r: ("GET", _key(s, r)),
    "primes": lambda s, r: ("PRIMES", s.work["primes"]),
    "factor": lambda s, r: ("FACTOR", s.work["factor"]),
    "pbkdf2": lambda s, r: ("PBKDF2", "password", "salt", s.work["pbkdf2"]),
}

#: The probe's request (responsiveness) and the request hold/storm send on each connection.
PING: Final = encode_command("PING")


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``ping=90,primes=10`` -> ``(("ping", 90), ("primes", 10))``.

    Error handling: raises ValueError naming the bad part (unknown command, weight not a
    positive integer, empty mix, a command named twice).
    """
    weights: list[tuple[str, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r} in mix (known: {', '.join(COMMANDS)})")
        try:
            weight = int(raw) if sep else 1
        except ValueError:
            raise ValueError(f"weight of {name!r} must be an integer, not {raw!r}") from None
        if weight <= 0:
            raise ValueError(f"weight of {name!r} must be positive")
        if any(existing == name for existing, _ in weights):
            raise ValueError(f"{name!r} appears twice in the mix")
        weights.append((name, weight))
    if not weights:
        raise ValueError("a mix needs at least one command=weight")
    return tuple(weights)


def parse_scenario(
    text: str, size: int = 16, work: int | None = None, keyspace: int = 10_000, seed: int = 0
) -> Scenario:
    """Turn ``--scenario`` (with ``--size``, ``--work``, ``--keyspace``) into a :class:`Scenario`.

    ``work`` overrides the default of every cpu command in the scenario.

    Error handling: raises ValueError with a message fit for the command line.
    """
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"--size must be 0..{MAX_SIZE} bytes")
    if keyspace < 1:
        raise ValueError("--keyspace must be at least 1")
    if work is not None and work < 1:
        raise ValueError("--work must be at least 1")
    name = text.strip().lower()
    head, _, tail = name.partition(":")
    kind = "load"
    if head == "mix":
        weights = parse_mix(tail)
    elif head in ("hold", "storm"):
        kind, weights = head, (("ping", 1),)
    elif head == "responsiveness":
        command = tail or "primes"
        if command not in CPU_COMMANDS:
            raise ValueError(f"responsiveness load must be a cpu command ({', '.join(CPU_COMMANDS)})")
        kind, weights = "responsiveness", ((command, 1),)
    elif head == "cpu":
        command = tail or "primes"
        if command not in CPU_COMMANDS:
            raise ValueError(f"cpu:NAME must name one of {', '.join(CPU_COMMANDS)}")
        weights = ((command, 1),)
    elif head == "setget" and not tail:
        weights = (("set", 50), ("get", 50))
    elif head in COMMANDS and not tail:
        weights = ((head, 1),)
    else:
        raise ValueError(
            f"unknown scenario {text!r}: use one of {', '.join(COMMANDS)}, setget, cpu[:NAME], "
            "mix:CMD=W,..., hold, storm, responsiveness[:NAME]"
        )
    defaults = dict(DEFAULT_WORK)
    if kind == "responsiveness":
        defaults["primes"] = RESPONSIVENESS_WORK
    works = {command: (work if work is not None else defaults[command]) for command in CPU_COMMANDS}
    return Scenario(name=name, kind=kind, weights=weights, size=size, work=works, keyspace=keyspace, seed=seed)
