"""The life of a server, shared by both front ends: start-up, admission, signals, graceful shutdown.

Start-up order: size the descriptor table for maxclients, load TLS (a bad
file stops here, before anything starts), start and pre-warm the cpu pool,
then the driver binds and accepts, then metrics and the ``started`` line.
Admission (maxclients, protected mode) is decided here for both drivers.
The first SIGINT/SIGTERM starts a graceful shutdown, a second one exits at
once. Shutdown: stop accepting, stop reading, answer what was read (within
``--shutdown-timeout``), close, then stop the pool and the metrics endpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
from collections.abc import Callable
from typing import Any

import structlog

from server import security
from server.commands import Dispatcher, Registry, default_registry
from server.config import Config
from server.cpu.backend import CpuBackend
from server.cpu.backends import start_pool
from server.cpu.jobs import CpuJobs, attach_pool
from server.frontends import tls
from server.limits.resources import MAXCLIENTS_ERROR, RateLimitedLog, fit_open_files
from server.observability.metrics import MetricsServer, start_metrics
from server.store.state import ServerState

log = structlog.get_logger("crossdock.lifecycle")


class ServerBase:
    """What both front ends hold: config, state, dispatcher, the cpu pool and its policy, metrics.

    A driver subclasses it and adds its way of accepting and serving
    connections; everything that is not about sockets or threads is here.
    """

    mode = ""

    def __init__(self, config: Config, command_registry: Registry | None = None, *, thread_safe: bool) -> None:
        self.config = config
        self.registry = command_registry or default_registry()
        self.state = ServerState(config, thread_safe=thread_safe)
        self.dispatcher = Dispatcher(self.registry, self.state)
        self.pool: CpuBackend | None = None
        #: The cpu-job policy on the pool (backlog bound, timeouts, failures); None with --cpu inline.
        self.cpu_jobs: CpuJobs | None = None
        self.metrics: MetricsServer | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self._maxclients_log = RateLimitedLog("maxclients_reached")

    # -- start-up ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Before the pool: size descriptors for maxclients (may lower it), load TLS (exit 2 on a bad file)."""
        self.config = fit_open_files(self.state)
        self.ssl_context = tls.server_context_or_exit(self.config)

    def start_cpu(self, pool: CpuBackend | None, *, submit: Any, call_soon: Any, defer: Any = None) -> None:
        """Attach a started pool (``None`` with ``--cpu inline``) with the driver's submit / call_soon / defer."""
        if pool is None:
            if self.mode == "async":
                log.warning(
                    "cpu_inline_blocks_loop",
                    detail="--cpu inline runs cpu commands on the event loop: every client waits while one runs",
                )
            return
        self.pool = pool
        self.cpu_jobs = attach_pool(self.state, pool, submit=submit, call_soon=call_soon, defer=defer)

    def new_pool(self) -> CpuBackend | None:
        """Start the configured cpu executor (blocking; pre-warmed), or None with ``--cpu inline``."""
        return start_pool(self.config) if self.config.cpu == "pool" else None

    def announce(self, bound_port: int, **fields: Any) -> None:
        """Record the bound port, start metrics, and log ``started`` (tests and the supervisor wait for it)."""
        self.state.bound_port = bound_port
        self.metrics = start_metrics(self.state)
        config = self.config
        log.info(
            "started",
            mode=self.mode,
            cpu=config.cpu,
            host=config.host,
            port=bound_port,
            workers=self.state.pool_size,
            maxclients=config.maxclients,
            tls=self.ssl_context is not None,
            **fields,
        )

    # -- admission -----------------------------------------------------------------------------
    def refuse_for_maxclients(self, connections: int) -> bytes | None:
        """Redis's error to send before closing when ``connections`` already reach maxclients, else None."""
        if connections < self.config.maxclients:
            return None
        self.state.stats.rejected_connections += 1
        self._maxclients_log.note(maxclients=self.config.maxclients)
        return MAXCLIENTS_ERROR

    def refuse_for_protected_mode(self, peername: object) -> bytes | None:
        """Redis's ``-DENIED`` text for a non-loopback peer in protected mode (counted), else None."""
        refusal = security.protected_mode_refusal(self.config, peername)
        if refusal is not None:
            self.state.stats.rejected_connections += 1
        return refusal

    # -- shutdown ------------------------------------------------------------------------------
    def stop_services(self) -> None:
        """After the connections: stop the pool (its cpu timeout still applies while it waits), its policy, metrics."""
        if self.pool is not None:
            self.pool.shutdown()
        if self.cpu_jobs is not None:
            self.cpu_jobs.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped")


class SignalPolicy:
    """SIGINT/SIGTERM: the first starts a graceful shutdown (``on_first``), a second exits at once (status 1)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.on_first = on_first
        self.received = 0

    def __call__(self, signum: int, _frame: object = None) -> None:
        """Act first, then log: a log line that cannot be written (stdout gone with its reader) must not stop it."""
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            self.on_first()
            with contextlib.suppress(OSError):
                log.info("signal_received", signal=name, action="graceful shutdown")
        else:
            try:
                log.warning("signal_received_again", signal=name, action="exit now")
            finally:
                os._exit(1)
