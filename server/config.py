"""Server configuration: one frozen dataclass, filled from flags, CROSSDOCK_* variables and defaults.

Precedence is flag > environment variable > default. Every field has a
flag ``--some-name`` and a variable ``CROSSDOCK_SOME_NAME``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from server.memory import DEFAULT_MAXMEMORY_SAMPLES, MAXMEMORY_AUTO, POLICIES, parse_memory_size
from server.protocol import limits

ENV_PREFIX = "CROSSDOCK_"

#: Default port: Redis's 6379 with the first digit bumped, so both can run side by side.
DEFAULT_PORT = 7379

#: Seconds a graceful shutdown waits for in-flight requests before closing connections anyway.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0

#: Redis's slowlog-log-slower-than default is 10 ms: a command slower than this is logged once.
DEFAULT_SLOWLOG_THRESHOLD_MS = 10.0

#: Redis's maxclients default. The soft RLIMIT_NOFILE is raised to fit it at start-up (or it is lowered, with a
#: warning, to what the hard limit allows).
DEFAULT_MAXCLIENTS = 10_000

#: Seconds a client may take from the first byte of a request to its last (slowloris guard). Loopback and LAN
#: clients send a whole request, even a 16 MiB bulk, in well under a second; 10 s leaves room for slow links.
DEFAULT_REQUEST_TIMEOUT = 10.0

#: Unparsed bytes one client may make the server hold. Twice the largest bulk string, so one maximal request
#: plus the start of the next always fit (Redis's client-query-buffer-limit is 1 GiB; our bulk cap is lower).
DEFAULT_QUERY_BUFFER_LIMIT = 2 * limits.MAX_BULK_LENGTH

#: Reply bytes one client may have queued and unsent before it is disconnected (Redis's
#: client-output-buffer-limit; 32 MiB is Redis's hard limit for pubsub clients, its tightest class).
DEFAULT_OUTPUT_BUFFER_LIMIT = 32 * 1024 * 1024

#: Unsent reply bytes all clients together may make the server hold. Past it, a client holding more than
#: WRITE_BUFFER_HIGH_WATER (it is not keeping up) is disconnected when it asks for more, so 200 clients that do not
#: read cannot take 200 x --output-buffer-limit (6.4 GiB at the defaults). 512 MiB: sixteen clients at their own
#: cap, far above what clients that read ever leave queued, and a fraction of these 24 GiB machines.
DEFAULT_OUTPUT_BUDGET = 512 * 1024 * 1024

#: Seconds queued replies may wait for a client that does not read before it is closed.
DEFAULT_WRITE_TIMEOUT = 30.0

#: cpu requests waiting for a worker, server-wide, before new ones are shed with -BUSY. 64 per worker keeps every
#: worker fed through bursts while bounding the latency of the last one queued.
DEFAULT_CPU_QUEUE_PER_WORKER = 64

#: Seconds one cpu request may run in a worker before the client gets an error and the worker is replaced.
#: The largest allowed PRIMES (5e7) takes about 12 s on these machines; 30 s leaves room for a loaded machine.
DEFAULT_CPU_TIMEOUT = 30.0


def default_workers() -> int:
    """One worker per CPU this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Config:
    """Everything ``crossdock serve`` can be told. See the README's configuration table."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    mode: str = "async"
    cpu: str = "pool"
    workers: int = field(default_factory=default_workers)
    start_method: str = "forkserver"
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    slowlog_threshold_ms: float = DEFAULT_SLOWLOG_THRESHOLD_MS
    max_bulk_length: int = limits.MAX_BULK_LENGTH
    log_format: str = "auto"
    log_level: str = "info"
    modules: tuple[str, ...] = ()
    # -- limits (issue 5): 0 turns a timeout off -----------------------------------------------------------------
    maxclients: int = DEFAULT_MAXCLIENTS
    idle_timeout: float = 0.0
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    query_buffer_limit: int = DEFAULT_QUERY_BUFFER_LIMIT
    output_buffer_limit: int = DEFAULT_OUTPUT_BUFFER_LIMIT
    output_budget: int = DEFAULT_OUTPUT_BUDGET
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    cpu_queue_limit: int = 0
    cpu_timeout: float = DEFAULT_CPU_TIMEOUT
    # -- memory (issue 15): -1 = derived from the cgroup limit or RAM (server.memory), 0 = no bound --------------
    maxmemory: int = MAXMEMORY_AUTO
    maxmemory_policy: str = "noeviction"
    maxmemory_samples: int = DEFAULT_MAXMEMORY_SAMPLES
    # -- security (issue 5) --------------------------------------------------------------------------------------
    requirepass: str = ""
    protected_mode: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # -- observability and scale-out (issue 6) -------------------------------------------------------------------
    metrics_port: int = -1
    executor: str = "process"
    reuseport: int = 0

    @property
    def effective_cpu_queue_limit(self) -> int:
        """The cpu backlog bound: ``--cpu-queue-limit``, or 64 per worker when it is 0."""
        return self.cpu_queue_limit or DEFAULT_CPU_QUEUE_PER_WORKER * self.workers

    def __post_init__(self) -> None:
        if self.mode not in ("async", "threaded"):
            raise ValueError(f"mode must be async or threaded, not {self.mode!r}")
        if self.cpu not in ("pool", "inline"):
            raise ValueError(f"cpu must be pool or inline, not {self.cpu!r}")
        if self.start_method not in ("forkserver", "spawn"):
            raise ValueError("start-method must be forkserver or spawn (fork is unsafe with a running loop)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.shutdown_timeout < 0:
            raise ValueError("shutdown-timeout must be >= 0")
        if self.log_format not in ("auto", "json", "console"):
            raise ValueError("log-format must be auto, json or console")
        if self.maxclients < 1:
            raise ValueError("maxclients must be at least 1")
        for name in ("idle_timeout", "request_timeout", "write_timeout", "cpu_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0 (0 turns it off)")
        if self.query_buffer_limit < self.max_bulk_length:
            raise ValueError("query-buffer-limit must be at least max-bulk-length")
        if self.output_budget < 0:
            raise ValueError("output-budget must be >= 0 (0 turns it off)")
        if self.output_buffer_limit < 1 or self.cpu_queue_limit < 0:
            raise ValueError("output-buffer-limit must be positive and cpu-queue-limit >= 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls-cert and tls-key go together")
        if self.tls_ca and not self.tls_cert:
            raise ValueError("tls-ca needs tls-cert and tls-key")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError("metrics-port must be -1 (off), 0 (any free port) or 1..65535")
        if self.executor != "process" and not self.executor.startswith("dask://"):
            raise ValueError("executor must be process or dask://HOST:PORT")
        if self.reuseport < 0:
            raise ValueError("reuseport must be >= 0")
        if self.maxmemory < MAXMEMORY_AUTO:
            raise ValueError("maxmemory must be a size (64mb, 2gb), 0 for no bound, or -1 to derive it")
        if self.maxmemory_policy not in POLICIES:
            raise ValueError(f"maxmemory-policy must be one of {', '.join(POLICIES)}")
        if self.maxmemory_samples < 1:
            raise ValueError("maxmemory-samples must be at least 1")

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **changes)


_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("async", "threaded"),
    "cpu": ("pool", "inline"),
    "start_method": ("forkserver", "spawn"),
    "log_format": ("auto", "json", "console"),
    "log_level": ("debug", "info", "warning", "error"),
    "maxmemory_policy": POLICIES,
}

_HELP = {
    "host": "address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces)",
    "port": "TCP port (0 picks a free one; the startup log says which)",
    "mode": "front end: async (asyncio on uvloop) or threaded (thread per connection)",
    "cpu": "where cpu commands run: pool (worker processes) or inline (blocks the front end)",
    "workers": "worker processes in the pool (default: CPUs available)",
    "start_method": "how pool workers start: forkserver or spawn",
    "shutdown_timeout": "seconds to let in-flight requests finish on SIGINT/SIGTERM",
    "slowlog_threshold_ms": "log commands slower than this many milliseconds",
    "max_bulk_length": "largest bulk string a request may carry, in bytes",
    "log_format": "auto (console on a TTY, JSON lines otherwise), json or console",
    "log_level": "debug, info, warning or error",
    "modules": "comma-separated modules to import for extra commands",
    "maxclients": "most clients connected at once; the next gets -ERR max number of clients reached",
    "idle_timeout": "close a client idle this many seconds (Redis's timeout; 0 = never)",
    "request_timeout": "close a client that takes longer than this to send one whole request (0 = never)",
    "query_buffer_limit": "unparsed request bytes one client may make the server hold",
    "output_buffer_limit": "unsent reply bytes one client may have queued before it is disconnected",
    "output_budget": "unsent reply bytes all clients together may queue; past it, slow readers are cut (0 = none)",
    "write_timeout": "close a client whose queued replies have not drained for this many seconds (0 = never)",
    "cpu_queue_limit": "cpu requests waiting for a worker before new ones get -BUSY (0 = 64 per worker)",
    "cpu_timeout": "seconds a cpu request may run; then an error reply and the worker is replaced (0 = never)",
    "maxmemory": "bound on the memory held for clients, in bytes or with Redis's units (64mb, 2gb); 0 = none; "
    "default: half the cgroup limit or RAM",
    "maxmemory_policy": "what happens at maxmemory: noeviction (growing writes get -OOM) or an eviction policy",
    "maxmemory_samples": "keys sampled per eviction (Redis's default 5)",
    "requirepass": "password clients must AUTH with (empty = no password)",
    "protected_mode": "with no password and a non-loopback bind, refuse non-loopback clients (yes/no)",
    "tls_cert": "PEM certificate: serve TLS instead of plain TCP (with --tls-key)",
    "tls_key": "PEM private key for --tls-cert",
    "tls_ca": "PEM CA bundle: require and verify client certificates",
    "metrics_port": "serve Prometheus metrics on this port (-1 = off, 0 = any free port)",
    "executor": "cpu executor: process (local pool) or dask://HOST:PORT (a Dask cluster)",
    "reuseport": "start N front-end processes sharing the port with SO_REUSEPORT (0 = one process)",
}


_TRUE_WORDS = ("1", "yes", "true", "on")
_FALSE_WORDS = ("0", "no", "false", "off")


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Config field; defaults are left as None so env and dataclass defaults apply."""
    for item in fields(Config):
        flag = "--" + item.name.replace("_", "-")
        help_text = f"{_HELP.get(item.name, '')} [env {_env_name(item.name)}]"
        kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": item.name}
        if item.name in _CHOICES:
            kwargs["choices"] = _CHOICES[item.name]
        parser.add_argument(flag, **kwargs)


