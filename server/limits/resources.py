"""Per-connection limits and descriptor exhaustion: the parts both front ends share.

* :func:`adjust_open_files_limit`: at start-up, raise the soft ``RLIMIT_NOFILE``
  so ``maxclients`` clients fit, or lower ``maxclients`` to what the hard
  limit allows, with Redis's warnings (``server.c`` ``adjustOpenFilesLimit``).
* :data:`MAXCLIENTS_ERROR`: what the client one past ``maxclients`` reads
  before the server closes it.
* :func:`deadline_passed` and :func:`clients_cron_interval`: the clients cron,
  one periodic pass over the client table per front end (not a timer per read)
  that closes idle clients, clients stalled in the middle of a request
  (slowloris) and clients whose replies do not drain.
* :class:`RateLimitedLog` and :data:`ACCEPT_RESOURCE_ERRNOS`: an accept loop
  that runs out of descriptors logs at most once per interval.

Nothing here touches a socket: the front ends do the closing, each in its
own way (a transport abort on the loop, a socket shutdown under threads).
"""

from __future__ import annotations

import errno
import os
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from server.errors import StartupError
from server.limits.constants import (
    CLIENTS_CRON_MAX_INTERVAL,
    CLIENTS_CRON_MIN_INTERVAL,
    FDS_PER_POOL_WORKER,
    RESERVED_FDS,
    RESOURCE_LOG_INTERVAL,
)

if TYPE_CHECKING:
    from server.config import Config
    from server.store.state import ClientState, ServerState

log = structlog.get_logger("crossdock.resources")

#: Redis's reply to the client one past maxclients (networking.c acceptCommonHandler); then the server closes it.
MAXCLIENTS_ERROR = b"-ERR max number of clients reached\r\n"

#: accept() failures that mean "no descriptor or memory right now", not "this connection is bad": the listener
#: must back off and retry, never stop (EMFILE: this process's table is full; ENFILE: the system's; ENOBUFS and
#: ENOMEM: the kernel could not allocate the socket). The same set Trio and asyncio treat as transient.
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Why a client was closed by a limit: the ClientState / Stats vocabulary both front ends use.
IDLE_TIMEOUT = "idle_timeout"
REQUEST_TIMEOUT = "request_timeout"
WRITE_TIMEOUT = "write_timeout"
QUERY_BUFFER = "query_buffer_limit"
OUTPUT_BUFFER = "output_buffer_limit"
#: A subscriber past the pub/sub output limits (PUBSUB_OUTPUT_* in server.limits.constants).
PUBSUB_OUTPUT_BUFFER = "pubsub_output_buffer_limit"


@dataclass(frozen=True)
class FilesLimit:
    """What :func:`adjust_open_files_limit` found and did."""

    maxclients: int
    soft_before: int
    soft_after: int
    needed: int


def reserved_fds(config: Config) -> int:
    """Descriptors the server needs beyond one per client: Redis's 32, plus the pool's per worker."""
    workers = config.workers if config.cpu == "pool" else 0
    return RESERVED_FDS + FDS_PER_POOL_WORKER * workers


