"""Fakes for in-process tests of the connection core: a transport, a job runner and a clock (uvicorn's habit).

No sockets, no event loop, no threads: a test feeds the core events and
reads what it did from these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.commands import default_registry
from server.config import Config
from server.connection.core import ConnectionCore, CoreShared, Job
from server.store.state import ServerState


@dataclass
class FakeTransport:
    """Records what the core wrote and asked; ``buffered`` plays the kernel-side buffer a slow client leaves full."""

    writes: list[bytes] = field(default_factory=list)
    buffered: int = 0
    #: False: the client reads nothing, so every write stays in the transport's buffer.
    peer_reads: bool = True
    reading: bool = True
    closed: bool = False
    aborted: bool = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)
        if not self.peer_reads:
            self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)


@dataclass
class FakeJobs:
    """Holds started jobs until the test finishes them (in any order), or answers at once when ``immediate``."""

    started: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)
    immediate: bytes | None = None

    def start(self, job: Job, core: ConnectionCore) -> None:
        self.started.append(job)
        if self.immediate is not None:
            core.job_done(job, self.immediate)

    def cancel(self, job: Job) -> None:
        self.cancelled.append(job)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    core: ConnectionCore
    transport: FakeTransport
    jobs: FakeJobs
    clock: FakeClock
    state: ServerState


def make_core(config: Config | None = None, *, thread_safe: bool = False, loop: FakeLoop | None = None) -> Harness:
    """A core over fakes, with the real registry, dispatcher and store."""
    from server.commands import Dispatcher

    state = ServerState(config or Config(), thread_safe=thread_safe)
    registry = default_registry()
    clock = FakeClock()
    transport = FakeTransport()
    jobs = FakeJobs()
    client = state.register_client("127.0.0.1:50000", "127.0.0.1:7379", -1)
    client.last_interaction = clock.now
    shared = CoreShared(
        state, Dispatcher(registry, state), registry, clock=clock, defer=loop.call_soon if loop is not None else None
    )
    core = ConnectionCore(transport, jobs, shared, client)
    return Harness(core, transport, jobs, clock, state)


class FakeLoop:
    """Collects deferred callables; ``run_pass`` runs those queued so far, as one event-loop pass would."""

    def __init__(self) -> None:
        self.ready: list[object] = []

    def call_soon(self, callback: object) -> None:
        self.ready.append(callback)

    def run_pass(self) -> int:
        batch, self.ready = self.ready, []
        for callback in batch:
            callback()  # type: ignore[operator]
        return len(batch)
