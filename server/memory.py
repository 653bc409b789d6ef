"""The server's memory bound: what it holds for clients (a running account), and how much it may hold (maxmemory).

``used_memory`` is what crossdock holds on behalf of its clients: the
keyspace's dataset (keys, values and their per-key bookkeeping, counted by
:class:`server.store.keyspace.Keyspace` as it changes, so reading it costs
an attribute load) plus the client output buffers the connection core reports
(:meth:`MemoryAccount.add_client_output` / :meth:`~MemoryAccount.remove_client_output`),
which Redis counts in used_memory too. The interpreter's own fixed cost (about
30 MiB of code and modules) is not in it: INFO shows it as
``used_memory_startup``, and maxmemory is the budget for data, so
``--maxmemory 32mb`` means 32 MiB of data, not 2 MiB after Python.

maxmemory and its policies follow Redis's names and replies (the ``-OOM``
error is Redis's, byte for byte). Where Redis defaults to no limit, crossdock
derives one from the memory the process may use (:func:`default_maxmemory`).
"""

from __future__ import annotations

import os
import re
import resource
import threading
from pathlib import Path
from typing import Protocol

from server.trim import trim_heap

#: Redis's reply to a command that would grow memory past maxmemory (server.c shared.oomerr).
OOM_ERROR = "OOM command not allowed when used memory > 'maxmemory'."

#: Redis's maxmemory-policy names. ``noeviction`` refuses growing writes; the others evict keys (all of them, or
#: only those with a TTL) chosen by sampling: least recently used, least frequently used, at random, soonest to expire.
POLICIES = (
    "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
)  # fmt: skip

#: Redis's maxmemory-samples default: keys examined per eviction. 5 is Redis's trade of accuracy for speed;
#: 10 comes close to true LRU, 3 is faster and less accurate.
DEFAULT_MAXMEMORY_SAMPLES = 5

#: The default maxmemory, as a fraction of the memory this process may use (its cgroup's limit, else the
#: machine's RAM). Half, because used_memory counts data, not everything the data costs: the interpreter
#: (~30 MiB), the cpu workers (~25 MiB each), allocator fragmentation (mem_fragmentation_ratio reaches 1.3-1.5
#: under churn with small values), memory freed but not yet returned, and what other processes on the host need.
#: Half of the memory leaves room for a 2x overshoot of the accounted bytes before the OOM killer is in play.
DEFAULT_MAXMEMORY_FRACTION = 0.5

#: ``--maxmemory`` value meaning "derive it" (the flag's default): see :func:`default_maxmemory`.
MAXMEMORY_AUTO = -1

#: A cgroup v1 limit at or above this is "no limit" (the kernel reports LONG_MAX rounded to a page).
_CGROUP_UNLIMITED = 1 << 60

#: Any length: compiled (setup.py), a module global keeps its declared type, and the tests put one file here.
_CGROUP_FILES: tuple[Path, ...] = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)

#: Redis's memtoull units: k/m/g are powers of 1000, kb/mb/gb powers of 1024, case-insensitive.
_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*")


def parse_memory_size(text: str) -> int:
    """``64mb`` -> 67108864, with Redis's units (``1k`` = 1000, ``1kb`` = 1024, up to ``gb``); plain bytes too.

    Error handling: anything else raises :class:`ValueError`.
    """
    match = _SIZE.fullmatch(str(text).lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"not a memory size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def human_bytes(count: int) -> str:
    """Redis's bytesToHuman: ``512B``, ``1.50K``, ``64.00M``, ``2.00G`` (binary units)."""
    for unit, size in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count}B"


#: Freed bytes (FLUSHDB, evictions, cut clients) that make :meth:`MemoryAccount.released` give the heap back to
#: the OS. Smaller frees are left to the allocator, which reuses them for the next writes; 16 MiB keeps a trim
#: (about 1 ms per few hundred MiB of heap) rare under steady eviction while RSS never holds much more than
#: this of freed memory.
TRIM_AFTER_FREED_BYTES = 16 * 1024 * 1024


def rss_bytes() -> int:
    """The process's resident set size now, in bytes (INFO ``used_memory_rss``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_available() -> int:
    """Bytes this process may use: its cgroup's memory limit (v2 or v1) if it has one, else physical RAM."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_FILES:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < _CGROUP_UNLIMITED:
            return min(int(raw), physical)
    return physical


