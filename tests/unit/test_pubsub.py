"""Pub/sub in-process: the hub's tables and encodings, Redis's glob, and delivery through the connection core.

Cores run over the fakes of tests/unit/fakes.py, several on one server
state, with ``client.outlet`` wired as the asyncio driver wires it.
"""

from __future__ import annotations

import re

import pytest

from server.connection.core import ConnectionCore
from server.limits.constants import PUBSUB_OUTPUT_HARD_LIMIT, PUBSUB_OUTPUT_SOFT_LIMIT, PUBSUB_OUTPUT_SOFT_SECONDS
from server.observability.info import render_info
from server.protocol import encode_reply
from server.store.pubsub import glob_to_regex
from tests.unit.fakes import FakeJobs, FakeTransport, Harness, make_core


def add_core(h: Harness) -> tuple[ConnectionCore, FakeTransport]:
    """Another connection on the same server as ``h``, its push outlet wired as a driver does."""
    transport = FakeTransport()
    client = h.state.register_client("127.0.0.1:50001", "127.0.0.1:7379", -1)
    core = ConnectionCore(transport, FakeJobs(), h.core.shared, client)
    client.outlet = core
    return core, transport


def connected() -> tuple[Harness, ConnectionCore, FakeTransport]:
    """(publisher harness, subscriber core, subscriber transport)."""
    h = make_core()
    h.core.client.outlet = h.core
    subscriber, transport = add_core(h)
    return h, subscriber, transport


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        (b"*", b"anything", True),
        (b"news.*", b"news.art", True),
        (b"news.*", b"new.art", False),
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hbllo", True),  # Redis accepts a reversed range
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"a.b", b"axb", False),  # regex characters are literal
        (b"a+", b"aa", False),
        (b"*\n", b"x\n", True),
    ],
)
def test_glob_is_redis_s(pattern: bytes, name: bytes, matches: bool) -> None:
    assert (re.fullmatch(glob_to_regex(pattern), name, re.DOTALL) is not None) is matches


def test_a_message_reaches_channel_and_pattern_subscribers_in_their_own_protocol() -> None:
    h, subscriber, transport = connected()
    subscriber.data_received(b"SUBSCRIBE news\r\n")
    third, third_transport = add_core(h)
    third.data_received(b"HELLO 3\r\nPSUBSCRIBE n*\r\n")
    transport.writes.clear()
    third_transport.writes.clear()
    h.core.data_received(b"PUBLISH news hi\r\n")
    assert h.transport.output == b":2\r\n"
    assert transport.output == b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    assert third_transport.output == b">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    assert h.state.pubsub.stats.messages_delivered == 2 and h.state.pubsub.stats.messages_published == 1


def test_publishing_to_itself_puts_the_push_before_the_reply_in_one_write() -> None:
    h = make_core()
    h.core.client.outlet = h.core
    h.core.data_received(b"HELLO 3\r\nSUBSCRIBE c\r\n")
    h.transport.writes.clear()
    h.core.data_received(b"PING\r\nPUBLISH c m\r\n")
    assert h.transport.writes == [b"+PONG\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n:1\r\n"]


def test_a_message_waits_behind_replies_still_waiting_on_a_job() -> None:
    h, subscriber, transport = connected()
    subscriber.data_received(b"PRIMES 10\r\nSUBSCRIBE c\r\n")
    h.core.data_received(b"PUBLISH c early\r\n")
    assert transport.output == b""  # the SUBSCRIBE's confirmation is not out yet, so neither is the message
    [job] = subscriber.jobs.started  # type: ignore[attr-defined]
    subscriber.job_done(job, b":4\r\n")
    assert transport.output == (
        b":4\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nearly\r\n"
    )


def test_a_subscriber_that_does_not_read_is_cut_off_at_the_hard_limit_and_the_publisher_goes_on() -> None:
    h, subscriber, transport = connected()
    subscriber.data_received(b"SUBSCRIBE c\r\n")
    transport.peer_reads = False
    message = b"x" * (1024 * 1024)
    command = b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$%d\r\n%b\r\n" % (len(message), message)
    pushed = len(encode_reply([b"message", b"c", message]))
    for _ in range(PUBSUB_OUTPUT_HARD_LIMIT // pushed):  # up to the limit: kept
        h.core.data_received(command)
        assert not transport.aborted
    h.core.data_received(command)
    assert transport.aborted and subscriber.closed
    assert h.state.stats.pubsub_output_buffer_limit_disconnections == 1
    assert not h.transport.closed and h.transport.output.endswith(b":1\r\n")
    subscriber.connection_lost()
    h.state.unregister_client(subscriber.client)  # what the driver does on connection_lost
    h.transport.writes.clear()
    h.core.data_received(command)
    assert h.transport.output == b":0\r\n"  # the hub forgot it


def test_a_subscriber_over_the_soft_limit_for_its_period_is_cut_off() -> None:
    h, subscriber, transport = connected()
    subscriber.data_received(b"SUBSCRIBE c\r\n")
    transport.peer_reads = False
    transport.buffered = PUBSUB_OUTPUT_SOFT_LIMIT  # as if 8 MiB were already waiting
    h.core.data_received(b"PUBLISH c m\r\n")
    assert not transport.aborted
    h.clock.advance(PUBSUB_OUTPUT_SOFT_SECONDS)
    h.core.data_received(b"PUBLISH c m\r\n")
    assert not transport.aborted  # exactly the period: not yet past it
    h.clock.advance(1)
    h.core.data_received(b"PUBLISH c m\r\n")
    assert transport.aborted and h.state.stats.pubsub_output_buffer_limit_disconnections == 1


def test_draining_below_the_soft_limit_restarts_its_period() -> None:
    h, subscriber, transport = connected()
    subscriber.data_received(b"SUBSCRIBE c\r\n")
    transport.buffered = PUBSUB_OUTPUT_SOFT_LIMIT + 1
    h.core.data_received(b"PUBLISH c m\r\n")
    h.clock.advance(PUBSUB_OUTPUT_SOFT_SECONDS)
    transport.buffered = 0  # the client caught up
    h.core.data_received(b"PUBLISH c m\r\n")
    transport.buffered = PUBSUB_OUTPUT_SOFT_LIMIT + 1
    h.clock.advance(1)
    h.core.data_received(b"PUBLISH c m\r\n")
    assert not transport.aborted


def test_client_list_shows_subscriptions_and_reset_leaves_them() -> None:
    h = make_core()
    h.core.client.outlet = h.core
    h.core.data_received(b"SUBSCRIBE a b\r\nPSUBSCRIBE x*\r\n")
    line = h.core.client.describe()
    assert " flags=P " in line and " sub=2 psub=1 " in line
    assert h.state.pubsub.channel_count == 2 and h.state.pubsub.pattern_count == 1
    stats = render_info(h.state, ["stats"])
    assert "pubsub_channels:2\r\n" in stats and "pubsub_patterns:1\r\n" in stats
    h.transport.writes.clear()
    h.core.data_received(b"RESET\r\nGET k\r\n")
    assert h.transport.output == b"+RESET\r\n$-1\r\n"
    assert h.state.pubsub.channel_count == 0 and h.state.pubsub.pattern_count == 0
    assert " flags=N " in h.core.client.describe()


def test_without_a_push_hook_subscribing_is_refused() -> None:
    h = make_core()  # a driver that set no hook
    h.core.data_received(b"SUBSCRIBE a\r\n")
    assert h.transport.output.startswith(b"-ERR pub/sub is not available on this connection")
    assert h.state.pubsub.channel_count == 0
