"""Pub/sub commands: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, PUBLISH, PUBSUB, and RESET.

The tables and the fan-out live in :mod:`server.store.pubsub` (no I/O); these
handlers turn requests into hub calls and answer as Redis 7.0 does. A
(un)subscribe command answers one message per channel, a push (``>3``) in
RESP3 and an array in RESP2, so the handler encodes its own reply for its
client's protocol. The RESP2 subscribed-mode rule (only these commands, PING,
QUIT and RESET) is checked by the dispatcher (:data:`SUBSCRIBED_MODE_COMMANDS`).
"""

from __future__ import annotations

from collections.abc import Callable

from server.commands.auth import NO_AUTH_FLAGS
from server.commands.context import CommandContext
from server.commands.registry import CommandError, CommandSet
from server.protocol.reply import PushReply, RawReply, SimpleString, encode_for

#: The commands this module declares; server.commands.default_registry installs them.
COMMANDS = CommandSet()

#: What a RESP2 client may run while it has subscriptions (Redis's processCommand; SSUBSCRIBE and
#: SUNSUBSCRIBE are Redis Cluster's and not implemented here).
SUBSCRIBED_MODE_COMMANDS = frozenset(
    {"ping", "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe", "quit", "reset"}
)

_PUBSUB = {"group": "pubsub", "since": "2.0.0"}


def subscribed_mode_error(name: str) -> str:
    """Redis's refusal of any other command from a RESP2 client in subscribed mode (``name``: ``client|id``...)."""
    return (
        f"ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
        "are allowed in this context"
    )


def _confirmations(ctx: CommandContext, kind: bytes, replies: list[tuple[bytes | None, int]]) -> RawReply:
    """One ``[kind, channel, count]`` message per (un)subscribed channel, in the client's protocol."""
    resp = ctx.client.resp
    return RawReply(b"".join(encode_for(PushReply([kind, name, count]), resp) for name, count in replies))


def _leave(ctx: CommandContext, kind: bytes, names: list[bytes], leave: Callable[..., int]) -> object:
    """(P)UNSUBSCRIBE: leave each of ``names``; with none (and no subscription) Redis still confirms once."""
    client = ctx.client
    if not names:
        return _confirmations(ctx, kind, [(None, client.subscriptions)])
    return _confirmations(ctx, kind, [(name, leave(client, name)) for name in names])


def _require_push(ctx: CommandContext) -> None:
    if ctx.client.outlet is None:
        raise CommandError("ERR pub/sub is not available on this connection (its front end has no push outlet)")


@COMMANDS.inline("SUBSCRIBE", arity=-2, summary="Listen for messages published to the given channels.", **_PUBSUB)
def subscribe(ctx: CommandContext, args: list[bytes]) -> object:
    _require_push(ctx)
    hub = ctx.server.pubsub
    return _confirmations(ctx, b"subscribe", [(channel, hub.subscribe(ctx.client, channel)) for channel in args[1:]])


@COMMANDS.inline(
    "UNSUBSCRIBE", arity=-1, summary="Stop listening to the given channels (all without arguments).", **_PUBSUB
)
def unsubscribe(ctx: CommandContext, args: list[bytes]) -> object:
    return _leave(ctx, b"unsubscribe", args[1:] or list(ctx.client.channels or ()), ctx.server.pubsub.unsubscribe)


@COMMANDS.inline(
    "PSUBSCRIBE", arity=-2, summary="Listen for messages published to channels matching the patterns.", **_PUBSUB
)
def psubscribe(ctx: CommandContext, args: list[bytes]) -> object:
    _require_push(ctx)
    hub = ctx.server.pubsub
    return _confirmations(ctx, b"psubscribe", [(pattern, hub.psubscribe(ctx.client, pattern)) for pattern in args[1:]])


@COMMANDS.inline(
    "PUNSUBSCRIBE", arity=-1, summary="Stop listening to the given patterns (all without arguments).", **_PUBSUB
)
def punsubscribe(ctx: CommandContext, args: list[bytes]) -> object:
    return _leave(ctx, b"punsubscribe", args[1:] or list(ctx.client.patterns or ()), ctx.server.pubsub.punsubscribe)


@COMMANDS.inline("PUBLISH", arity=3, summary="Post a message to a channel; replies how many received it.", **_PUBSUB)
def publish(ctx: CommandContext, args: list[bytes]) -> object:
    return ctx.server.pubsub.publish(args[1], args[2])


_PUBSUB_HELP = [
    SimpleString(line)
    for line in (
        "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "CHANNELS [<pattern>]",
        "    Return the currently active channels matching a <pattern> (default: '*').",
        "NUMPAT",
        "    Return number of subscriptions to patterns.",
        "NUMSUB [<channel> ...]",
        "    Return the number of subscribers for the specified channels, excluding",
        "    pattern subscriptions(default: no channels).",
        "HELP",
        "    Prints this help.",
    )
]


@COMMANDS.inline(
    "PUBSUB",
    arity=-2,
    summary="Pub/sub introspection: CHANNELS [pattern], NUMSUB [channel ...], NUMPAT.",
    group="pubsub",
    since="2.8.0",
    subcommands=("channels", "numsub", "numpat", "help"),
)
def pubsub(ctx: CommandContext, args: list[bytes]) -> object:
    hub = ctx.server.pubsub
    sub = args[1].upper()
    if sub == b"CHANNELS":
        if len(args) > 3:  # Redis 7.0's own wording for this one
            raise CommandError(
                f"ERR unknown subcommand or wrong number of arguments for '{args[1].decode(errors='replace')}'. "
                "Try PUBSUB HELP."
            )
        return hub.active_channels(args[2] if len(args) == 3 else None)
    if sub == b"NUMSUB":
        reply: list[object] = []
        for channel in args[2:]:
            reply += [channel, hub.subscriber_count(channel)]
        return reply
    if sub in (b"NUMPAT", b"HELP"):
        if len(args) != 2:
            raise CommandError(f"ERR wrong number of arguments for 'pubsub|{sub.decode().lower()}' command")
        return hub.pattern_count if sub == b"NUMPAT" else _PUBSUB_HELP
    raise CommandError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try PUBSUB HELP.")


@COMMANDS.inline(
    "RESET",
    arity=1,
    summary="Reset the connection: leave pub/sub, back to RESP2, no name, logged out when a password is set.",
    group="connection",
    since="6.2.0",
    flags=NO_AUTH_FLAGS,
)
def reset(ctx: CommandContext, args: list[bytes]) -> object:
    client = ctx.client
    ctx.server.pubsub.drop(client)
    client.resp = 2
    client.name = b""
    client.authenticated = not ctx.server.config.requirepass
    return SimpleString("RESET")
