"""Front-end limits shared by both servers, each with the reason for its number.

Protocol limits (line, bulk and multibulk sizes) live in
:mod:`server.protocol.limits`; these bound what one connection may make the
server hold or do at once.
"""

#: Bytes asked of the socket per read. 64 KiB holds hundreds of pipelined
#: small requests, so one read + one parse pass + one write serve them all,
#: while a single read stays well inside the kernel's default socket buffer.
READ_CHUNK_SIZE = 64 * 1024

#: Bytes of one connection's input served per event-loop pass. A bigger read is
#: served in slices of this size, one per pass, with the connection's reading
#: paused meanwhile, so accepting, signals, timers and every other client run
#: between slices: one client streaming pipelined requests cannot hold the loop
#: for seconds. 16 KiB is what Redis reads per event (PROTO_IOBUF_LEN): a few
#: hundred small requests, about a millisecond of work.
FAIR_SHARE_BYTES = 16 * 1024

#: Bytes of input served per event-loop pass across all connections once
#: clients stream (server.connection.fairness): 16 slices of FAIR_SHARE_BYTES,
#: a few milliseconds of parsing and replying in Python. Without a bound on
#: the pass, 500 streaming clients made one pass 500 slices long (about half a
#: second), and a new connection waited that long to be accepted, then as
#: long again for its first reply. With it a pass ends within milliseconds
#: however many clients stream; each streamer still gets its slice in turn.
PASS_BUDGET_BYTES = 16 * FAIR_SHARE_BYTES

#: A read at most this long is served at once even when the pass's budget is
#: spent: a few requests of an interactive client (a PING, a GET) never wait
#: behind the streamers' queue, and 1,000 such reads in one pass are still
#: only 4 MB of work in the worst case.
INTERACTIVE_READ_BYTES = 4 * 1024

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

#: Connections the asyncio front end takes from the listen queue at once
#: when uvloop hands it one. uvloop (libuv) accepts one connection per loop
#: iteration: with passes of milliseconds, 500 clients connecting together
#: waited seconds to be accepted. Redis accepts up to 1000 per event
#: (MAX_ACCEPTS_PER_CALL); so do we.
MAX_ACCEPTS_PER_EVENT = 1000

#: Seconds the asyncio front end waits, past --shutdown-timeout, for the
#: connections it aborted to report closed and for its listener to close,
#: all together: the process exits within the timeout plus about this.
SHUTDOWN_ABORT_GRACE = 1.0

# -- connection limits and descriptor exhaustion (issue 5) ----------------------------------------------------------

#: Descriptors kept free beyond one per client when the open-file limit is sized for maxclients. 32 is Redis's
#: CONFIG_MIN_RESERVED_FDS; here it covers what the server opens for itself (std streams, the event loop's epoll,
#: eventfd and io_uring, the listening socket, the process pool's queues and the forkserver: 24 measured with
#: one worker, see docs/robustness.md).
RESERVED_FDS = 32

#: Further descriptors the process pool holds per worker (its result pipe and sentinel; measured: 26 fds with
#: one worker, 32 with four).
FDS_PER_POOL_WORKER = 2

#: Seconds the threaded accept loop waits after accept() fails for lack of descriptors or memory before trying
#: again: Trio's figure. Short enough that a freed descriptor is used within a blink, long enough that the
#: loop costs nothing while the table stays full.
ACCEPT_RETRY_DELAY = 0.1

#: Seconds between two log lines about the same resource fault (descriptors exhausted, maxclients reached):
#: a fault that lasts an hour writes at most 360 lines, not one per failed accept.
RESOURCE_LOG_INTERVAL = 10.0

#: Longest pause between two passes of the clients cron (idle, request and write deadlines). The actual
#: interval is a quarter of the smallest timeout in force, capped here, so a deadline is enforced at most 25 %
#: late and a server with 10,000 clients walks its client table at most once a second.
CLIENTS_CRON_MAX_INTERVAL = 1.0

#: Shortest pause between two passes of the clients cron, whatever the timeouts (sub-second timeouts are for
#: tests; the walk over every client must not become a busy loop).
CLIENTS_CRON_MIN_INTERVAL = 0.05

# -- pub/sub (issue 13) ---------------------------------------------------------------------------------------------

#: Redis's default ``client-output-buffer-limit pubsub 32mb 8mb 60``: a subscriber whose unsent output (held by
#: the server plus the transport's buffer) passes the hard limit is cut off at once; one that stays above the
#: soft limit for the soft period is cut off too. Redis's "mb" is MiB. A subscriber that does not read is dropped
#: without slowing the publisher or the other subscribers: a PUBLISH only ever appends to its buffer.
PUBSUB_OUTPUT_HARD_LIMIT = 32 * 1024 * 1024
PUBSUB_OUTPUT_SOFT_LIMIT = 8 * 1024 * 1024
PUBSUB_OUTPUT_SOFT_SECONDS = 60.0
