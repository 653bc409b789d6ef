"""A cpu command with a large argument, for bench/bigarg.py (``--modules bench.bigarg_commands``).

``SHA256 data``: the hex SHA-256 of ``data``. The work is proportional to the
argument (hashlib, about a millisecond per MiB here, GIL released), so the
cost of moving the argument to a worker (pickling, pipe copies) can be set
against the work it buys.
"""

from __future__ import annotations

import hashlib

from server.commands import bounded_bytes, cpu_command

#: Largest argument: 64 MiB, well past the 1 MiB the measurement uses and far below the server's bulk bound.
SHA256_MAX_BYTES = 64 * 1024 * 1024


@cpu_command("SHA256", arity=2, argspec=(bounded_bytes("data", SHA256_MAX_BYTES),), summary="Hex SHA-256 of data.")
def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()
