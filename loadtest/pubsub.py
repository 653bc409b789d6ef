"""The pub/sub scenario: S subscribers on one channel, P publishers at a total rate, latency publish -> delivery.

``crossdock loadtest --scenario pubsub --subscribers 1000 --publishers 1 --rate 100 -d 10``

Subscribers are spread over generator processes (each an event loop with
its share of the sockets, so the generator is not the bottleneck of a wide
fan-out); the publishers run in the parent, open loop: PUBLISH at fixed times,
without waiting for replies. Every message carries its sequence number and
the publisher's ``time.monotonic_ns()`` (one clock for every process on a
Linux host), so a subscriber measures publish-to-delivery latency itself.
After the run one last message, ``end``, tells each subscriber the stream is
over; what the server said it delivered (the sum of PUBLISH's replies) minus
what the subscribers received is reported as ``lost``, which must be 0.

It speaks RESP2 (SUBSCRIBE without HELLO), so it runs unchanged against
either crossdock front end and against redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from loadtest.histogram import encode, merge_encoded, new_histogram, summarize
from server.protocol import NOT_ENOUGH_DATA, ReplyParser, encode_command

#: Subscriber connections opened at once by one generator process: enough to connect 10,000 in a few
#: seconds, few enough not to overflow the server's listen backlog (4096) with the others.
CONNECT_CONCURRENCY: Final = 256

#: Seconds the subscribers get, after the last publish, to receive what is still on its way.
DRAIN_SECONDS: Final = 10.0

#: Seconds a generator process may take to connect and subscribe its share before the run gives up.
READY_TIMEOUT: Final = 120.0

#: The payload of the message that ends the stream.
END: Final = b"end"



@dataclass(frozen=True)
class PubSubConfig:
    """One pub/sub run. ``rate`` is messages per second over all publishers."""

    host: str = "127.0.0.1"
    port: int = 7379
    subscribers: int = 100
    publishers: int = 1
    rate: float = 100.0
    duration: float = 5.0
    size: int = 32
    processes: int = 1
    channel: str = "crossdock:loadtest"
    connect_timeout: float = 10.0

    def validate(self) -> None:
        """Error handling: ValueError with a message for the command line."""
        if self.subscribers < 1 or self.publishers < 1 or self.processes < 1:
            raise ValueError("--subscribers, --publishers and --processes must be at least 1")
        if self.rate <= 0 or self.duration <= 0:
            raise ValueError("--rate and --duration must be positive")


def _payload(seq: int, size: int) -> bytes:
    head = b"%d:%d:" % (seq, time.monotonic_ns())
    return head + b"x" * max(0, size - len(head))


#: A message frame up to its payload's "seq:ns:" head (RESP2: *3 $7 message $N channel $N payload).
_FRAME_HEAD: Final = re.compile(rb"\*3\r\n\$7\r\nmessage\r\n\$\d+\r\n[^\r]*\r\n\$\d+\r\n(?:(\d+):(\d+):|end\r\n)")
#: The SUBSCRIBE confirmation.
_CONFIRMATION: Final = re.compile(rb"\*3\r\n\$9\r\nsubscribe\r\n\$\d+\r\n[^\r]*\r\n:\d+\r\n")
#: Bytes kept between reads when no frame head ends in them: the longest head a frame can have.
_KEEP: Final = 256


class _Subscriber(asyncio.Protocol):
    """One subscriber socket: counts messages, records their latency, notices the end.

    It scans for frame heads with one regular expression per read instead of
    parsing every reply in Python: a wide fan-out delivers hundreds of
    thousands of messages a second to the generator, which must not be what
    the benchmark measures.
    """

    def __init__(self, tally: _Tally, subscribed: asyncio.Future[None]) -> None:
        self.tally = tally
        self.subscribed = subscribed
        self.ended = False
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.subscribed.done():
            confirmed = _CONFIRMATION.search(buf)
            if confirmed is None:
                self.buf = buf
                return
            self.subscribed.set_result(None)
            buf = buf[confirmed.end() :]
        tally = self.tally
        now = time.monotonic_ns()
        record = tally.histogram.record_value
        consumed = 0
        for frame in _FRAME_HEAD.finditer(buf):
            consumed = frame.end()
            sent = frame.group(2)
            if sent is None:
                self.ended = True
                tally.ended += 1
                continue
            record(max(1, (now - int(sent)) // 1000))
            tally.received += 1
            tally.last_ns = now
        rest = buf[consumed:]
        self.buf = rest[-_KEEP:] if len(rest) > _KEEP else rest

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.tally.lost_connections += 1
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("closed before the subscription was confirmed"))


class _Tally:
    def __init__(self) -> None:
        self.histogram = new_histogram()
        self.received = 0
        self.ended = 0
        self.lost_connections = 0
        #: When the last message (not the end marker) arrived, monotonic ns.
        self.last_ns = 0


def _subscriber_process(config: PubSubConfig, count: int, out: Any, stop: Any) -> None:
    """A generator process: subscribe ``count`` sockets, report ready, count until ``end`` (or ``stop``), report."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_subscribe_and_count(config, count, out, stop))


