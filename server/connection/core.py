"""The sans-IO connection core: one object per client connection, the same for both front ends.

It owns the connection's state (the request parser, the client record with
its protocol version, auth and deadlines, the reply queue with its pending
jobs, the output accounting) and turns events into actions:

==========================================  =============================================
event (called by the driver)                action (called on the driver's objects)
==========================================  =============================================
``data_received(data)``                     ``transport.write(bytes)``, ``jobs.start(job)``
``job_done(job, reply)``                    ``transport.write(bytes)``, ``transport.close()``
``pause_writing()`` / ``resume_writing()``  ``transport.pause_reading()`` / ``resume_reading()``
``eof_received()`` / ``stop_reading()``     ``transport.close()`` once replies are out
``check_deadlines(now)``                    ``transport.close()`` / ``transport.abort()``
``connection_lost()``                       ``jobs.cancel(job)`` for each unfinished job
``push(data)`` (pub/sub, client.outlet)      ``transport.write(bytes)``, ``transport.abort()``
==========================================  =============================================

No sockets, asyncio or threads in here: the asyncio driver passes its uvloop
transport as ``transport`` (so the hot path has no adapter in between), the
threaded driver a small blocking-socket adapter; tests pass fakes
(tests/unit/fakes.py). Every per-connection limit is enforced here, once:
the query buffer cap, the output buffer cap, the reply queue bound, and the
idle, request and write deadlines (close reasons in server.limits.resources).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from server.commands import CommandContext, Dispatcher, Registry, RunCpu, Sleep
from server.config import Config
from server.connection.fairness import LoopShares
from server.limits.constants import (
    FAIR_SHARE_BYTES,
    MAX_PENDING_REPLIES_PER_CLIENT,
    PUBSUB_OUTPUT_HARD_LIMIT,
    PUBSUB_OUTPUT_SOFT_LIMIT,
    PUBSUB_OUTPUT_SOFT_SECONDS,
    WRITE_BUFFER_HIGH_WATER,
)
from server.limits.resources import (
    OUTPUT_BUFFER,
    PUBSUB_OUTPUT_BUFFER,
    QUERY_BUFFER,
    WRITE_TIMEOUT,
    deadline_passed,
    note_limit_close,
)
from server.protocol import RequestParser
from server.store.state import ClientState, ServerState

log = structlog.get_logger("crossdock.connection")

#: Limits whose close drops what is unsent (RST): the client is not taking its replies anyway.
_ABORTING_LIMITS = frozenset({OUTPUT_BUFFER, PUBSUB_OUTPUT_BUFFER, WRITE_TIMEOUT})


class Transport(Protocol):
    """What the core needs of the byte stream: the subset of ``asyncio.Transport`` it uses."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class JobRunner(Protocol):
    """Carries out a :class:`Job` (a SLEEP's wait, a cpu command) and calls ``core.job_done`` with its reply.

    It may call back at once (``--cpu inline``, the threaded driver's blocking
    wait) or later from the driver's own thread of control (the event loop);
    never from another thread.
    """

    def start(self, job: Job, core: ConnectionCore) -> None: ...

    def cancel(self, job: Job) -> None: ...


class Job:
    """A reply slot waiting on an action: its place in the reply queue, then its reply."""

    __slots__ = ("action", "handle", "reply", "started_ns")

    def __init__(self, action: RunCpu | Sleep) -> None:
        self.action = action
        #: The runner's handle to cancel it by (a timer, a cpu job); the runner's own business.
        self.handle: Any = None
        self.reply: bytes | None = None
        self.started_ns = time.perf_counter_ns()


