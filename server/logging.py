"""structlog set-up: JSON lines when stdout is not a TTY, the console renderer when it is.

Called once in the server process and again in every pool worker (a worker
is a fresh interpreter under forkserver/spawn and has no configuration of
its own). Per-connection context (client id, peer) is bound once per
connection with contextvars, so log lines from inside a connection carry it
without any per-request cost.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(log_format: str = "auto", level: str = "info", *, process_role: str = "server") -> None:
    """Configure structlog (and the stdlib root logger it forwards nothing to) for this process.

    ``log_format`` is ``auto``, ``json`` or ``console``; ``auto`` picks the
    console renderer only when stdout is a TTY.
    """
    use_console = log_format == "console" or (log_format == "auto" and sys.stdout.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if process_role != "server":
        processors.append(_add_role(process_role))
    if not use_console:
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=_LossyStream(sys.stdout)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=_LEVELS.get(level, logging.INFO), stream=sys.stderr)


class _LossyStream:
    """stdout for log lines, dropping what cannot be written (its reader gone: EPIPE, a full disk).

    A log line is never worth more than the server: with a plain stream a
    closed pipe made every log call raise, so a SIGTERM handler that logs
    before acting could never stop the server.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def _add_role(role: str) -> structlog.types.Processor:
    def add(_logger: object, _name: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
        event_dict.setdefault("role", role)
        return event_dict

    return add