async def _subscribe_and_count(config: PubSubConfig, count: int, out: Any, stop: Any) -> None:
    loop = asyncio.get_running_loop()
    tally = _Tally()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    request = encode_command("SUBSCRIBE", config.channel)

    async def one() -> _Subscriber:
        async with gate:
            subscribed: asyncio.Future[None] = loop.create_future()
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Subscriber(tally, subscribed), config.host, config.port),
                config.connect_timeout,
            )
            transport.write(request)
            await asyncio.wait_for(subscribed, config.connect_timeout)
            return protocol

    subscribers = await asyncio.gather(*(one() for _ in range(count)))
    out.put(("ready", count))
    while tally.ended + tally.lost_connections < len(subscribers) and not stop.is_set():
        await asyncio.sleep(0.05)
    out.put(("result", tally.received, encode(tally.histogram), tally.lost_connections, tally.last_ns))


class _Publisher(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = ReplyParser()
        self.replies = 0
        self.deliveries = 0
        self.errors = 0

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (reply := self.parser.next_reply()) is not NOT_ENOUGH_DATA:
            self.replies += 1
            if isinstance(reply, int):
                self.deliveries += reply
            else:
                self.errors += 1


async def _publish(config: PubSubConfig) -> tuple[int, int, int, int]:
    """Publish at the configured rate for the duration; return (published, server deliveries, errors, start ns).

    Errors are error replies plus PUBLISHes never answered within the drain time.
    """
    loop = asyncio.get_running_loop()
    publishers = [await loop.create_connection(_Publisher, config.host, config.port) for _ in range(config.publishers)]
    channel = config.channel.encode()
    interval_ns = int(1e9 / config.rate)
    start = time.monotonic_ns()
    end = start + int(config.duration * 1e9)
    seq = 0
    while (due := start + seq * interval_ns) < end:
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        # Catch up in one loop pass if the loop was late: the schedule, not the loop, sets the rate.
        now = time.monotonic_ns()
        while seq * interval_ns + start <= now and start + seq * interval_ns < end:
            transport, _ = publishers[seq % len(publishers)]
            transport.write(encode_command("PUBLISH", channel, _payload(seq, config.size)))
            seq += 1
    deadline = time.monotonic() + DRAIN_SECONDS
    while sum(p.replies for _, p in publishers) < seq and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    deliveries = sum(p.deliveries for _, p in publishers)  # counted before the end marker, not a message
    errors = sum(p.errors for _, p in publishers) + seq - sum(p.replies for _, p in publishers)
    last_transport, last = publishers[0]
    before = last.replies
    last_transport.write(encode_command("PUBLISH", channel, END))
    while last.replies == before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for transport, _ in publishers:
        transport.close()
    return seq, deliveries, errors, start


def run_pubsub(config: PubSubConfig) -> dict[str, Any]:
    """Run the scenario; return the report (see the module docstring). Never raises for a server's fault."""
    config.validate()
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    stop = context.Event()  # the parent gave up waiting for the end marker: report what arrived
    shares = [config.subscribers // config.processes + (i < config.subscribers % config.processes)
              for i in range(config.processes)]  # fmt: skip
    workers = [
        context.Process(target=_subscriber_process, args=(config, share, results, stop), daemon=True)
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    report: dict[str, Any] = {"scenario": "pubsub", "config": config.__dict__.copy(), "ok": False}
    try:
        ready = 0
        for _ in workers:
            kind, *rest = results.get(timeout=READY_TIMEOUT)
            if kind == "ready":
                ready += rest[0]
        published, deliveries, errors, start_ns = asyncio.run(_publish(config))
        received = 0
        lost_connections = 0
        last_ns = start_ns
        histograms = []
        for index in range(len(workers)):
            try:
                _, count, histogram, lost, last = results.get(timeout=DRAIN_SECONDS if index == 0 else 30)
            except queue.Empty:  # the end marker is late: the server is far behind; take what arrived
                stop.set()
                _, count, histogram, lost, last = results.get(timeout=30)
            received += count
            lost_connections += lost
            last_ns = max(last_ns, last)
            histograms.append(histogram)
    except (queue.Empty, OSError) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    latency = summarize(merge_encoded(histograms))
    # From the first publish to the last delivery: past the publishing time when the server fell behind.
    elapsed = max(config.duration, (last_ns - start_ns) / 1e9)
    report.update(
        subscribers=ready,
        published=published,
        publish_errors=errors,
        server_deliveries=deliveries,
        received=received,
        lost=deliveries - received,
        lost_connections=lost_connections,
        seconds=round(elapsed, 3),
        published_per_second=round(published / config.duration, 1),
        delivered_per_second=round(received / elapsed, 1),
        latency_ms=latency,
        ok=errors == 0 and deliveries == received and lost_connections == 0 and deliveries == published * ready,
    )
    return report
