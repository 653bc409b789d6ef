"""The small in-memory keyspace: string values with optional expiry, as Redis's db 0.

Expiry is lazy (a key past its deadline is deleted when touched) plus an
active sweep the front end calls periodically (:meth:`Keyspace.sweep_expired`),
so keys nobody reads again do not stay in memory forever (Redis does both).

It also keeps a running count of the bytes it holds (:attr:`Keyspace.used_bytes`:
keys, values and per-key bookkeeping, updated as they change, so reading it
is free), which :class:`server.memory.MemoryAccount` holds against
maxmemory, and evicts keys by a maxmemory-policy when asked
(:meth:`Keyspace.evict_to`, choosing with :mod:`server.store.eviction`).

Under the threaded front end many threads call in at once, so every public
method runs under one lock and is a whole command (INCR reads and writes
under the same hold: a thousand clients incrementing count exactly). On the
event loop there is only one caller at a time and the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from server.errors import CommandError
from server.integers import parse_int
from server.store.eviction import Eviction

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: Keys examined per active-expiry sweep. Redis samples 20 keys per loop;
#: a sweep every 100 ms with 200 keys bounds the time one sweep can take
#: (well under a millisecond) while clearing a steady stream of short TTLs.
SWEEP_SAMPLE_SIZE = 200


#: Bytes one key costs besides the lengths of its key and value, measured with tracemalloc on CPython 3.11:
#: two bytes-object headers (33 each) and a dict entry (about 55 at the table's usual load, plus growth slack).
ENTRY_OVERHEAD = 130
#: Bytes a TTL adds: an entry in the expiry table and its int deadline (tracemalloc: 88).
EXPIRE_OVERHEAD = 90


def now_ms() -> int:
    """Unix time in milliseconds: the clock every expiry deadline is on."""
    return time.time_ns() // 1_000_000


class Keyspace:
    """Keys to byte values, with per-key absolute expiry deadlines in Unix milliseconds."""

    def __init__(self, thread_safe: bool = False) -> None:
        self._data: dict[bytes, bytes] = {}
        self._expires: dict[bytes, int] = {}
        self._lock: AbstractContextManager[object] = threading.Lock() if thread_safe else contextlib.nullcontext()
        self.expired_keys = 0
        #: Keys removed by :meth:`evict_to` (INFO ``evicted_keys``) and the bytes they held.
        self.evicted_keys = 0
        self.evicted_bytes = 0
        #: Bytes held: keys, values and per-key overhead (see :data:`ENTRY_OVERHEAD`).
        self.used_bytes = 0
        self._entry_overhead = ENTRY_OVERHEAD
        self._eviction: Eviction | None = None
        #: The eviction policy's access mark, called on each read and write (None: the policy needs none).
        self._touch: Callable[[bytes], None] | None = None

    def set_eviction(self, policy: str, samples: int) -> None:
        """Choose the maxmemory-policy :meth:`evict_to` follows (at start-up, before any key exists)."""
        with self._lock:
            self._eviction = None if policy == "noeviction" else Eviction(policy, samples)
            self._touch = self._eviction.touch if self._eviction is not None else None
            self._entry_overhead = ENTRY_OVERHEAD + (self._eviction.per_key_bytes if self._eviction else 0)

    @property
    def eviction(self) -> Eviction | None:
        return self._eviction

    # -- helpers, called with the lock held -------------------------------------------------
    def _alive(self, key: bytes, now: int) -> bool:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= now:
            self._drop(key)
            self.expired_keys += 1
            return False
        return key in self._data

    def _drop(self, key: bytes) -> int:
        """Remove ``key`` (known to exist) and its TTL; returns the bytes it held."""
        value = self._data.pop(key)
        freed = len(key) + len(value) + self._entry_overhead
        if self._expires.pop(key, None) is not None:
            freed += EXPIRE_OVERHEAD
        self.used_bytes -= freed
        if self._eviction is not None:
            self._eviction.forget(key)
        return freed

    def _store(self, key: bytes, value: bytes) -> None:
        """Write ``key`` (TTL untouched), keeping the byte count and the eviction bookkeeping."""
        old = self._data.get(key)
        self._data[key] = value
        if old is None:
            self.used_bytes += len(key) + len(value) + self._entry_overhead
            if self._eviction is not None and not self._eviction.volatile:
                self._eviction.added(key, self._data)
        else:
            self.used_bytes += len(value) - len(old)
        if self._touch is not None:
            self._touch(key)

    def _set_deadline(self, key: bytes, deadline: int) -> None:
        if self._expires.get(key) is None:
            self.used_bytes += EXPIRE_OVERHEAD
            if self._eviction is not None and self._eviction.volatile:
                self._eviction.added(key, self._expires)
        self._expires[key] = deadline

    def _clear_deadline(self, key: bytes) -> int | None:
        deadline = self._expires.pop(key, None)
        if deadline is not None:
            self.used_bytes -= EXPIRE_OVERHEAD
        return deadline

    # -- commands ---------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        # A key without a deadline needs no lock: one dict read is atomic, and a concurrent SET is seen
        # either before or after it. Only expiring a key (a write) takes the lock.
        if key not in self._expires:
            value = self._data.get(key)
            if self._touch is not None and value is not None:
                self._touch(key)
            return value
        with self._lock:
            if not self._alive(key, now_ms()):
                return None
            if self._touch is not None:
                self._touch(key)
            return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Plain ``SET key value``: write it and drop any deadline (no options, so no existence check).

        The event loop's keyspace runs this without a lock at all (the hot
        path of SET); under threads :class:`LockedKeyspace` wraps it.
        """
        self._store(key, value)
        if self._expires:
            deadline = self._clear_deadline(key)
            if deadline is not None and deadline <= now_ms():  # it had expired: Redis counts that first
                self.expired_keys += 1

    def set(
        self,
        key: bytes,
        value: bytes,
        *,
        expire_at_ms: int | None = None,
        only_if_missing: bool = False,
        only_if_present: bool = False,
        keep_ttl: bool = False,
        get_old: bool = False,
    ) -> tuple[bool, bytes | None]:
        """SET with its options; returns (whether the value was written, the old value if ``get_old``)."""
        with self._lock:
            exists = self._alive(key, now_ms())
            old = self._data.get(key) if get_old and exists else None
            if (only_if_missing and exists) or (only_if_present and not exists):
                return False, old
            self._store(key, value)
            if expire_at_ms is not None:
                self._set_deadline(key, expire_at_ms)
            elif not keep_ttl:
                self._clear_deadline(key)
            return True, old

    def delete(self, keys: Iterable[bytes]) -> int:
        with self._lock:
            now = now_ms()
            removed = 0
            for key in keys:
                if self._alive(key, now):
                    self._drop(key)
                    removed += 1
            return removed

    def exists(self, keys: Iterable[bytes]) -> int:
        with self._lock:
            now = now_ms()
            return sum(1 for key in keys if self._alive(key, now))

    def incr_by(self, key: bytes, delta: int) -> int:
        with self._lock:
            current = self._data.get(key) if self._alive(key, now_ms()) else None
            value = 0 if current is None else parse_int(current)
            result = value + delta
            if not _INT64_MIN <= result <= _INT64_MAX:
                raise CommandError("ERR increment or decrement would overflow")
            self._store(key, str(result).encode())
            return result

    def expire_at(self, key: bytes, deadline_ms: int, conditions: frozenset[str] = frozenset()) -> bool:
        """Set a key's deadline (EXPIRE/PEXPIRE). A deadline in the past deletes the key, as in Redis.

        ``conditions``: any of NX, XX, GT, LT, each applied as Redis applies it
        (no deadline counts as infinite for GT and LT; XX with GT or LT needs both).
        """
        with self._lock:
            now = now_ms()
            if not self._alive(key, now):
                return False
            current = self._expires.get(key)
            if "NX" in conditions and current is not None:
                return False
            if "XX" in conditions and current is None:
                return False
            if "GT" in conditions and (current is None or deadline_ms <= current):
                return False
            if "LT" in conditions and current is not None and deadline_ms >= current:
                return False
            if deadline_ms <= now:
                self._drop(key)
            else:
                self._set_deadline(key, deadline_ms)
            return True

    def ttl_ms(self, key: bytes) -> int:
        """Remaining time to live in ms; -2 when the key does not exist, -1 when it has no expiry."""
        with self._lock:
            now = now_ms()
            if not self._alive(key, now):
                return -2
            deadline = self._expires.get(key)
            return -1 if deadline is None else max(deadline - now, 0)

    def size(self) -> int:
        with self._lock:
            return len(self._data)

    def expires_count(self) -> int:
        with self._lock:
            return len(self._expires)

    def flush(self) -> int:
        """FLUSHDB: drop every key; returns the bytes they held."""
        with self._lock:
            freed = self.used_bytes
            self._data.clear()
            self._expires.clear()
            self.used_bytes = 0
            if self._eviction is not None:
                self._eviction.clear()
            return freed

    def evict_to(self, target: int) -> bool:
        """Evict keys by the maxmemory-policy until :attr:`used_bytes` <= ``target``; False if no key the policy
        may evict is left first (or the policy is ``noeviction``)."""
        with self._lock:
            eviction = self._eviction
            if eviction is None:
                return self.used_bytes <= target
            while self.used_bytes > target:
                key = eviction.choose(self._data, self._expires)
                if key is None:
                    return False
                self.evicted_bytes += self._drop(key)
                self.evicted_keys += 1
            return True

    def sweep_expired(self, sample_size: int = SWEEP_SAMPLE_SIZE) -> int:
        """Delete up to ``sample_size`` expired keys found among the keys with a deadline; returns the count.

        Takes keys from the front of the expiry table and moves the live ones
        to its back, so repeated sweeps visit every key with a TTL in turn
        without scanning all of them at once.
        """
        with self._lock:
            now = now_ms()
            sampled = []
            for index, key in enumerate(self._expires):
                if index >= sample_size:
                    break
                sampled.append(key)
            victims = 0
            for key in sampled:
                deadline = self._expires[key]
                if deadline <= now:
                    self._drop(key)
                    victims += 1
                else:  # to the back, so the next sweep looks at other keys
                    del self._expires[key]
                    self._expires[key] = deadline
            self.expired_keys += victims
            return victims


class LockedKeyspace(Keyspace):
    """The keyspace the threaded front end shares between connection threads: :meth:`put` under the lock too."""

    def __init__(self) -> None:
        super().__init__(thread_safe=True)

    def put(self, key: bytes, value: bytes) -> None:
        with self._lock:
            super().put(key, value)
