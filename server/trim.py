"""Return freed heap memory to the operating system: glibc's ``malloc_trim(0)``.

glibc's allocator keeps memory a program frees for its own reuse: after a
FLUSHDB of a large keyspace, mass evictions, or a client with a 32 MiB
output buffer going away, RSS stays where it was (the issue measured 0.9 to
3 GiB kept after FLUSHDB). ``malloc_trim(0)`` releases the free pages of
every arena (the main heap and the threaded front end's per-thread arenas)
with ``madvise(MADV_DONTNEED)``. It walks the free lists, so it costs about
a millisecond per few hundred MiB of heap: callers trim after big frees
only (:class:`server.memory.MemoryAccount.released` decides when).

Where glibc is not the C library (musl, macOS), trimming is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def trim_heap() -> bool:
    """Release the allocator's free memory to the OS now; True if glibc did release some."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