def _convert(name: str, raw: Any) -> Any:
    default = next(f for f in fields(Config) if f.name == name)
    if name == "modules":
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return tuple(raw)
    sample = default.default_factory() if callable(default.default_factory) else default.default
    if isinstance(sample, bool):
        word = str(raw).lower()
        if word not in _TRUE_WORDS + _FALSE_WORDS:
            raise ValueError(word)
        return word in _TRUE_WORDS
    if name == "maxmemory":
        text = str(raw).strip()
        return MAXMEMORY_AUTO if text == str(MAXMEMORY_AUTO) else parse_memory_size(text)
    if isinstance(sample, int):
        return int(raw)
    if isinstance(sample, float):
        return float(raw)
    return str(raw)


def load_config(namespace: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed flags, then the environment, then the defaults.

    Error handling: a value that does not convert or validate raises
    :class:`ValueError` naming the setting; the CLI prints it and exits 2.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in fields(Config):
        raw = getattr(namespace, item.name, None) if namespace is not None else None
        source = "--" + item.name.replace("_", "-")
        if raw is None and _env_name(item.name) in environ:
            raw = environ[_env_name(item.name)]
            source = _env_name(item.name)
        if raw is None:
            continue
        try:
            values[item.name] = _convert(item.name, raw)
        except ValueError:
            raise ValueError(f"{source}: cannot use {raw!r}") from None
    return Config(**values)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse ``serve`` flags alone (used by tests and embedders)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(list(argv)), environ)
