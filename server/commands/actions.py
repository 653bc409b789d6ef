"""Instructions a command hands to its front end instead of a reply (the sans-IO way to wait).

Handlers never block and never touch a socket. When a command must wait
(SLEEP) or run elsewhere (a cpu command), the dispatcher returns one of
these and each front end carries it out in its own way: the asyncio front end
with ``loop.call_later`` / ``loop.run_in_executor``, the threaded one with
``time.sleep`` / a blocking call, always keeping replies in request order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` without blocking other clients, then answer ``reply``."""

    seconds: float
    reply: object


@dataclass(frozen=True, slots=True)
class RunCpu:
    """Run ``func(*args)`` on the cpu executor (or inline with ``--cpu inline``); its result is the reply."""

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    #: The request as the client sent it, for the slow log (never shipped to the worker).
    argv: list[bytes] = field(default_factory=list)


Action = Sleep | RunCpu
