"""The generator inside one worker process: uvloop, raw ``asyncio.Protocol`` connections, no task per request.

Each worker process owns a share of the connections and runs one uvloop.
Requests are pre-encoded (:mod:`loadtest.scenarios`), replies are parsed by the
sans-IO :class:`~server.protocol.ReplyParser`, and everything happens in
protocol callbacks: ``data_received`` parses every complete reply in the
chunk, tallies its latency, and (closed loop) writes the replacements in one
``transport.write``. No coroutine is created per request.

Load models (drivers):

* :class:`ClosedLoop` - each connection keeps ``--pipeline`` requests in
  flight and sends the next one when a reply arrives. Latency runs from the
  moment the request was written.
* :class:`OpenLoop` - requests follow a timetable: request *k* of this process
  is due at ``t0 + phase + k / rate``. A timer sends everything due, round
  robin over the connections, pipelining if replies are late. Latency runs
  from the *scheduled* time, not the send time, so a stall in the server (or
  in the generator) shows up in the latency of every request it delayed
  instead of being hidden by a paused sender (coordinated omission, as wrk2
  corrects it). A connection with :data:`MAX_OUTSTANDING` requests in flight
  keeps further requests in a local backlog, still stamped with their
  scheduled time.
* :class:`StormDriver` - connect, PING, close, again, ``connections`` slots
  in parallel: a connection rate, not a request rate.
* hold - the connections are opened and each PINGed once during set-up, then
  left idle until the end; the parent process measures the server's memory.

Timing uses ``time.monotonic_ns`` (CLOCK_MONOTONIC, shared by every process
on the machine), so the parent can hand all workers one start instant and the
open-loop timetables of all processes interleave exactly.

Protocol with the parent (over a multiprocessing queue)::

    ("ready", index, counters)                   connections open, waiting for "go"
    ("tick", index, counters, [hist, ...])       every --interval: cumulative counters,
                                                 this interval's encoded histogram per label
    ("done", index, counters, [hist, ...])       after the drain; the last histograms
    ("crash", index, traceback_text)             the worker failed

Error handling: connection failures and losses, error replies and protocol
errors are all counted by kind, never raised; the parent decides the exit
status. An unexpected exception in the worker is reported as "crash".
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Protocol

from loadtest import histogram
from loadtest.config import FD_MARGIN, LoadConfig, ensure_open_files
from loadtest.scenarios import PING, PROBE_LABEL
from server.protocol import NOT_ENOUGH_DATA, ErrorReply, ProtocolError, ReplyParser

#: Connections a worker opens at once. The server's listen backlog is finite; a burst of 10k SYNs
#: overflows it and the kernel then retries dropped SYNs after a whole second, which would make
#: set-up slow and look like a server stall. 256 at a time keeps well inside any backlog.
CONNECT_CONCURRENCY: Final = 256

#: Open loop: most requests in flight on one connection before further due requests wait in the
#: local backlog. Bounds the memory a stalled server can make the generator (and server) buffer.
MAX_OUTSTANDING: Final = 1000

#: Seconds to wait for replies still in flight once sending stops, before counting them as lost.
DRAIN_TIMEOUT: Final = 10.0

#: How often (seconds) the run loop checks the deadline, the request budget and the stop event.
POLL_INTERVAL: Final = 0.02

#: Seconds a worker waits for the parent's "go" before giving up (the parent waits for every
#: worker's connections first, which can take a while for tens of thousands of sockets).
GO_TIMEOUT: Final = 300.0

#: Storm: pause after a failed connect before the slot tries again, so a refused port does not
#: turn into a busy loop of failures.
STORM_FAILURE_BACKOFF: Final = 0.01

#: Stands in for "no request budget".
UNLIMITED: Final = sys.maxsize


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of a run."""

    index: int
    connections: int
    rate: float | None
    phase_ns: int
    requests: int | None
    probe: bool


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible, larger shares first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def failure_kind(exc: BaseException | None) -> str:
    """A short name for why a connection failed: the errno name, ``timeout`` or the exception type."""
    if exc is None:
        return "closed_by_server"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno{exc.errno}")
    return type(exc).__name__


