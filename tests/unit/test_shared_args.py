"""Large cpu arguments through shared memory (server.cpu.sharedargs, issue 12): what goes, what comes back,
how blocks are reused, bounded and removed. The worker's side is the real one (server.cpu.worker)."""

from __future__ import annotations

import os
from multiprocessing import shared_memory

import pytest

from server.cpu.sharedargs import MIN_SHARED_BYTES, SharedArgs
from server.cpu.worker import SharedBytes, _read_shared


def exists(name: str) -> bool:
    try:
        block = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return False
    block.close()  # its registration with the resource tracker is the creator's, already there
    return True


@pytest.fixture
def shared() -> SharedArgs:
    args = SharedArgs()
    yield args
    args.close()


def test_small_and_non_bytes_arguments_are_left_to_the_pipe(shared: SharedArgs) -> None:
    args = (b"x" * (MIN_SHARED_BYTES - 1), 42, "text", bytearray(MIN_SHARED_BYTES))
    assert not shared.wants(args)
    assert shared.share(args) == (args, [])
    assert shared.shared == 0


def test_a_large_argument_is_replaced_by_a_reference_and_read_back_whole(shared: SharedArgs) -> None:
    blob = os.urandom(MIN_SHARED_BYTES * 3 + 7)
    args = (blob, 5, b"small")
    assert shared.wants(args)
    sent, blocks = shared.share(args)
    assert isinstance(sent[0], SharedBytes) and sent[0].length == len(blob)
    assert sent[1:] == (5, b"small")
    assert _read_shared(sent) == args
    assert shared.shared == 1
    shared.give_back(blocks)


def test_a_given_back_block_is_reused_and_an_unkept_one_is_removed() -> None:
    kept = SharedArgs()
    unkept = SharedArgs(keep_bytes=0)
    try:
        first, blocks = kept.share((os.urandom(MIN_SHARED_BYTES),))
        kept.give_back(blocks)
        second, blocks = kept.share((os.urandom(MIN_SHARED_BYTES),))
        assert second[0].name == first[0].name  # the same block again
        kept.give_back(blocks)
        sent, blocks = unkept.share((os.urandom(MIN_SHARED_BYTES),))
        unkept.give_back(blocks)
        assert not exists(sent[0].name)
    finally:
        kept.close()
        unkept.close()


def test_close_removes_every_block_held_or_free() -> None:
    shared = SharedArgs()
    held, _ = shared.share((os.urandom(MIN_SHARED_BYTES),))
    free, blocks = shared.share((os.urandom(MIN_SHARED_BYTES),))
    shared.give_back(blocks)
    assert exists(held[0].name) and exists(free[0].name)
    shared.close()
    assert not exists(held[0].name) and not exists(free[0].name)
