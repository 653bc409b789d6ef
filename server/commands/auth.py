"""AUTH and the password check HELLO ... AUTH shares, as Redis 7 does them for ``requirepass``.

There is one user, ``default``, as in a Redis that only sets
``requirepass``: ``AUTH password`` and ``AUTH default password`` log in;
any other user name is ``WRONGPASS``, as it is for a user Redis does not
know. With no password configured, the default user is ``nopass``:
``AUTH default anything`` succeeds and ``AUTH anything`` gets Redis's
"called without any password configured" error.

Until a client has authenticated (:attr:`ClientState.authenticated` is
False only when a password is set), the dispatcher answers every command
not flagged ``no_auth`` (AUTH, HELLO, QUIT) with ``-NOAUTH`` and the request
parser applies Redis's pre-AUTH caps (10 arguments, 16 KiB each; see
:mod:`server.protocol.limits`). A failed AUTH does not undo an earlier
success, as in Redis.

The comparison is constant-time: both sides are hashed with SHA-256 and the
digests compared with :func:`hmac.compare_digest`, so neither the password's
content nor its length shows in the reply time (Redis compares SHA-256
digests with ``time_independent_strcmp`` for the same reason). The password
is compared as the bytes it was given as (``os.fsencode`` of the flag or
variable), so a non-UTF-8 password set in the environment still works.

Error handling: wrong credentials raise :class:`CommandError` with Redis's
``WRONGPASS`` text; nothing is logged per failure (Redis records failures
in ACL LOG, which crossdock does not have) so a password-guessing client
cannot flood the log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

from server.commands.context import CommandContext
from server.commands.registry import CommandError, CommandSet
from server.protocol.reply import OK

#: The commands this module declares; server.commands.default_registry installs them.
COMMANDS = CommandSet()

#: The one user name crossdock knows (Redis's user for ``requirepass``).
DEFAULT_USER: Final = b"default"

#: Redis 7's replies, word for word (server.c shared.noautherr, acl.c addAuthErrReply, acl.c authCommand,
#: networking.c helloCommand).
NOAUTH: Final = "NOAUTH Authentication required."
WRONGPASS: Final = "WRONGPASS invalid username-password pair or user is disabled."
NO_PASSWORD_CONFIGURED: Final = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
HELLO_NOAUTH: Final = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> "
    "option can be used to authenticate the client and select the RESP protocol version at the same time"
)

#: The flags Redis 7 gives AUTH, HELLO and QUIT (COMMAND INFO shows them); ``no_auth`` lets them run before AUTH.
NO_AUTH_FLAGS: Final = ("noscript", "loading", "stale", "fast", "no_auth", "allow_busy")


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def authenticate(ctx: CommandContext, username: bytes, password: bytes) -> None:
    """Log the client in as ``username`` with ``password``, or raise ``WRONGPASS``.

    With no password configured the default user takes any password (Redis's
    ``nopass``). Success marks the client authenticated; failure leaves it as
    it was.

    Error handling: raises :class:`CommandError` with Redis's ``WRONGPASS``
    text for an unknown user or a wrong password.
    """
    required = ctx.server.config.requirepass
    # Evaluate both comparisons every time so an unknown user costs the same as a wrong password.
    user_ok = hmac.compare_digest(_digest(username), _digest(DEFAULT_USER))
    password_ok = not required or hmac.compare_digest(_digest(password), _digest(os.fsencode(required)))
    if not (user_ok and password_ok):
        raise CommandError(WRONGPASS)
    ctx.client.authenticated = True


@COMMANDS.inline(
    "AUTH",
    arity=-2,
    summary="Authenticate to the server: AUTH [username] password.",
    group="connection",
    since="1.0.0",
    flags=NO_AUTH_FLAGS,
)
def auth(ctx: CommandContext, args: list[bytes]) -> object:
    if len(args) > 3:
        raise CommandError("ERR syntax error")
    if len(args) == 2:
        if not ctx.server.config.requirepass:
            raise CommandError(NO_PASSWORD_CONFIGURED)
        authenticate(ctx, DEFAULT_USER, args[1])
    else:
        authenticate(ctx, args[1], args[2])
    return OK
