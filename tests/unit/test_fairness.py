"""The loop's pass shared among streaming connections (server.connection.fairness), over the real core and fakes.

Each FakeLoop pass is one event-loop pass: what the budget lets through in
it, in what order, and what a small request of another client waits for.
"""

from __future__ import annotations

from server.connection.core import ConnectionCore
from server.limits.constants import FAIR_SHARE_BYTES, INTERACTIVE_READ_BYTES, PASS_BUDGET_BYTES
from tests.unit.fakes import FakeJobs, FakeLoop, FakeTransport, Harness, make_core

REQUEST = b"ECHO abcdefgh\r\n"
REPLY = b"$8\r\nabcdefgh\r\n"
SLICES_PER_PASS = PASS_BUDGET_BYTES // FAIR_SHARE_BYTES


def another(h: Harness, port: int) -> tuple[ConnectionCore, FakeTransport]:
    """A further connection of the same server (the same shared loop budget)."""
    transport = FakeTransport()
    client = h.state.register_client(f"127.0.0.1:{port}", "127.0.0.1:7379", -1)
    return ConnectionCore(transport, FakeJobs(), h.core.shared, client), transport


def streamers(count: int, slices_each: int) -> tuple[FakeLoop, Harness, list[tuple[ConnectionCore, FakeTransport]]]:
    """``count`` connections that each delivered ``slices_each`` slices of pipelined ECHOs in one read."""
    loop = FakeLoop()
    h = make_core(loop=loop)
    connections = [another(h, 50100 + i) for i in range(count)]
    per_read = slices_each * FAIR_SHARE_BYTES // len(REQUEST)
    for core, _transport in connections:
        core.data_received(REQUEST * per_read)
    return loop, h, connections


def served_slices(transport: FakeTransport) -> float:
    return transport.output.count(REPLY) * len(REQUEST) / FAIR_SHARE_BYTES


def test_one_pass_serves_at_most_the_budget_however_many_connections_stream() -> None:
    count = 4 * SLICES_PER_PASS
    loop, _h, connections = streamers(count, slices_each=3)
    # On arrival only the first, which found the queue empty, is served a slice; the rest queue, reading paused.
    before = [served_slices(t) for _c, t in connections]
    assert [i for i, s in enumerate(before) if s > 0] == [0]
    assert all(not t.reading for _c, t in connections)
    for turn in range(3):
        loop.run_pass()
        after = [served_slices(t) for _c, t in connections]
        moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
        # One budget's worth of slices per pass, in queue order, each pass going on where the last one stopped.
        assert moved == list(range(turn * SLICES_PER_PASS, (turn + 1) * SLICES_PER_PASS))
        before = after


def test_every_streaming_connection_gets_its_turn_and_all_of_its_replies_in_order() -> None:
    count = 3 * SLICES_PER_PASS
    loop, _h, connections = streamers(count, slices_each=2)
    passes = 0
    while loop.run_pass():
        passes += 1
        progress = [served_slices(t) for _c, t in connections]
        assert max(progress) - min(progress) <= 2  # round robin: nobody runs ahead of the others by more
    expected = REQUEST * (2 * FAIR_SHARE_BYTES // len(REQUEST))
    for _core, transport in connections:
        assert transport.output == REPLY * expected.count(b"ECHO")
        assert transport.reading  # resumed once its input is served
    assert passes >= 2 * count // SLICES_PER_PASS - 1


def test_a_small_request_is_answered_at_once_while_the_budget_is_spent() -> None:
    loop, h, _connections = streamers(2 * SLICES_PER_PASS, slices_each=4)
    loop.run_pass()  # this pass's budget is spent; streamers are still queued
    probe, transport = another(h, 50999)
    probe.data_received(b"PING\r\n")
    assert transport.output == b"+PONG\r\n"  # not queued behind the streamers
    medium = REQUEST * ((INTERACTIVE_READ_BYTES + FAIR_SHARE_BYTES) // 2 // len(REQUEST))
    probe.data_received(medium)  # more than an interactive read, with the pass spent: it takes its turn
    assert transport.output == b"+PONG\r\n"
    assert not transport.reading
    while loop.run_pass():
        pass
    assert transport.output == b"+PONG\r\n" + REPLY * medium.count(b"ECHO")
    assert transport.reading


def test_with_nobody_streaming_reads_are_served_at_once_and_nothing_is_scheduled() -> None:
    loop = FakeLoop()
    h = make_core(loop=loop)
    for _ in range(3 * SLICES_PER_PASS):
        h.core.data_received(REQUEST * (FAIR_SHARE_BYTES // len(REQUEST)))  # a full slice, many times
    assert h.transport.output.count(REPLY) == 3 * SLICES_PER_PASS * (FAIR_SHARE_BYTES // len(REQUEST))
    assert loop.ready == []
    assert h.core.shared.shares is not None and h.core.shared.shares.waiting == 0


def test_a_connection_closed_while_queued_is_dropped_from_the_queue() -> None:
    loop, _h, connections = streamers(2 * SLICES_PER_PASS, slices_each=3)
    last_core, last_transport = connections[-1]
    last_core.connection_lost()
    while loop.run_pass():
        pass
    assert last_transport.output == b""
    assert connections[0][0].shared.shares is not None and connections[0][0].shared.shares.waiting == 0
