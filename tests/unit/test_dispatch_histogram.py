"""The dispatcher's inlined histogram arithmetic lands every duration in ``histogram_slot``'s slot, on each core."""

from __future__ import annotations

import itertools

import pytest

from server.commands import CommandContext, default_registry
from server.config import Config
from server.protocol.cores import AVAILABLE
from server.store.commandstats import histogram_slot
from server.store.state import ServerState


@pytest.mark.parametrize("core", list(AVAILABLE))
@pytest.mark.parametrize("elapsed_ns", [0, 1, 63, 64, 65, 127, 128, 1_000, 12_345, 987_654_321, 2**40 + 12345])
def test_inlined_slot_matches_histogram_slot(monkeypatch: pytest.MonkeyPatch, core: str, elapsed_ns: int) -> None:
    dispatch = AVAILABLE[core].dispatch
    registry = default_registry()  # the built-ins installed, whichever test ran before
    state = ServerState(Config(slowlog_threshold_ms=1e9), thread_safe=False)
    clock = itertools.chain([1_000, 1_000 + elapsed_ns], itertools.repeat(1_000 + elapsed_ns))
    monkeypatch.setattr(dispatch, "_perf_counter_ns", lambda: next(clock))  # the clock a Dispatcher takes when made
    dispatcher = dispatch.Dispatcher(registry, state)
    ctx = CommandContext(state, state.register_client("127.0.0.1:1", "127.0.0.1:2", -1), registry)
    assert dispatcher.execute(ctx, [b"PING"]) == b"+PONG\r\n"
    counts = state.command_stats.by_name["ping"].histogram
    assert [slot for slot, count in enumerate(counts) if count] == [histogram_slot(elapsed_ns)]
