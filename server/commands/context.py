"""What an inline handler gets besides its arguments: the server and the calling client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.commands.registry import Registry
    from server.store.state import ClientState, ServerState


@dataclass(slots=True)
class CommandContext:
    """Passed to every inline handler. Created once per connection, not per request."""

    server: ServerState
    client: ClientState
    registry: Registry
