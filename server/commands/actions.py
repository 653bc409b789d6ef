"""Instructions a command hands to its front end instead of a reply (the sans-IO way to wait).

Handlers never block and never touch a socket. When a command must wait
(SLEEP) or run elsewhere (a cpu command), the dispatcher returns one of
these and each front end carries it out in its own way: the asyncio front end
with ``loop.call_later`` / ``loop.run_in_executor``, the threaded one with
``time.sleep`` / a blocking call, always keeping replies in request order.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.cpu.call import RunCpu


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` without blocking other clients, then answer ``reply``."""

    seconds: float
    reply: object


Action = Sleep | RunCpu