class Driver(Protocol):
    """What a connection calls back after it parsed ``count`` replies at ``now`` (ns)."""

    def on_replies(self, conn: LoadConnection, count: int, now: int) -> None: ...


class LoadConnection(asyncio.Protocol):
    """One generator connection: parses replies, tallies latencies, hands the rest to its driver."""

    __slots__ = ("backlog", "closing", "done", "driver", "inflight", "lost", "parser", "transport", "worker")

    def __init__(self, worker: Worker, driver: Driver) -> None:
        self.worker = worker
        self.driver = driver
        self.parser = ReplyParser()
        #: (sent or scheduled time in ns, label id) of every request awaiting its reply, in order.
        self.inflight: deque[tuple[int, int]] = deque()
        #: Open loop only: (scheduled ns, label id, bytes) due but held back by MAX_OUTSTANDING.
        self.backlog: deque[tuple[int, int, bytes]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.lost = False
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        worker = self.worker
        now = time.monotonic_ns()
        inflight = self.inflight
        tallies = worker.tallies
        count = 0
        try:
            while True:
                reply = parser.next_reply()
                if reply is NOT_ENOUGH_DATA:
                    break
                if not inflight:
                    worker.count_error("unsolicited_reply")
                    continue
                sent, label = inflight.popleft()
                latency = (now - sent) // 1000
                tally = tallies[label]
                tally[latency] = tally.get(latency, 0) + 1
                if reply.__class__ is ErrorReply:
                    worker.count_error(reply.code)
                count += 1
        except ProtocolError:
            worker.count_error("protocol_error")
            worker.received += count
            if self.transport is not None:
                self.transport.abort()
            return
        if count:
            worker.received += count
            worker.last_reply_ns = now
            self.driver.on_replies(self, count, now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.on_lost(self, exc)


class ClosedLoop:
    """Keep ``pipeline`` requests in flight per connection; send one for each reply."""

    def __init__(self, worker: Worker, pipeline: int) -> None:
        self.worker = worker
        self.pipeline = pipeline

    def start(self, conns: list[LoadConnection], now: int) -> None:
        for conn in conns:
            self.send(conn, self.pipeline, now)

    def on_replies(self, conn: LoadConnection, count: int, now: int) -> None:
        if self.worker.sending:
            self.send(conn, count, now)

    def send(self, conn: LoadConnection, count: int, now: int) -> None:
        worker = self.worker
        if count > worker.remaining:
            count = worker.remaining
        if count <= 0 or conn.transport is None or conn.closing:
            return
        worker.remaining -= count
        deck, size, cursor = worker.deck, worker.deck_size, worker.cursor
        inflight = conn.inflight
        if count == 1:
            label, data = deck[cursor % size]
            inflight.append((now, label))
            conn.transport.write(data)
        else:
            chunks = []
            for i in range(cursor, cursor + count):
                label, data = deck[i % size]
                inflight.append((now, label))
                chunks.append(data)
            conn.transport.write(b"".join(chunks))
        worker.cursor = cursor + count
        worker.sent += count


class OpenLoop:
    """Send on a timetable of ``rate`` requests per second; latency from the scheduled time."""

    def __init__(
        self,
        worker: Worker,
        conns: list[LoadConnection],
        rate: float,
        deck: list[tuple[int, bytes]],
        use_budget: bool,
    ) -> None:
        self.worker = worker
        self.conns = conns
        self.interval_ns = 1e9 / rate
        self.deck = deck
        self.use_budget = use_budget
        self.t0 = 0
        self.next_index = 0
        self.cursor = 0
        self.handle: asyncio.TimerHandle | None = None

    def start(self, t0: int) -> None:
        self.t0 = t0
        self.tick()

    def due_at(self, index: int) -> int:
        """The scheduled time (ns) of request ``index`` of this timetable."""
        return self.t0 + int(index * self.interval_ns)

    def tick(self) -> None:
        """Send every request whose time has come, then sleep until the next one is due."""
        worker = self.worker
        self.handle = None
        if not worker.sending:
            return
        now = time.monotonic_ns()
        due = int((now - self.t0) / self.interval_ns) + 1 - self.next_index if now >= self.t0 else 0
        if self.use_budget and due > worker.remaining:
            due = worker.remaining
        if due > 0:
            first = self.next_index
            worker.max_lag_ns = max(worker.max_lag_ns, now - self.due_at(first))
            if self.use_budget:
                worker.remaining -= due
            self._send_range(first, first + due)
            self.next_index = first + due
        if self.use_budget and worker.remaining <= 0:
            return
        delay = max(0.0, (self.due_at(self.next_index) - time.monotonic_ns()) / 1e9)
        self.handle = asyncio.get_running_loop().call_later(delay, self.tick)

    def _send_range(self, first: int, stop: int) -> None:
        worker = self.worker
        conns, deck = self.conns, self.deck
        nconns, size = len(conns), len(deck)
        batches: dict[int, list[bytes]] = {}
        for index in range(first, stop):
            conn = conns[index % nconns]
            if conn.closing or conn.transport is None:
                worker.unsent += 1
                continue
            label, data = deck[self.cursor % size]
            self.cursor += 1
            scheduled = self.due_at(index)
            if len(conn.inflight) < MAX_OUTSTANDING and not conn.backlog:
                conn.inflight.append((scheduled, label))
                batches.setdefault(index % nconns, []).append(data)
            else:
                conn.backlog.append((scheduled, label, data))
        for position, chunks in batches.items():
            transport = conns[position].transport
            assert transport is not None
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            worker.sent += len(chunks)

    def on_replies(self, conn: LoadConnection, count: int, now: int) -> None:
        """Replies freed room: send what the backlog holds, with its original scheduled times."""
        backlog = conn.backlog
        if not backlog or not self.worker.sending or conn.transport is None:
            return
        chunks = []
        while backlog and len(conn.inflight) < MAX_OUTSTANDING:
            scheduled, label, data = backlog.popleft()
            conn.inflight.append((scheduled, label))
            chunks.append(data)
        if chunks:
            conn.transport.write(b"".join(chunks))
            self.worker.sent += len(chunks)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class HoldDriver:
    """Hold: the one PING per connection completes its ``done`` future; nothing else is sent."""

    def on_replies(self, conn: LoadConnection, count: int, now: int) -> None:
        if conn.done is not None and not conn.done.done():
            conn.done.set_result(None)


class StormDriver(HoldDriver):
    """Storm: connect, PING, close, repeated by ``slots`` coroutines (one per concurrent connection)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def slot(self) -> None:
        worker = self.worker
        loop = asyncio.get_running_loop()
        config = worker.config
        while worker.sending and worker.remaining > 0:
            worker.remaining -= 1
            started = time.monotonic_ns()
            conn = LoadConnection(worker, self)
            conn.done = loop.create_future()
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda conn=conn: conn, config.host, config.port),  # type: ignore[misc]
                    config.connect_timeout,
                )
            except (TimeoutError, OSError) as exc:
                worker.count_failure(exc)
                await asyncio.sleep(STORM_FAILURE_BACKOFF)
                continue
            worker.opened += 1
            assert conn.transport is not None
            conn.inflight.append((started, 0))
            conn.transport.write(PING)
            worker.sent += 1
            await conn.done
            conn.closing = True
            conn.transport.close()
            worker.cycles += 1


class Worker:
    """The state of one worker process: counters, tallies, connections and drivers."""

    def __init__(self, config: LoadConfig, plan: WorkerPlan, queue: Any) -> None:
        self.config = config
        self.plan = plan
        self.queue = queue
        scenario = config.scenario
        self.labels = scenario.labels
        self.deck = scenario.deck(salt=plan.index)
        self.deck_size = len(self.deck)
        self.cursor = 0
        self.tallies: list[histogram.Tally] = [{} for _ in self.labels]
        self.histograms = [histogram.new_histogram() for _ in self.labels]
        self.sending = False
        self.remaining = plan.requests if plan.requests is not None else UNLIMITED
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.unsent = 0
        self.opened = 0
        self.cycles = 0
        self.max_lag_ns = 0
        self.errors: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.t0 = 0
        self.last_reply_ns = 0
        self.conns: list[LoadConnection] = []
        self.probe_conns: list[LoadConnection] = []
        self.open_loops: list[OpenLoop] = []

    # -- counting -------------------------------------------------------------------------------

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def count_failure(self, exc: BaseException | None) -> None:
        kind = failure_kind(exc)
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def on_lost(self, conn: LoadConnection, exc: BaseException | None) -> None:
        """A connection closed: expected if we closed it, otherwise a failure; its requests are lost."""
        if not conn.closing:
            conn.closing = True
            conn.lost = True
            self.count_failure(exc)
        if conn.inflight:
            self.lost += len(conn.inflight)
            conn.inflight.clear()
        if conn.backlog:
            self.unsent += len(conn.backlog)
            conn.backlog.clear()
        if conn.done is not None and not conn.done.done():
            conn.done.set_result(None)

    def counters(self) -> dict[str, Any]:
        """Cumulative counters, as sent to the parent."""
        return {
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost,
            "unsent": self.unsent,
            "opened": self.opened,
            "cycles": self.cycles,
            "errors": dict(self.errors),
            "failures": dict(self.failures),
            "max_lag_ns": self.max_lag_ns,
            "t0_ns": self.t0,
            "last_reply_ns": self.last_reply_ns,
            "now_ns": time.monotonic_ns(),
        }

    def interval_histograms(self) -> list[bytes]:
        """Pour the tallies into the histograms, encode them, and start the next interval."""
        encoded = []
        for tally, hist in zip(self.tallies, self.histograms, strict=True):
            if tally:
                histogram.pour(tally, hist)
                encoded.append(histogram.encode(hist))
                hist.reset()
            else:
                encoded.append(b"")
        return encoded

    # -- phases ---------------------------------------------------------------------------------

    async def connect(self, count: int, driver: Driver, ping: bool) -> list[LoadConnection]:
        """Open ``count`` connections, :data:`CONNECT_CONCURRENCY` at a time; PING each if asked."""
        loop = asyncio.get_running_loop()
        config = self.config
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one() -> LoadConnection | None:
            async with gate:
                conn = LoadConnection(self, driver)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda: conn, config.host, config.port), config.connect_timeout
                    )
                except (TimeoutError, OSError) as exc:
                    self.count_failure(exc)
                    return None
                self.opened += 1
                if ping:
                    assert conn.transport is not None
                    conn.done = loop.create_future()
                    conn.inflight.append((time.monotonic_ns(), 0))
                    conn.transport.write(PING)
                    self.sent += 1
                    try:
                        await asyncio.wait_for(asyncio.shield(conn.done), config.connect_timeout)
                    except TimeoutError:
                        self.count_failure(TimeoutError())
                        conn.closing = True
                        assert conn.transport is not None
                        conn.transport.abort()
                        return None
                    if conn.lost:
                        return None
                return conn

        results = await asyncio.gather(*(one() for _ in range(count)))
        return [conn for conn in results if conn is not None]

    async def main(self, go: Any, stop: Any, start_ns: Any) -> None:
        """Connect, report ready, wait for go, run until the deadline or budget, drain, report done."""
        config, plan = self.config, self.plan
        kind = config.scenario.kind
        loop = asyncio.get_running_loop()
        driver: Driver
        if kind == "storm":
            driver = StormDriver(self)
        elif kind == "hold":
            driver = HoldDriver()
        elif plan.rate is not None:
            driver = OpenLoop(self, self.conns, plan.rate, self.deck, use_budget=True)
            self.open_loops.append(driver)
        else:
            driver = ClosedLoop(self, config.pipeline)
        if kind != "storm":
            self.conns.extend(await self.connect(plan.connections, driver, ping=kind == "hold"))
        if plan.probe:
            probe_label = self.labels.index(PROBE_LABEL)
            probe = OpenLoop(self, self.probe_conns, config.probe_rate, [(probe_label, PING)], use_budget=False)
            self.probe_conns.extend(await self.connect(1, probe, ping=False))
            self.open_loops.append(probe)
        self.queue.put(("ready", plan.index, self.counters()))

        went = await loop.run_in_executor(None, go.wait, GO_TIMEOUT)
        if went and not stop.is_set():
            await self._run(stop, start_ns.value, driver)
        await self._drain()
        self.queue.put(("done", plan.index, self.counters(), self.interval_histograms()))
        for conn in (*self.conns, *self.probe_conns):
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)

    async def _run(self, stop: Any, t0: int, driver: Driver) -> None:
        config = self.config
        self.t0 = t0
        wait = (t0 - time.monotonic_ns()) / 1e9
        if wait > 0:
            await asyncio.sleep(wait)
        self.sending = True
        storm_tasks: list[asyncio.Task[None]] = []
        if isinstance(driver, StormDriver):
            storm_tasks = [asyncio.create_task(driver.slot()) for _ in range(self.plan.connections)]
        elif isinstance(driver, ClosedLoop):
            driver.start(self.conns, time.monotonic_ns())
        for open_loop in self.open_loops:
            open_loop.start(t0 + (self.plan.phase_ns if open_loop.use_budget else 0))
        deadline = t0 + int(config.duration * 1e9)
        interval_ns = int(config.interval * 1e9)
        next_tick = t0 + interval_ns
        while True:
            now = time.monotonic_ns()
            if now >= next_tick:
                self.queue.put(("tick", self.plan.index, self.counters(), self.interval_histograms()))
                next_tick += interval_ns
            if now >= deadline or stop.is_set() or self._finished(driver, storm_tasks):
                break
            await asyncio.sleep(min(POLL_INTERVAL, max(0.0, (min(deadline, next_tick) - now) / 1e9)))
        self.sending = False
        for open_loop in self.open_loops:
            open_loop.stop()
        if storm_tasks:
            await asyncio.wait(storm_tasks, timeout=config.connect_timeout + DRAIN_TIMEOUT)

    def _finished(self, driver: Driver, storm_tasks: list[asyncio.Task[None]]) -> bool:
        """Budget spent and every reply in (only with --requests; the probe does not count).

        A hold run is never finished early: holding the connections for the duration is its point.
        """
        if self.remaining > 0:
            return False
        if isinstance(driver, StormDriver):
            return all(task.done() for task in storm_tasks)
        if isinstance(driver, HoldDriver):
            return False
        return not any(conn.inflight or conn.backlog for conn in self.conns)

    async def _drain(self) -> None:
        """Wait for replies in flight; whatever is still missing after DRAIN_TIMEOUT is lost."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        conns = [*self.conns, *self.probe_conns]
        while time.monotonic() < deadline and any(conn.inflight for conn in conns):
            await asyncio.sleep(POLL_INTERVAL)
        for conn in conns:
            self.lost += len(conn.inflight)
            conn.inflight.clear()
            self.unsent += len(conn.backlog)
            conn.backlog.clear()


def worker_main(config: LoadConfig, plan: WorkerPlan, queue: Any, go: Any, stop: Any, start_ns: Any) -> None:
    """Entry point of a worker process (spawned): pin, raise the file limit, run a uvloop.

    SIGINT is ignored here: Ctrl-C reaches the whole process group, and the
    parent turns it into the stop event so every worker drains and reports.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        if config.cpus:
            os.sched_setaffinity(0, config.cpus)
        ensure_open_files(plan.connections + FD_MARGIN)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(Worker(config, plan, queue).main(go, stop, start_ns))
    except BaseException:
        queue.put(("crash", plan.index, traceback.format_exc()))
