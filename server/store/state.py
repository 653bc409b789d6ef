"""Server-wide and per-client state that commands read (INFO, CLIENT, DBSIZE) and the front ends update.

Counters are plain integers bumped on the hot path: an increment is all a
request pays for statistics. Under the threaded front end the counters may
lose an occasional increment to a race; they are statistics, not data, and a
lock per request would cost more than they are worth. The keyspace, which is
data, has its own lock (see :mod:`server.store.keyspace`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.memory import MemoryAccount, resolve_maxmemory, rss_bytes
from server.store.commandstats import CommandStatsTable
from server.store.keyspace import Keyspace, LockedKeyspace
from server.store.pubsub import Outlet, PubSubHub
from server.store.slowlog import SlowLog

if TYPE_CHECKING:
    from server.config import Config


@dataclass
class Stats:
    """Server counters reported by INFO stats."""

    total_connections_received: int = 0
    rejected_connections: int = 0
    total_commands_processed: int = 0
    total_cpu_commands: int = 0
    total_error_replies: int = 0
    total_net_input_bytes: int = 0
    total_net_output_bytes: int = 0
    slow_commands: int = 0
    # Clients closed by a limit, by reason (server.limits.resources; the two buffer ones are Redis 7.2's names).
    client_idle_timeout_disconnections: int = 0
    client_request_timeout_disconnections: int = 0
    client_write_timeout_disconnections: int = 0
    client_query_buffer_limit_disconnections: int = 0
    client_output_buffer_limit_disconnections: int = 0
    #: Subscribers cut off by the pub/sub output limits (server.limits.constants.PUBSUB_OUTPUT_*).
    pubsub_output_buffer_limit_disconnections: int = 0
    #: accept() calls that failed for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) under
    #: threads; under uvloop, which handles those itself, clients cron passes that found the descriptor table full.
    accept_resource_errors: int = 0


@dataclass(eq=False, slots=True)
class ClientState:
    """One connection as CLIENT LIST and INFO clients see it."""

    id: int
    addr: str
    laddr: str
    fd: int = -1
    name: bytes = b""
    lib_name: bytes = b""
    lib_ver: bytes = b""
    created: float = field(default_factory=time.monotonic)
    last_interaction: float = field(default_factory=time.monotonic)
    last_command: str = "NULL"
    resp: int = 2
    #: Set by QUIT (and by protocol errors): reply, then close.
    close_requested: bool = False
    #: False until AUTH succeeds when a password is set (always True without one): see server.commands.auth.
    authenticated: bool = True
    # Deadlines the clients cron checks (server.limits.resources.deadline_passed); monotonic seconds, 0.0 = none.
    #: When the first byte of a request not yet complete arrived (the parser holds part of it).
    request_started: float = 0.0
    #: Since when replies have been waiting for the client to take them (set only when a write could not finish).
    output_since: float = 0.0
    # Pub/sub (server.store.pubsub fills these): subscriptions, and the driver's outlet for a pushed message.
    #: Sends already-encoded bytes to this client now (set by the connection's driver; None: no pub/sub delivery).
    outlet: Outlet | None = None
    channels: dict[bytes, None] | None = None  # made on the first SUBSCRIBE: most clients never subscribe
    patterns: dict[bytes, None] | None = None
    #: Channels plus patterns subscribed: nonzero puts a RESP2 client in subscribed mode.
    subscriptions: int = 0
    #: Since when a subscriber's unsent output has been over the pub/sub soft limit (0.0: it is not).
    pubsub_soft_since: float = 0.0

    def describe(self) -> str:
        """This client as one CLIENT LIST line (Redis's field names, the subset that applies here)."""
        now = time.monotonic()
        return (
            f"id={self.id} addr={self.addr} laddr={self.laddr} fd={self.fd} "
            f"name={self.name.decode(errors='replace')} age={int(now - self.created)} "
            f"idle={int(now - self.last_interaction)} flags={'P' if self.subscriptions else 'N'} db=0 "
            f"sub={len(self.channels or ())} psub={len(self.patterns or ())} ssub=0 multi=-1 "
            f"cmd={self.last_command} user=default redir=-1 resp={self.resp} "
            f"lib-name={self.lib_name.decode(errors='replace')} lib-ver={self.lib_ver.decode(errors='replace')}"
        )


class ServerState:
    """Everything one running server shares across its connections."""

    def __init__(self, config: Config, *, thread_safe: bool) -> None:
        self.config = config
        self.keyspace = LockedKeyspace() if thread_safe else Keyspace()
        self.keyspace.set_eviction(config.maxmemory_policy, config.maxmemory_samples)
        #: used_memory against maxmemory: the keyspace's bytes plus client output buffers (server.memory).
        maxmemory = resolve_maxmemory(config.maxmemory, instances=config.reuseport)
        self.memory = MemoryAccount(self.keyspace, maxmemory, config.maxmemory_policy)
        #: RSS when the server state was made: the interpreter's fixed cost (INFO ``used_memory_startup``).
        self.startup_rss = rss_bytes()
        self.stats = Stats()
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.clients: dict[int, ClientState] = {}
        self._ids = itertools.count(1)
        self._clients_lock = threading.Lock()
        #: Filled in by the front end once it is bound (port 0 picks one).
        self.bound_port: int = config.port
        self.pool_size: int = 0
        #: The cpu pool, when there is one (INFO reports its restarts): a server.cpu backend. Typed loosely so the
        #: store does not import the cpu package above it (the layers run one way: cpu -> store).
        self.pool: Any = None
        #: The cpu-job policy on that pool (INFO reports its backlog, rejections and timeouts): server.cpu.jobs.
        self.cpu_jobs: Any = None
        #: Per-command calls, time, rejected/failed calls and latency histograms (INFO commandstats/latencystats).
        self.command_stats = CommandStatsTable()
        #: Channels and patterns -> subscribers (PUBLISH, SUBSCRIBE, PUBSUB; INFO and metrics read its counters).
        self.pubsub = PubSubHub()
        #: SLOWLOG's entries, newest first.
        self.slowlog = SlowLog()
        self.process_id = os.getpid()
        self.run_id = os.urandom(20).hex()

    def register_client(self, addr: str, laddr: str, fd: int) -> ClientState:
        """Create the state of a newly accepted connection and count it."""
        with self._clients_lock:
            client = ClientState(
                id=next(self._ids), addr=addr, laddr=laddr, fd=fd, authenticated=not self.config.requirepass
            )
            self.clients[client.id] = client
        self.stats.total_connections_received += 1
        return client

    def unregister_client(self, client: ClientState) -> None:
        with self._clients_lock:
            self.clients.pop(client.id, None)
        self.pubsub.drop(client)

    def client_list(self) -> list[ClientState]:
        with self._clients_lock:
            return list(self.clients.values())

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: zero the counters INFO stats, commandstats and latencystats report (not the slow log)."""
        # In place: the front ends and the dispatcher hold this object for their hot paths.
        fresh = Stats()
        for item in dataclasses.fields(Stats):
            setattr(self.stats, item.name, getattr(fresh, item.name))
        self.command_stats.reset()
        self.pubsub.reset_stats()

    @property
    def uptime_seconds(self) -> int:
        return int(time.monotonic() - self.started_monotonic)


def format_address(address: object) -> str:
    """``host:port`` for an IPv4 or IPv6 socket address tuple, as CLIENT LIST shows it."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