def adjust_open_files_limit(config: Config) -> FilesLimit:
    """Make room for ``maxclients`` clients: raise the soft open-file limit, or lower maxclients.

    Called once at start-up by both front ends, before the listener opens.
    Needs ``maxclients + reserved_fds(config)`` descriptors. When the soft
    limit is lower it is raised, up to the hard limit (no privilege needed);
    when even the hard limit is lower, maxclients becomes what fits, with
    Redis's three warnings. The caller uses the returned ``maxclients``.

    Error handling: a limit too low to hold the server's own descriptors
    plus one client raises :class:`StartupError` with Redis's wording (Redis
    exits too); a ``setrlimit`` refusal (EPERM in some containers, or above
    ``fs.nr_open`` when the hard limit is unlimited) is logged and the best
    limit obtained is used.
    """
    reserve = reserved_fds(config)
    needed = config.maxclients + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return FilesLimit(config.maxclients, soft, soft, needed)
    error = ""
    best = soft
    for candidate in (needed, hard):
        if candidate == resource.RLIM_INFINITY or candidate <= best:
            continue
        target = candidate if hard == resource.RLIM_INFINITY else min(candidate, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            continue
        best = target
        break
    if best >= needed:
        log.info(f"Increased maximum number of open files to {best} (it was originally set to {soft}).")
        return FilesLimit(config.maxclients, soft, best, needed)
    if best <= reserve:
        raise StartupError(
            f"Your current 'ulimit -n' of {best} is not enough for the server to start. "
            f"Please increase your open file limit to at least {reserve + 1}. Exiting."
        )
    maxclients = best - reserve
    log.warning(f"You requested maxclients of {config.maxclients} requiring at least {needed} max file descriptors.")
    log.warning(
        f"Server can't set maximum open files to {needed} because of OS error: "
        f"{error or 'the hard limit is ' + str(hard)}."
    )
    log.warning(
        f"Current maximum open files is {best}. maxclients has been reduced to {maxclients} to compensate for "
        "low ulimit. If you need higher maxclients increase 'ulimit -n'."
    )
    return FilesLimit(maxclients, soft, best, needed)


def fit_open_files(state: ServerState) -> Config:
    """:func:`adjust_open_files_limit` for the server's config; a lowered maxclients is written back.

    Both front ends call this first thing at start-up and use the returned
    (possibly lowered) config from then on; INFO and CONFIG GET read it from
    ``state.config``.
    """
    files = adjust_open_files_limit(state.config)
    if files.maxclients != state.config.maxclients:
        state.config = state.config.with_overrides(maxclients=files.maxclients)
    return state.config


def clients_cron_interval(config: Config) -> float:
    """Seconds between clients cron passes: a quarter of the smallest timeout in force, within the bounds."""
    timeouts = [t for t in (config.idle_timeout, config.request_timeout, config.write_timeout) if t > 0]
    if not timeouts:
        return CLIENTS_CRON_MAX_INTERVAL
    return max(CLIENTS_CRON_MIN_INTERVAL, min(CLIENTS_CRON_MAX_INTERVAL, min(timeouts) / 4))


def deadline_passed(config: Config, client: ClientState, now: float, *, reading: bool) -> str | None:
    """The timeout a client has overrun, or None. The clients cron asks this of every client.

    ``reading`` is the front end's "this client is waiting on the peer, not
    on us": no request of it is executing and no reply of it is queued.
    Only then do the idle and request deadlines run, so a client is never
    blamed for the server's own slowness (a SLEEP, a long PRIMES).

    * write timeout: replies have waited unsent since ``client.output_since``;
    * request timeout: the parser holds part of a request whose first byte
      arrived at ``client.request_started`` (slowloris);
    * idle timeout (Redis's ``timeout``): no interaction since
      ``client.last_interaction`` (a chunk read, or a held-back reply written),
      and nothing in flight.
    """
    if config.write_timeout and client.output_since and now - client.output_since > config.write_timeout:
        return WRITE_TIMEOUT
    if not reading:
        return None
    if config.request_timeout and client.request_started and now - client.request_started > config.request_timeout:
        return REQUEST_TIMEOUT
    if config.idle_timeout and now - client.last_interaction > config.idle_timeout:
        return IDLE_TIMEOUT
    return None


def note_limit_close(client: ClientState, reason: str, stats: Any, **detail: Any) -> None:
    """Count a close by a limit in INFO stats and log it once, at info, with the client id and peer."""
    counter = _STAT_BY_REASON[reason]
    setattr(stats, counter, getattr(stats, counter) + 1)
    log.info("client_closed_by_limit", reason=reason, client_id=client.id, peer=client.addr, **detail)


#: INFO stats counter per close reason (Redis 7.2's names for the two buffer limits).
_STAT_BY_REASON = {
    IDLE_TIMEOUT: "client_idle_timeout_disconnections",
    REQUEST_TIMEOUT: "client_request_timeout_disconnections",
    WRITE_TIMEOUT: "client_write_timeout_disconnections",
    QUERY_BUFFER: "client_query_buffer_limit_disconnections",
    OUTPUT_BUFFER: "client_output_buffer_limit_disconnections",
    PUBSUB_OUTPUT_BUFFER: "pubsub_output_buffer_limit_disconnections",
}


def descriptors_exhausted() -> bool:
    """Whether this process's descriptor table is full right now (opens and closes /dev/null).

    uvloop (libuv) handles EMFILE on accept by itself without a word: it
    closes a spare descriptor it keeps, accepts the waiting connections and
    closes them at once, then takes the spare back. The asyncio front end's
    clients cron calls this so the operator still gets a (rate-limited) log
    line. Error handling: any OSError other than EMFILE/ENFILE counts as
    "not exhausted".
    """
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


class RateLimitedLog:
    """One warning per interval for a fault that repeats (each failed accept, each rejected client).

    ``note(**fields)`` logs the first occurrence at once, then nothing until
    ``interval`` has passed; the next line carries ``suppressed``, how many
    occurrences were not logged in between. Thread-safe enough: under a race
    two lines may be written instead of one, never one per occurrence.
    """

    def __init__(self, event: str, interval: float = RESOURCE_LOG_INTERVAL) -> None:
        self.event = event
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def note(self, **fields: Any) -> bool:
        """Record one occurrence; return True when it was logged."""
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return False
        self._next = now + self.interval
        suppressed, self._suppressed = self._suppressed, 0
        log.warning(self.event, suppressed=suppressed, **fields)
        return True