class CoreShared:
    """What every connection of one server uses and none owns: held once per server, referenced once per core.

    Keeping these here rather than in each :class:`ConnectionCore` is worth
    about 60 bytes per connection (8 references in one), which is what the
    idle-connection memory row measures.
    """

    __slots__ = ("clock", "config", "dispatcher", "registry", "shares", "small_output_limit", "state", "stats")

    def __init__(
        self,
        state: ServerState,
        dispatcher: Dispatcher,
        registry: Registry,
        clock: Callable[[], float] = time.monotonic,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.state = state
        self.config: Config = state.config
        self.stats = state.stats
        self.dispatcher = dispatcher
        self.registry = registry
        self.clock = clock
        #: Each loop pass shared among the connections with big reads; made from ``defer`` (``loop.call_soon``,
        #: which runs a callable on the next pass). None where the driver has no loop to share (a thread per
        #: connection): then a read is served whole.
        self.shares = LoopShares(defer) if defer is not None else None
        #: An output cap at or below the transport's high-water mark can be passed without pause_writing.
        self.small_output_limit = self.config.output_buffer_limit <= WRITE_BUFFER_HIGH_WATER


class ConnectionCore:
    """One client connection's policy: parse, dispatch, keep replies in order, enforce its limits.

    Life cycle: created when the driver has a connection, fed events until
    :meth:`connection_lost`. Reading stops (QUIT, a protocol error, EOF,
    shutdown, a read-side limit) but every reply to a request already read is
    still sent; the transport is closed once the reply queue is empty.
    Error handling: a bug while serving (an exception out of dispatch) is
    logged at warning with the client id and the connection aborted; the
    server goes on.
    """

    __slots__ = (
        "_accounted",
        "_dispatching",
        "_input",
        "_input_pos",
        "_out",
        "_out_bytes",
        "_paused_for_fairness",
        "_paused_for_queue",
        "_paused_for_writes",
        "_pending",
        "_read_budget",
        "client",
        "closed",
        "ctx",
        "jobs",
        "parser",
        "reading_done",
        "shared",
        "transport",
    )

    def __init__(self, transport: Transport, jobs: JobRunner, shared: CoreShared, client: ClientState) -> None:
        self.transport = transport
        self.jobs = jobs
        self.shared = shared
        self.client = client
        #: A read larger than FAIR_SHARE_BYTES, served one slice per pass from ``_input_pos``; None when idle.
        self._input: bytes | None = None
        self._input_pos = 0
        self.ctx = CommandContext(shared.state, client, shared.registry)
        self.parser = RequestParser(max_bulk_length=shared.config.max_bulk_length)
        #: Replies ready to go out in the next write; made when the first is (an idle connection holds no list).
        self._out: list[bytes] | None = None
        #: Reply bytes held here and not yet handed to the transport (``_out`` and the bytes in ``_pending``):
        #: with the transport's buffer, what --output-buffer-limit bounds.
        self._out_bytes = 0
        #: This connection's share of ``state.memory.client_output_bytes`` (--output-budget), as last counted.
        self._accounted = 0
        #: Replies waiting behind an unfinished job, in request order (bytes or jobs); None while there are none
        #: (most connections never wait on a job, and an idle one should not carry a list).
        self._pending: list[bytes | Job] | None = None
        self._paused_for_queue = False
        self._paused_for_writes = False
        self._paused_for_fairness = False
        #: Shutting down: bytes still to read before reading stops (what had arrived at the signal); None: no limit.
        self._read_budget: int | None = None
        #: Inside data_received: a job answered at once (--cpu inline) leaves its reply for the chunk's one write.
        self._dispatching = False
        #: No more requests will be read (QUIT, protocol error, EOF, shutdown); close once replies are out.
        self.reading_done = False
        #: The transport is closed or closing for good: nothing more is written.
        self.closed = False
        log.debug("connection_open", client_id=client.id, peer=client.addr)

    # -- events from the driver --------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Bytes arrived: serve them now, or a slice now and the rest on later passes (FAIR_SHARE_BYTES)."""
        if self.reading_done:
            return
        budget = self._read_budget
        if budget is not None:  # shutting down: serve only what had arrived when the signal came
            if len(data) >= budget:
                data = data[:budget]
                self.reading_done = True  # nothing after this; stop_reading below closes once answered
            else:
                self._read_budget = budget - len(data)
        if self._input is not None:  # still serving an earlier read: keep the order
            self._input = self._input[self._input_pos :] + data
            self._input_pos = 0
            return
        shares = self.shared.shares
        if shares is None or (len(data) <= FAIR_SHARE_BYTES and shares.may_serve(len(data))):
            self._serve(data)
        else:  # served a slice per pass, in turn with the other connections that have input left
            self._input = data
            self._input_pos = 0
            self._paused_for_fairness = True
            self._update_reading()
            shares.admit(self)
        if self._read_budget is not None and self.reading_done:
            self._read_budget = None
            self.reading_done = False
            self.stop_reading()

    def serve_slice(self) -> bool:
        """Serve the next FAIR_SHARE_BYTES of held input (server.connection.fairness); True while some is left."""
        data = self._input
        if data is None:
            return False
        start = self._input_pos
        end = start + FAIR_SHARE_BYTES
        if end < len(data):
            self._input_pos = end
            self._serve(data[start:end])
        else:
            self._input = None
            self._serve(data[start:] if start else data)
        if self._input is not None and not self.closed and not self.client.close_requested:
            return True
        self._input = None
        self._paused_for_fairness = False
        self._update_reading()
        if self.reading_done and not self._pending:
            self._close()
        return False

    def _serve(self, data: bytes) -> None:
        """Parse every request in ``data``, answer what can be answered now, write once."""
        if self.closed or self.client.close_requested:
            return
        pending = self._pending
        out = self._out
        if out is None:
            out = self._out = []
        served = False
        self.client.last_interaction = self.shared.clock()
        self._dispatching = True
        try:
            for result in self.shared.dispatcher.run_chunk(self.ctx, self.parser, data):
                served = True
                if isinstance(result, bytes):
                    if pending:
                        pending.append(result)
                    else:
                        out.append(result)
                    self._out_bytes += len(result)
                    if self._out_bytes >= WRITE_BUFFER_HIGH_WATER:  # a pipeline of large replies: write early
                        self._write_out()
                        if self._over_output_limit():
                            return
                else:
                    self._start_job(Job(result))
                    if self.closed:
                        return
                    pending = self._pending  # made by the first job
            if out:
                self._write_out()
        except Exception:
            log.warning("connection_failed", client_id=self.client.id, exc_info=True)
            self.closed = self.reading_done = True
            self.transport.abort()
            return
        finally:
            self._dispatching = False
            self._out = None  # written (or dropped with the connection): an idle connection holds no list
        # The output cap can only be passed with replies held back, with the transport above its high-water
        # mark (it has called pause_writing), or with a cap set below that mark: skip the check otherwise.
        if (self._out_bytes or self._paused_for_writes or self.shared.small_output_limit) and self._over_output_limit():
            return
        client = self.client
        buffered = self.parser.held
        if buffered:
            self._note_partial_request(buffered, served)
        elif client.request_started:
            client.request_started = 0.0
        if client.close_requested:
            self.stop_reading()
        elif pending and len(pending) >= MAX_PENDING_REPLIES_PER_CLIENT and not self._paused_for_queue:
            self._paused_for_queue = True
            self._update_reading()

    def job_done(self, job: Job, reply: bytes) -> None:
        """A job's reply is here: release every reply now at the head of the queue, in order."""
        action = job.action
        if action.__class__ is RunCpu:
            self.shared.dispatcher.finish_cpu(action, job.started_ns, self.client.id, reply)
        if self.closed:
            return
        job.reply = reply
        self._out_bytes += len(reply)
        self._release_ready()
        if self._dispatching:  # answered at once: the chunk's write takes it
            return
        self._write_out()
        # As in _serve: the output cap can only be passed with replies held back, writes paused or a small cap.
        if (self._out_bytes or self._paused_for_writes or self.shared.small_output_limit) and self._over_output_limit():
            return
        if self.closed:
            return
        # The idle deadline counts from the reply, not from the request that waited on us (Redis does the same).
        self.client.last_interaction = self.shared.clock()
        if self._paused_for_queue and len(self._pending or ()) < MAX_PENDING_REPLIES_PER_CLIENT:
            self._paused_for_queue = False
            self._update_reading()
        if self.reading_done and not self._pending and self._input is None:
            self._close()

    def eof_received(self) -> bool:
        """The client half-closed: answer what was read, then close. True: the driver keeps the transport open."""
        self.stop_reading()
        return True

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: stop reading until it drains."""
        self._paused_for_writes = True
        if not self.client.output_since:  # the write deadline runs from here
            self.client.output_since = self.shared.clock()
        self._update_reading()

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""
        self._paused_for_writes = False
        self.client.output_since = 0.0
        self.client.last_interaction = self.shared.clock()  # as Redis: a write the client took is interaction
        if self._accounted:
            self._account()
        self._update_reading()

    def stop_reading(self) -> None:
        """No more requests from this client (EOF, QUIT, shutdown); those already read still get replies."""
        if self.closed:
            return
        if not self.reading_done:
            self.reading_done = True
            with contextlib.suppress(RuntimeError):  # asyncio: the transport is already closing
                self.transport.pause_reading()
        if not self._pending and self._input is None:
            self._close()

    def stop_reading_after(self, waiting: int) -> None:
        """Shutdown: answer the ``waiting`` bytes already delivered (the socket's receive queue), then stop.

        Bytes that arrive after them are not served. ``waiting`` 0 is :meth:`stop_reading`.
        """
        if waiting <= 0 or self.reading_done:
            self.stop_reading()
        else:
            self._read_budget = waiting

    def check_deadlines(self, now: float) -> str | None:
        """The clients cron's question: close this client if it overran a deadline; return the reason."""
        if self.closed:
            return None
        reason = deadline_passed(self.shared.config, self.client, now, reading=self.waiting_on_peer())
        if reason is not None:
            self.close_for(reason)
        return reason

    def connection_lost(self) -> None:
        """The transport is gone: cancel unfinished jobs (their replies are dropped), forget queued replies."""
        self.closed = self.reading_done = True
        self._input = None  # a queued slice (server.connection.fairness) finds nothing to serve
        for item in self._pending or ():
            if item.__class__ is Job and item.reply is None:
                self.jobs.cancel(item)
        self._pending = self._out = None
        self._out_bytes = 0
        self._unaccount()
        log.debug("connection_closed", client_id=self.client.id)

    def push(self, data: bytes) -> None:
        """A pub/sub message for this client, already encoded (the core is ``client.outlet``, set by the driver).

        It goes out now, in one write, unless replies are waiting on a job:
        then it queues behind them, so a RESP2 client never sees a message
        before the confirmation of the SUBSCRIBE it pipelined after a cpu
        command. While this connection is serving its own chunk (it published
        to itself) the chunk's one write takes it, after the replies before
        the PUBLISH and before the PUBLISH's own, as Redis orders them.
        Then the pub/sub output limits apply (a subscriber that does not read
        is cut off without anyone else waiting on it).
        """
        if self.closed:
            return
        self._out_bytes += len(data)
        if self._pending:
            self._pending.append(data)
        else:
            out = self._out
            if out is None:
                out = self._out = []
            out.append(data)
            if not self._dispatching:
                self._write_out()
        self._check_pubsub_output()

    def _check_pubsub_output(self) -> None:
        """Redis's ``client-output-buffer-limit pubsub``: over the hard limit, or over the soft one for too long.

        The unsent bytes also count into the server-wide output total (--output-budget's accounting).
        """
        unsent = self._account()
        client = self.client
        if unsent <= PUBSUB_OUTPUT_SOFT_LIMIT:
            client.pubsub_soft_since = 0.0
            return
        if unsent > PUBSUB_OUTPUT_HARD_LIMIT:
            self.close_for(PUBSUB_OUTPUT_BUFFER, unsent=unsent, limit=PUBSUB_OUTPUT_HARD_LIMIT)
            return
        now = self.shared.clock()
        if not client.pubsub_soft_since:
            client.pubsub_soft_since = now
        elif now - client.pubsub_soft_since > PUBSUB_OUTPUT_SOFT_SECONDS:
            self.close_for(PUBSUB_OUTPUT_BUFFER, unsent=unsent, limit=PUBSUB_OUTPUT_SOFT_LIMIT, soft=True)

    # -- questions from the driver -----------------------------------------------------------
    def waiting_on_peer(self) -> bool:
        """No request of this client is executing and its replies are not held back: only the peer can act."""
        return not self._pending and not self._paused_for_writes and not self.reading_done and self._input is None

    # -- limits ------------------------------------------------------------------------------
    def close_for(self, reason: str, **detail: Any) -> None:
        """Close this client because it passed a limit: count and log once, no reply.

        A write-side limit (output buffer, write timeout) aborts: queued
        replies are dropped with the transport's buffer at once. A read-side
        one (idle, request deadline, query buffer) closes: nothing is queued.
        """
        if self.closed:
            return
        note_limit_close(self.client, reason, self.shared.stats, **detail)
        self.reading_done = self.closed = True
        self._unaccount()
        if reason in _ABORTING_LIMITS:
            self._out = None
            self._out_bytes = 0
            self.transport.abort()
        else:
            self.transport.close()

    def _over_output_limit(self) -> bool:
        """True when this connection is closed, or is now closed for holding too many unsent reply bytes.

        Two bounds: its own (--output-buffer-limit), and the server's (--output-budget, all clients' unsent
        bytes together): past the budget a client that is not keeping up (more than the transport's
        high-water mark unsent) is cut when it asks for more, whichever client that is.
        """
        if self.closed:
            return True
        unsent = self._account()
        limit = self.shared.config.output_buffer_limit
        if unsent > limit:
            self.close_for(OUTPUT_BUFFER, unsent=unsent, limit=limit)
            return True
        budget = self.shared.config.output_budget
        server_unsent = self.shared.state.memory.client_output_bytes
        if budget and unsent > WRITE_BUFFER_HIGH_WATER and server_unsent > budget:
            self.close_for(OUTPUT_BUFFER, unsent=unsent, server_unsent=server_unsent, budget=budget)
            return True
        return False

    def _account(self) -> int:
        """Count this connection's unsent bytes into the server-wide total; return them."""
        unsent = self._out_bytes + self.transport.get_write_buffer_size()
        self.shared.state.memory.client_output_bytes += unsent - self._accounted
        self._accounted = unsent
        return unsent

    def _unaccount(self) -> None:
        """This connection holds nothing any more: take its share out of the server-wide total."""
        if self._accounted:
            memory = self.shared.state.memory
            memory.client_output_bytes -= self._accounted
            memory.released(self._accounted)  # glibc keeps freed heap: past a threshold, it is given back
            self._accounted = 0

    def _note_partial_request(self, buffered: int, served: bool) -> None:
        """The parser holds part of a request: enforce the query buffer cap, start its request deadline."""
        limit = self.shared.config.query_buffer_limit
        if buffered > limit:
            self.close_for(QUERY_BUFFER, buffered=buffered, limit=limit)
        elif served or not self.client.request_started:
            self.client.request_started = self.shared.clock()

    # -- replies -----------------------------------------------------------------------------
    def _start_job(self, job: Job) -> None:
        """Queue the job's slot, write what is ready before it (it may take long), then hand it to the runner."""
        if self._pending is None:
            self._pending = []
        self._pending.append(job)
        if self._out:
            self._write_out()
        self.jobs.start(job, self)

    def _release_ready(self) -> None:
        """Move the replies now at the head of the queue (up to the first unfinished job) to ``_out``."""
        pending = self._pending
        if pending is None:
            return
        out = self._out
        if out is None:
            out = self._out = []
        ready = 0
        for head in pending:
            if isinstance(head, bytes):
                out.append(head)
            elif head.reply is not None:
                out.append(head.reply)
            else:
                break
            ready += 1
        del pending[:ready]
        if not pending:
            self._pending = None  # no job waits: drop the list (an idle connection holds none)

    def _write_out(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if self._dispatching:
            out.clear()  # the chunk being served goes on appending to this list
        else:
            self._out = None
        if self.closed:
            return
        self._out_bytes -= len(data)
        self.shared.stats.total_net_output_bytes += len(data)
        self.transport.write(data)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    # -- reading control ---------------------------------------------------------------------
    def _update_reading(self) -> None:
        """Pause reading while either bound is exceeded; resume when both are clear (unless reading is done)."""
        if self.closed or self.reading_done:
            return
        if self._paused_for_queue or self._paused_for_writes or self._paused_for_fairness:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
