"""The pub/sub hub: channels and patterns -> subscribers, and the messages a PUBLISH sends them. No I/O.

A subscriber is a :class:`~server.store.state.ClientState` (any object with
the :class:`Subscriber` attributes); the hub keeps
its subscriptions on it (``channels``, ``patterns``, ``subscriptions``) so
CLIENT LIST and the RESP2 subscribed-mode check read them without asking
the hub. Delivery goes through one outlet, ``client.outlet.push(data)``, set by
the connection's driver: the hub hands it the message already encoded in that
client's protocol (RESP2 array or RESP3 push), each encoding made once per
PUBLISH, so a message to N subscribers costs N hook calls and no task.

Thread safety: one lock guards the tables (the threaded front end
subscribes and publishes from many threads). Hooks are called after the lock
is released: a hook may close its connection, which unsubscribes it.

Patterns are Redis's glob (``stringmatchlen``): ``*``, ``?``, ``[abc]``,
``[^a-z]``, ``\\x``; translated to a regular expression once per pattern.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from server.protocol.reply import PushReply, encode_reply, encode_reply3


class Outlet(Protocol):
    """Where a connection's driver takes a pushed message: already-encoded bytes, sent on that connection.

    The driver's own connection object (the asyncio core, the threaded socket transport), so a client
    carries one reference and no bound method.
    """

    def push(self, data: bytes) -> None: ...


class Subscriber(Protocol):
    """What the hub needs of a client (``server.store.state.ClientState`` has it); the hub fills the last three."""

    id: int
    #: The client's protocol (2 or 3): which encoding of a message it gets.
    resp: int
    #: The driver's delivery outlet, or None where the driver has none.
    outlet: Outlet | None
    #: Subscribed channels and patterns, in subscription order (dicts used as ordered sets); None until the
    #: first subscription, so a client that never subscribes carries no dict.
    channels: dict[bytes, None] | None
    patterns: dict[bytes, None] | None
    #: len(channels) + len(patterns): the RESP2 subscribed-mode test reads this one field.
    subscriptions: int


ClientState = Subscriber

#: Compiled patterns kept for PUBLISH and PUBSUB CHANNELS. Clients reuse a handful of patterns; the cap keeps
#: a client cycling through distinct ones (each PSUBSCRIBE'd pattern is also held by the hub) from growing it.
MAX_CACHED_PATTERNS = 4096

_MESSAGE = b"message"
_PMESSAGE = b"pmessage"


@dataclass
class PubSubStats:
    """Counters INFO (stats) and the Prometheus endpoint report."""

    #: PUBLISH commands run.
    messages_published: int = 0
    #: Messages handed to subscribers' connections (one PUBLISH to N subscribers counts N).
    messages_delivered: int = 0


class PubSubHub:
    """Channel and pattern subscriptions of every client, and fan-out of published messages."""

    def __init__(self) -> None:
        #: channel -> subscribers by client id (insertion-ordered, as PUBSUB NUMSUB counts them).
        self.channels: dict[bytes, dict[int, ClientState]] = {}
        #: pattern -> subscribers by client id.
        self.patterns: dict[bytes, dict[int, ClientState]] = {}
        self.stats = PubSubStats()
        self._lock = threading.Lock()
        self._compiled: dict[bytes, re.Pattern[bytes]] = {}

    # -- subscriptions -----------------------------------------------------------------------
    def subscribe(self, client: ClientState, channel: bytes) -> int:
        """Add ``client`` to ``channel`` (a no-op if already there); return its subscription count."""
        with self._lock:
            if client.channels is None:
                client.channels = {}
            if channel not in client.channels:
                client.channels[channel] = None
                self.channels.setdefault(channel, {})[client.id] = client
            return _recount(client)

    def unsubscribe(self, client: ClientState, channel: bytes) -> int:
        """Remove ``client`` from ``channel`` (a no-op if not there); return its subscription count."""
        with self._lock:
            if client.channels is not None and client.channels.pop(channel, 0) is None:
                _discard(self.channels, channel, client.id)
            return _recount(client)

    def psubscribe(self, client: ClientState, pattern: bytes) -> int:
        """Add ``client`` to ``pattern``; return its subscription count."""
        with self._lock:
            if client.patterns is None:
                client.patterns = {}
            if pattern not in client.patterns:
                client.patterns[pattern] = None
                self.patterns.setdefault(pattern, {})[client.id] = client
            return _recount(client)

    def punsubscribe(self, client: ClientState, pattern: bytes) -> int:
        """Remove ``client`` from ``pattern``; return its subscription count."""
        with self._lock:
            if client.patterns is not None and client.patterns.pop(pattern, 0) is None:
                _discard(self.patterns, pattern, client.id)
            return _recount(client)

    def drop(self, client: ClientState) -> None:
        """The client is gone (or RESET): forget all its subscriptions."""
        if not client.subscriptions:
            return
        with self._lock:
            for channel in client.channels or ():
                _discard(self.channels, channel, client.id)
            for pattern in client.patterns or ():
                _discard(self.patterns, pattern, client.id)
            client.channels = client.patterns = None
            client.subscriptions = 0

    # -- publishing --------------------------------------------------------------------------
    def publish(self, channel: bytes, message: bytes) -> int:
        """Deliver ``message`` to the channel's subscribers and the matching patterns'; return how many got it.

        A client subscribed to the channel and to a matching pattern gets it
        once per subscription, as in Redis. A client without an outlet (a
        connection whose driver has none) is counted but sent nothing.
        """
        deliveries: list[tuple[ClientState, bytes]] = []
        with self._lock:
            self.stats.messages_published += 1
            subscribers = self.channels.get(channel)
            if subscribers:
                payload = [_MESSAGE, channel, message]
                deliveries += _encoded_for(subscribers.values(), payload)
            for pattern, matching in self.patterns.items():
                if self._matches(pattern, channel):
                    deliveries += _encoded_for(matching.values(), [_PMESSAGE, pattern, channel, message])
            self.stats.messages_delivered += len(deliveries)
        for client, data in deliveries:
            outlet = client.outlet
            if outlet is not None:
                outlet.push(data)
        return len(deliveries)

    # -- introspection (PUBSUB, INFO) --------------------------------------------------------
    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: zero the counters (in place: INFO and the metrics hold this object)."""
        self.stats.messages_published = self.stats.messages_delivered = 0

    def active_channels(self, pattern: bytes | None = None) -> list[bytes]:
        """Channels with at least one subscriber, those matching ``pattern`` if given (PUBSUB CHANNELS)."""
        with self._lock:
            names = list(self.channels)
            return [name for name in names if pattern is None or self._matches(pattern, name)]

    def subscriber_count(self, channel: bytes) -> int:
        """Subscribers of ``channel``, not counting pattern subscriptions (PUBSUB NUMSUB)."""
        return len(self.channels.get(channel, ()))

    @property
    def pattern_count(self) -> int:
        """Patterns with at least one subscriber (PUBSUB NUMPAT, INFO pubsub_patterns)."""
        return len(self.patterns)

    @property
    def channel_count(self) -> int:
        """Channels with at least one subscriber (INFO pubsub_channels)."""
        return len(self.channels)

    def _matches(self, pattern: bytes, name: bytes) -> bool:
        compiled = self._compiled.get(pattern)
        if compiled is None:
            compiled = re.compile(glob_to_regex(pattern), re.DOTALL)
            if len(self._compiled) >= MAX_CACHED_PATTERNS:
                self._compiled.clear()
            self._compiled[pattern] = compiled
        return compiled.fullmatch(name) is not None


