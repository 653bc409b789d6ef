"""Protocol limits, each a named constant with the reason for its number.

The defaults follow Redis (src/server.h) where Redis has one, so the same
client mistakes get the same answer from crossdock and from redis-server.
"""

#: Longest inline command line, and longest ``*N``/``$N`` header line, before
#: the request is refused. Redis: PROTO_INLINE_MAX_SIZE = 64 KiB; a person
#: typing into netcat never gets near it, a client that never sends ``\n``
#: is cut off before it can hold much memory.
MAX_INLINE_SIZE = 64 * 1024

#: Most elements a multibulk request may declare. Redis accepts up to INT_MAX
#: but allocates lazily; crossdock allocates nothing up front either, and no
#: built-in command takes more than a few arguments, so 1 Mi elements (Redis's
#: own cap on argv preallocation) bounds a hostile ``*2147483647`` header.
MAX_MULTIBULK_LENGTH = 1024 * 1024

#: Largest bulk string a request may carry. Redis's proto-max-bulk-len is
#: 512 MiB; a Python server holding a 512 MiB ``bytes`` per client would be
#: an easy memory exhaustion, and no command here needs more than a few KiB,
#: so the default is 16 MiB. Servers may pass a different value to the parser.
MAX_BULK_LENGTH = 16 * 1024 * 1024

#: Before AUTH succeeds Redis caps a multibulk at 10 elements and a bulk at
#: 16 KiB, so an unauthenticated peer cannot make the server buffer much.
UNAUTHENTICATED_MAX_MULTIBULK_LENGTH = 10
UNAUTHENTICATED_MAX_BULK_LENGTH = 16 * 1024
