"""Which key to evict under a maxmemory-policy: Redis's approximations by sampling, with Redis's LFU counter.

Redis does not keep keys in LRU order (it would cost a list update per
read); it samples ``maxmemory-samples`` keys at random and evicts the best
candidate among them. So does this module: :class:`Eviction` keeps a list
of candidate keys (every key for ``allkeys-*``, the keys given a TTL for
``volatile-*``) to draw from in O(1), and per-key access marks when the
policy needs them (a logical clock for LRU, Redis's 8-bit logarithmic
counter with per-minute decay for LFU). The candidate list is cleaned
lazily: a drawn key that is gone is swapped out then, and the list is
rebuilt when dead entries make up more than half of it.

Redis also keeps a pool of 16 good candidates across evictions, which makes
its sampling closer to true LRU; this module does not (each eviction draws a
fresh sample), which docs/decisions.md records.

The :class:`~server.store.keyspace.Keyspace` calls in under its own lock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

#: Redis's LFU_INIT_VAL: a new key's counter, so it is not the first evicted before it could be read twice.
LFU_INIT_VAL = 5
#: Redis's lfu-log-factor default: the counter reaches 255 after about a million hits.
LFU_LOG_FACTOR = 10
#: Redis's lfu-decay-time default, in minutes: the counter drops by one per idle minute.
LFU_DECAY_MINUTES = 1
_LFU_MAX = 255

#: The candidate list or access table is rebuilt when it holds more than twice the live keys plus this slack
#: (dead entries from deleted keys), so it never grows with churn; the slack keeps tiny keyspaces from
#: rebuilding on every change.
REBUILD_SLACK = 64

#: Bytes per key the eviction bookkeeping adds (measured with tracemalloc on CPython 3.11): a slot in the
#: candidate list (8, plus over-allocation) and, for LRU/LFU, an entry in the access table (dict entry ~55 +
#: an int ~32).
CANDIDATE_BYTES = 10
ACCESS_BYTES = 88


class Eviction:
    """Victim choice for one maxmemory-policy other than ``noeviction``."""

    def __init__(self, policy: str, samples: int) -> None:
        scope, _, self.kind = policy.partition("-")
        if scope not in ("allkeys", "volatile") or self.kind not in ("lru", "lfu", "random", "ttl"):
            raise ValueError(f"not an eviction policy: {policy!r}")
        if samples < 1:
            raise ValueError("maxmemory-samples must be at least 1")
        self.volatile = scope == "volatile"
        self.samples = samples
        self.candidates: list[bytes] = []
        self.access: dict[bytes, int] = {}
        self._tick = 0
        #: Called by the keyspace on each read and write of a key (None when the policy needs no access marks).
        self.touch: Callable[[bytes], None] | None = {"lru": self._lru_touch, "lfu": self._lfu_touch}.get(self.kind)
        #: Bytes of bookkeeping per key (candidate slot for allkeys; access entry for LRU/LFU).
        self.per_key_bytes = (0 if self.volatile else CANDIDATE_BYTES) + (ACCESS_BYTES if self.touch else 0)

    # -- bookkeeping -------------------------------------------------------------------------------
    def added(self, key: bytes, table: Mapping[bytes, object]) -> None:
        """``key`` joined the table this policy draws from (a new key, or for volatile a new TTL)."""
        self.candidates.append(key)
        if len(self.candidates) > 2 * len(table) + REBUILD_SLACK:
            self.candidates = list(table)
        if len(self.access) > 2 * len(table) + REBUILD_SLACK:
            self.access = {k: v for k, v in self.access.items() if k in table}

    def forget(self, key: bytes) -> None:
        """``key`` left the keyspace (its candidate entry is dropped lazily)."""
        self.access.pop(key, None)

    def clear(self) -> None:
        self.candidates.clear()
        self.access.clear()

    def _lru_touch(self, key: bytes) -> None:
        self._tick += 1
        self.access[key] = self._tick

    def _lfu_touch(self, key: bytes) -> None:
        now = int(time.monotonic() // 60)
        packed = self.access.get(key)
        counter = LFU_INIT_VAL if packed is None else _lfu_decayed(packed, now)
        if packed is not None and counter < _LFU_MAX:  # Redis's LFULogIncr
            base = max(counter - LFU_INIT_VAL, 0)
            if random.random() < 1.0 / (base * LFU_LOG_FACTOR + 1):
                counter += 1
        self.access[key] = (now << 8) | counter

    # -- the choice --------------------------------------------------------------------------------
    def choose(self, data: Mapping[bytes, bytes], expires: Mapping[bytes, int]) -> bytes | None:
        """Draw up to ``samples`` live keys and return the one the policy evicts first; None if none is left."""
        table = expires if self.volatile else data
        pool = self.candidates
        picked: list[bytes] = []
        while pool and len(picked) < self.samples:
            index = random.randrange(len(pool))
            key = pool[index]
            if key in table:
                picked.append(key)
            else:  # gone since it was added: swap it out
                pool[index] = pool[-1]
                pool.pop()
        if not picked:
            return None
        if self.kind == "random":
            return picked[0]
        if self.kind == "ttl":
            return min(picked, key=expires.__getitem__)
        access = self.access
        if self.kind == "lru":
            return min(picked, key=lambda k: access.get(k, 0))
        now = int(time.monotonic() // 60)
        return min(picked, key=lambda k: _lfu_decayed(access.get(k, LFU_INIT_VAL | (now << 8)), now))

    def lfu_counter(self, key: bytes) -> int:
        """The key's LFU counter now (OBJECT FREQ's figure; for tests)."""
        packed = self.access.get(key)
        return 0 if packed is None else _lfu_decayed(packed, int(time.monotonic() // 60))


def _lfu_decayed(packed: int, now_minutes: int) -> int:
    """Redis's LFUDecrAndReturn: the counter minus one per ``LFU_DECAY_MINUTES`` since it was last touched."""
    counter, last = packed & _LFU_MAX, packed >> 8
    periods = (now_minutes - last) // LFU_DECAY_MINUTES
    return max(counter - periods, 0)