def _recount(client: ClientState) -> int:
    client.subscriptions = count = len(client.channels or ()) + len(client.patterns or ())
    return count


def _discard(table: dict[bytes, dict[int, ClientState]], name: bytes, client_id: int) -> None:
    members = table.get(name)
    if members is not None:
        members.pop(client_id, None)
        if not members:
            del table[name]


def _encoded_for(clients: Iterable[ClientState], payload: list[bytes]) -> list[tuple[ClientState, bytes]]:
    """Each client with the message in its protocol; each encoding made at most once."""
    resp2 = resp3 = b""
    out = []
    for client in clients:
        if client.resp == 2:
            resp2 = resp2 or encode_reply(payload)
            out.append((client, resp2))
        else:
            resp3 = resp3 or encode_reply3(PushReply(payload))
            out.append((client, resp3))
    return out


def glob_to_regex(pattern: bytes) -> bytes:
    """Redis's glob (``stringmatchlen``) as a regular expression matching the whole name.

    ``*`` any run, ``?`` one byte, ``[...]`` a class (``^`` negates, ``a-z``
    ranges, ``\\`` escapes), ``\\x`` a literal x. An unclosed ``[`` takes the
    rest of the pattern as its class, as Redis does.
    """
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        char = pattern[i : i + 1]
        if char == b"*":
            out.append(b".*")
        elif char == b"?":
            out.append(b".")
        elif char == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif char == b"[":
            i += 1
            negate = pattern[i : i + 1] == b"^"
            if negate:
                i += 1
            members = []
            while i < n and pattern[i : i + 1] != b"]":
                if pattern[i : i + 1] == b"\\" and i + 1 < n:
                    i += 1
                    members.append(re.escape(pattern[i : i + 1]))
                elif i + 2 < n and pattern[i + 1 : i + 2] == b"-" and pattern[i + 2 : i + 3] != b"]":
                    low, high = sorted((pattern[i], pattern[i + 2]))  # Redis accepts z-a as a-z
                    members.append(re.escape(bytes([low])) + b"-" + re.escape(bytes([high])))
                    i += 2
                else:
                    members.append(re.escape(pattern[i : i + 1]))
                i += 1
            body = b"".join(members)
            if not body:
                out.append(b"(?!)" if not negate else b".")  # [] matches nothing, [^] anything
            else:
                out.append(b"[" + (b"^" if negate else b"") + body + b"]")
        else:
            out.append(re.escape(char))
        i += 1
    return b"".join(out)
