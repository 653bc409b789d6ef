"""Front-end limits shared by both servers, each with the reason for its number.

Protocol limits (line, bulk and multibulk sizes) live in
:mod:`server.protocol.limits`; these bound what one connection may make the
server hold or do at once.
"""

#: Bytes asked of the socket per read. 64 KiB holds hundreds of pipelined
#: small requests, so one read + one parse pass + one write serve them all,
#: while a single read stays well inside the kernel's default socket buffer.
READ_CHUNK_SIZE = 64 * 1024

#: Requests from one connection whose replies are not yet written (waiting on
#: a cpu job or a SLEEP ahead of them). Past this the front end stops reading
#: that connection until replies go out: a client that pipelines thousands of
#: PRIMES cannot queue unbounded work or memory. 1024 is far above what a
#: well-behaved pipelining client keeps in flight (redis-benchmark -P 16).
MAX_PENDING_REPLIES_PER_CLIENT = 1024

#: Bytes of replies queued in the kernel-side transport buffer before the
#: front end stops reading and waits for the client to catch up (drain). A
#: drain per reply costs a syscall-free but scheduler-visible await; one per
#: 256 KiB keeps pipelined clients fast and slow readers bounded.
WRITE_BUFFER_HIGH_WATER = 256 * 1024

#: Seconds between active expiry sweeps of the keyspace (Redis runs its cron
#: at 10 Hz too).
EXPIRE_SWEEP_INTERVAL = 0.1

#: Listen backlog: connections the kernel queues before accept. Load tests
#: open thousands of sockets at once; 4096 is Linux's default somaxconn
#: (the kernel clips a larger value to it), Redis's own default is 511.
LISTEN_BACKLOG = 4096
