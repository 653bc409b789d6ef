"""One cpu request as the cpu package receives it: the function, its converted arguments, and its name.

The dispatcher builds it (server.commands) and the cpu-job policy runs it
(server.cpu.jobs); defined here, in the lower layer, so the cpu package never
imports the commands above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RunCpu:
    """Run ``func(*args)`` on the cpu executor (or inline with ``--cpu inline``); its result is the reply."""

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    #: The request as the client sent it, for the slow log (never shipped to the worker).
    argv: list[bytes] = field(default_factory=list)
