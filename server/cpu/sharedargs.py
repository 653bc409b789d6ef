"""Large cpu-command arguments through shared memory instead of the executor's pipe (issue 12).

A ``bytes`` argument of :data:`MIN_SHARED_BYTES` or more is copied once into
a ``multiprocessing.shared_memory`` block and replaced by a
:class:`~server.cpu.worker.SharedBytes` (the block's name and the length);
the worker reads it back (server.cpu.worker). Pickled through the pipe, a
1 MiB argument costs a pickle copy, the feeder thread and the worker taking
turns on the pipe a buffer at a time, and an unpickle copy: about twice the
work of hashing it (docs/benchmarks.md, issue 12). Blocks are kept for reuse
(up to :data:`KEEP_BYTES`), because making one per request (shm_open, mmap,
fresh pages) costs as much as the copies it saves.

A block belongs to its job until the job leaves the books
(server.cpu.jobs releases it when the executor is done with the job: run,
failed, or its worker dead), so no worker can still read a block that a
later job writes. Blocks are registered with multiprocessing's resource
tracker by the server, so they are removed even if the server is killed.
Thread-safe (the threaded front end submits from many threads).
"""

from __future__ import annotations

import contextlib
import threading
from multiprocessing import shared_memory
from typing import Any

from server.cpu.worker import SharedBytes

#: Smallest argument sent through shared memory: one pipe buffer (64 KiB on Linux). Up to that an argument
#: crosses the pipe in one write; above it the feeder thread and the worker take turns on the pipe, a
#: context switch each 64 KiB on a shared core, and the copies grow with it.
MIN_SHARED_BYTES = 64 * 1024

#: Bytes of free blocks kept for the next large arguments. 64 MiB: the backlog of a 2-worker pool full of
#: 1 MiB arguments (64 waiting per worker) fits, and it is small beside the memory of such a backlog anyway.
#: Past it a returned block is unlinked.
KEEP_BYTES = 64 * 1024 * 1024

#: Block sizes are powers of two from this (so a block fits many argument sizes and the free list stays short).
MIN_BLOCK_BYTES = MIN_SHARED_BYTES


def _block_size(length: int) -> int:
    size = MIN_BLOCK_BYTES
    while size < length:
        size *= 2
    return size


class SharedArgs:
    """The server side: put large ``bytes`` arguments into reusable shared-memory blocks, and take them back."""

    def __init__(self, *, keep_bytes: int = KEEP_BYTES, min_bytes: int = MIN_SHARED_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self.min_bytes = min_bytes
        self._lock = threading.Lock()
        #: Free blocks by size, and every block this object made (to unlink at close).
        self._free: dict[int, list[shared_memory.SharedMemory]] = {}
        self._free_bytes = 0
        self._all: dict[str, shared_memory.SharedMemory] = {}
        self._closed = False
        #: Arguments sent through shared memory (INFO-style counter, for tests and benchmarks).
        self.shared = 0

    def wants(self, args: tuple[Any, ...]) -> bool:
        """Whether any argument is large enough to go through shared memory (cheap: the hot path asks)."""
        min_bytes = self.min_bytes
        return any(arg.__class__ is bytes and len(arg) >= min_bytes for arg in args)

    def share(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[shared_memory.SharedMemory]]:
        """``args`` with each large ``bytes`` argument copied into a block and replaced by its reference,
        and the blocks (to :meth:`give_back` when the job is done with them).

        Error handling: OSError when a block cannot be made (/dev/shm full, no descriptor left); then no
        block stays taken.
        """
        out: list[Any] = []
        blocks: list[shared_memory.SharedMemory] = []
        for arg in args:
            if arg.__class__ is bytes and len(arg) >= self.min_bytes:
                try:
                    block = self._take(len(arg))
                except OSError:  # the caller sends them through the pipe: none of them stays taken
                    self.give_back(blocks)
                    raise
                buf = block.buf
                assert buf is not None  # None only once closed
                buf[: len(arg)] = arg
                blocks.append(block)
                out.append(SharedBytes(block.name, len(arg)))
            else:
                out.append(arg)
        self.shared += len(blocks)
        return tuple(out), blocks

    def _take(self, length: int) -> shared_memory.SharedMemory:
        size = _block_size(length)
        with self._lock:
            free = self._free.get(size)
            if free:
                self._free_bytes -= size
                return free.pop()
        block = shared_memory.SharedMemory(create=True, size=size)
        with self._lock:
            self._all[block.name] = block
        return block

    def give_back(self, blocks: list[shared_memory.SharedMemory]) -> None:
        """The job that held ``blocks`` is done with them: keep them for reuse, or unlink past :data:`KEEP_BYTES`."""
        drop = []
        with self._lock:
            for block in blocks:
                if not self._closed and self._free_bytes + block.size <= self.keep_bytes:
                    self._free.setdefault(block.size, []).append(block)
                    self._free_bytes += block.size
                else:
                    drop.append(self._all.pop(block.name, block))
        for block in drop:
            _remove(block)

    def close(self) -> None:
        """Unlink every block (the pool is shutting down); blocks given back later are unlinked at once."""
        with self._lock:
            self._closed = True
            blocks = list(self._all.values())
            self._all.clear()
            self._free.clear()
            self._free_bytes = 0
        for block in blocks:
            _remove(block)


def _remove(block: shared_memory.SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a view is still open somewhere: the mapping goes with the process
        block.close()
    with contextlib.suppress(FileNotFoundError):
        block.unlink()
