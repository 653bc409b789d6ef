"""Shares of one event-loop pass among the connections that have more input than one slice (issue 15 item 5).

A read longer than FAIR_SHARE_BYTES is served one slice per pass with the
connection's reading paused, as Redis reads 16 KiB per event. That bounds
one connection, not the pass: with 500 clients streaming, a pass that gives
each its slice lasts 500 slices. :class:`LoopShares` bounds the pass itself:

- connections with input left wait in one round-robin queue, in the order
  their input came (only a connection that finds the queue empty is served
  on arrival); each pass serves the queue in order, one slice each, until
  PASS_BUDGET_BYTES are spent, and the next pass goes on where this one
  stopped;
- while anyone is queued, small reads count against the same budget; a read
  of at most INTERACTIVE_READ_BYTES (a PING, a GET) is still served at once,
  so an interactive client never waits behind the streamers;
- when nobody streams, nothing is queued or scheduled and a read costs one
  attribute test here.

Between passes uvloop accepts, runs timers and signal handlers and reads
other sockets, so none of them waits longer than about one budget of work.
No I/O here: the loop is reached only through ``defer`` (``loop.call_soon``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from server.limits.constants import FAIR_SHARE_BYTES, INTERACTIVE_READ_BYTES, PASS_BUDGET_BYTES


class Sliced(Protocol):
    """A connection that serves its held input one slice at a time (the connection core)."""

    def serve_slice(self) -> bool:
        """Serve the next slice of held input; True while input is left for another pass."""
        ...


class LoopShares:
    """The pass budget and the round-robin queue of one event loop's connections (one per server)."""

    __slots__ = ("_defer", "_queue", "_scheduled", "_spent", "budget")

    def __init__(self, defer: Callable[[Callable[[], None]], object], budget: int = PASS_BUDGET_BYTES) -> None:
        self._defer = defer
        self.budget = budget
        self._queue: deque[Sliced] = deque()
        #: Bytes served in the current pass (slices and counted small reads).
        self._spent = 0
        #: A pass is in progress: ``_run`` is scheduled for the next one.
        self._scheduled = False

    @property
    def busy(self) -> bool:
        """A pass is being shared: some connection streams, so loop iterations are long (up to the budget)."""
        return self._scheduled

    @property
    def waiting(self) -> int:
        """Connections queued for a slice of a later pass."""
        return len(self._queue)

    def may_serve(self, size: int) -> bool:
        """A read of ``size`` bytes (at most one slice) arrived: may it be served now, in this pass?"""
        if not self._scheduled:  # nobody streams: no pass to share
            return True
        if size <= INTERACTIVE_READ_BYTES or self._spent < self.budget:
            self._spent += size
            return True
        return False

    def admit(self, connection: Sliced) -> None:
        """``connection`` holds input (its reading paused): join the queue's end; served at once if it is alone."""
        if not self._scheduled:
            self._scheduled = True
            self._spent = 0
            self._defer(self._run)
        if self._queue or self._spent >= self.budget:  # others were first: take the turn after theirs
            self._queue.append(connection)
            return
        self._spent += FAIR_SHARE_BYTES
        if connection.serve_slice():
            self._queue.append(connection)

    def _run(self) -> None:
        """One pass: a slice for each queued connection in turn, until the budget is spent."""
        self._spent = 0
        queue = self._queue
        for _ in range(len(queue)):  # each connection at most once per pass
            if self._spent >= self.budget:
                break
            connection = queue.popleft()
            self._spent += FAIR_SHARE_BYTES
            if connection.serve_slice():
                queue.append(connection)
        if queue:
            self._defer(self._run)
        else:
            self._scheduled = False
