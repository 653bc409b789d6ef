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

from server.protocol import limits

ENV_PREFIX = "CROSSDOCK_"

#: Default port: Redis's 6379 with the first digit bumped, so both can run side by side.
DEFAULT_PORT = 7379

#: Seconds a graceful shutdown waits for in-flight requests before closing connections anyway.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0

#: Redis's slowlog-log-slower-than default is 10 ms: a command slower than this is logged once.
DEFAULT_SLOWLOG_THRESHOLD_MS = 10.0


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

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **changes)


_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("async", "threaded"),
    "cpu": ("pool", "inline"),
    "start_method": ("forkserver", "spawn"),
    "log_format": ("auto", "json", "console"),
    "log_level": ("debug", "info", "warning", "error"),
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
}


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
        return str(raw).lower() in ("1", "yes", "true", "on")
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