def default_maxmemory() -> int:
    """The maxmemory used when ``--maxmemory`` is not given: :data:`DEFAULT_MAXMEMORY_FRACTION` of
    :func:`memory_available`."""
    return int(memory_available() * DEFAULT_MAXMEMORY_FRACTION)


def resolve_maxmemory(configured: int, instances: int = 1) -> int:
    """The bound in force: ``configured`` bytes, 0 for none, or for :data:`MAXMEMORY_AUTO` the derived default
    shared between the ``instances`` processes of a ``--reuseport`` group (each has its own keyspace)."""
    return default_maxmemory() // max(instances, 1) if configured == MAXMEMORY_AUTO else configured


class Dataset(Protocol):
    """What the account needs from the keyspace: its running byte count, and a way to evict down to a target."""

    used_bytes: int

    def evict_to(self, target: int) -> bool: ...


class MemoryAccount:
    """The server-wide memory account: keyspace bytes plus client output buffer bytes, against maxmemory.

    For the connection core (issue 15, item 7): call :meth:`add_client_output`
    with the bytes a connection queues for sending and
    :meth:`remove_client_output` with the bytes it sent or dropped (all of
    its remaining queue when it closes); :meth:`used_memory` then includes
    them, as Redis's used_memory includes client buffers, and
    :meth:`over_limit` tells whether the server is past maxmemory. Call
    :meth:`released` with a big buffer's size when it goes away (a client cut
    for its output, or closing with a large queue), so the heap is trimmed.
    The client-output updates take a lock (uncontended on the event loop), so
    connection threads reporting at once never lose an update and the figure
    returns to 0 when every client is gone.

    ``maxmemory`` 0 means no bound (``over_limit`` is then always False).
    """

    def __init__(self, dataset: Dataset, maxmemory: int, policy: str = "noeviction") -> None:
        if policy not in POLICIES:
            raise ValueError(f"maxmemory-policy must be one of {', '.join(POLICIES)}")
        self.dataset = dataset
        self.maxmemory = maxmemory
        self.policy = policy
        #: Bytes queued in client output buffers now, as reported by the connection core.
        self.client_output_bytes = 0
        self._output_lock = threading.Lock()
        #: The comparison bound: maxmemory, or a number no account reaches when there is none.
        self.bound = maxmemory if maxmemory > 0 else 1 << 62
        #: Bytes freed since the heap was last trimmed (see :meth:`released`).
        self._freed_untrimmed = 0
        #: Times the heap was trimmed (INFO ``heap_trims``).
        self.trims = 0

    def used_memory(self) -> int:
        """Bytes held for clients now: the dataset plus client output buffers (INFO ``used_memory``)."""
        return self.dataset.used_bytes + self.client_output_bytes

    def add_client_output(self, nbytes: int) -> None:
        """A connection queued ``nbytes`` of replies it has not sent yet."""
        with self._output_lock:
            self.client_output_bytes += nbytes

    def remove_client_output(self, nbytes: int) -> None:
        """A connection sent (or dropped, closing) ``nbytes`` it had reported with :meth:`add_client_output`."""
        with self._output_lock:
            self.client_output_bytes = max(self.client_output_bytes - nbytes, 0)

    def released(self, nbytes: int) -> None:
        """``nbytes`` were freed (FLUSHDB, evictions, a big client output buffer gone): once frees add up to
        :data:`TRIM_AFTER_FREED_BYTES`, give the free heap back to the OS (:func:`server.trim.trim_heap`).

        For the connection core: call it with a connection's buffer size when a
        connection holding a big one is cut or closes.
        """
        if nbytes <= 0:  # e.g. a DEL that other threads' writes outweighed meanwhile
            return
        self._freed_untrimmed += nbytes
        if self._freed_untrimmed >= TRIM_AFTER_FREED_BYTES:
            self._freed_untrimmed = 0
            self.trims += 1
            trim_heap()

    def over_limit(self) -> bool:
        """Whether used memory is past maxmemory (one addition and one comparison: it runs per request)."""
        return self.dataset.used_bytes + self.client_output_bytes > self.bound

    def make_room(self) -> bool:
        """Evict keys by the policy until used memory is within maxmemory; False if it cannot (noeviction, or no
        key the policy may evict is left). Called when :meth:`over_limit` is True."""
        if self.policy == "noeviction":
            return False
        before = self.dataset.used_bytes
        fits = self.dataset.evict_to(self.bound - self.client_output_bytes)
        self.released(max(before - self.dataset.used_bytes, 0))
        return fits
