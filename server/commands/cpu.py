"""The built-in cpu commands: plain module-level functions of plain arguments.

They run in a worker process (``--cpu pool``) or on the front end
(``--cpu inline``). Each argument bound is a named constant, checked on the
front end before the work is shipped, and documented in the README.
"""

from __future__ import annotations

import hashlib
import math

from server.commands.registry import CommandSet, bounded_bytes, bounded_int

#: The commands this module declares; server.commands.default_registry installs them.
COMMANDS = CommandSet()

#: PRIMES n: largest n. The sieve below is a pure-Python loop (it holds the
#: GIL on purpose, that is the point of the command) and needs n bytes of
#: memory: 50 million is about 3 s of one core and 50 MB per request here
#: (5 million: about 0.3 s).
PRIMES_MAX_N = 50_000_000

#: FACTOR n: largest n. Trial division costs up to sqrt(n)/2 iterations:
#: 10**15 bounds the worst case (a large prime) to about 1.6e7 iterations,
#: a few seconds of one core.
FACTOR_MAX_N = 10**15

#: PBKDF2 iterations: hashlib's SHA-256 runs about 1-2 million iterations per
#: second per core, so 5 million bounds one request to a few seconds.
PBKDF2_MAX_ITERATIONS = 5_000_000

#: PBKDF2 password and salt length. Real passwords and salts are tens of bytes.
PBKDF2_MAX_INPUT_BYTES = 1024


@COMMANDS.cpu(
    "PRIMES",
    arity=2,
    argspec=(bounded_int("n", 0, PRIMES_MAX_N),),
    summary="Count the primes <= n (pure Python sieve: holds the GIL).",
    group="crossdock",
)
def count_primes(n: int) -> int:
    """The number of primes <= n, by a sieve of Eratosthenes written as plain Python loops."""
    if n < 2:
        return 0
    sieve = bytearray(b"\x01") * (n + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, math.isqrt(n) + 1):
        if sieve[i]:
            for multiple in range(i * i, n + 1, i):
                sieve[multiple] = 0
    return sum(sieve)


@COMMANDS.cpu(
    "FACTOR",
    arity=2,
    argspec=(bounded_int("n", 1, FACTOR_MAX_N),),
    summary="Prime factors of n, smallest first (pure Python trial division).",
    group="crossdock",
)
def prime_factors(n: int) -> list[int]:
    """The prime factors of n with multiplicity, ascending (``FACTOR 360`` -> 2 2 2 3 3 5)."""
    factors: list[int] = []
    while n % 2 == 0 and n > 1:
        factors.append(2)
        n //= 2
    divisor = 3
    while divisor * divisor <= n:
        while n % divisor == 0:
            factors.append(divisor)
            n //= divisor
        divisor += 2
    if n > 1:
        factors.append(n)
    return factors


@COMMANDS.cpu(
    "PBKDF2",
    arity=4,
    argspec=(
        bounded_bytes("password", PBKDF2_MAX_INPUT_BYTES),
        bounded_bytes("salt", PBKDF2_MAX_INPUT_BYTES),
        bounded_int("iterations", 1, PBKDF2_MAX_ITERATIONS),
    ),
    summary="PBKDF2-HMAC-SHA256 of password and salt, hex (hashlib: releases the GIL).",
    group="crossdock",
)
def pbkdf2_hex(password: bytes, salt: bytes, iterations: int) -> str:
    """Hex PBKDF2-HMAC-SHA256 key (32 bytes). hashlib drops the GIL, so threads scale on this one."""
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations).hex()
