"""Redis's integer rules for arguments and stored values, shared by the commands and the keyspace."""

from __future__ import annotations

from server.errors import CommandError
from server.protocol import string2ll

#: Redis's reply for an argument (or a stored value) that is not a 64-bit integer.
NOT_AN_INTEGER = "ERR value is not an integer or out of range"


def parse_int(raw: bytes) -> int:
    """Parse a signed 64-bit integer the way Redis's string2ll does (no spaces, no '+', no leading zeros).

    Error handling: anything else raises :class:`CommandError` with Redis's
    ``ERR value is not an integer or out of range``.
    """
    value = string2ll(raw)
    if value is None:
        raise CommandError(NOT_AN_INTEGER)
    return value
