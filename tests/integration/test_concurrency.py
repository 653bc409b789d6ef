"""What the concurrency models do, shown by ordering rather than timing.

* async+pool: a PING on another connection is answered while a long PRIMES runs in a worker.
* async+inline: the PRIMES blocks the loop, so its reply goes out before the other client's PONG.
* threads: each connection has its own thread, so the PING is answered first there too.
* The keyspace counts exactly under many concurrent clients in both front ends.
"""

from __future__ import annotations

import selectors
import threading
import time
import uuid

from server.protocol import SimpleString
from tests.support import RespSocket, ServerProcess

#: Big enough that the sieve runs for seconds (pure Python), so "answered while it runs" has a wide margin.
LONG_PRIMES = 20_000_000
PRIMES_20M = 1_270_607

#: Time given to the server to pick the PRIMES request up before the probe PING is sent. The assertions
#: do not depend on it being short; a longer pause only makes the ordering more certain.
PICKUP_PAUSE = 0.2


def first_readable(sockets: dict[str, RespSocket], timeout: float = 60.0) -> str:
    """The name of the socket on which a reply arrives first."""
    with selectors.DefaultSelector() as selector:
        for name, conn in sockets.items():
            selector.register(conn.sock, selectors.EVENT_READ, name)
        events = selector.select(timeout)
        assert events, "no reply within the time bound"
        return str(events[0][0].data)


def test_ping_is_answered_while_primes_runs_except_on_async_inline(server: ServerProcess) -> None:
    with server.connect() as worker, server.connect() as probe:
        assert probe.call("PING") == SimpleString("PONG")
        worker.send("PRIMES", LONG_PRIMES)
        time.sleep(PICKUP_PAUSE)
        probe.send("PING")
        first = first_readable({"worker": worker, "probe": probe})
        if (server.mode, server.cpu) == ("async", "inline"):
            # The anti-pattern: the loop was busy in the sieve, every other client waited.
            assert first == "worker"
        else:
            assert first == "probe"
        assert probe.read_reply() == SimpleString("PONG")
        assert worker.read_reply() == PRIMES_20M


def test_incr_from_many_concurrent_clients_counts_exactly(server: ServerProcess) -> None:
    key = f"counter:{uuid.uuid4().hex}"
    clients, per_client = 40, 250
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            with server.connect() as conn:
                for _ in range(per_client):
                    conn.send("INCR", key)
                    assert isinstance(conn.read_reply(), int)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    with server.connect() as conn:
        assert conn.call("GET", key) == str(clients * per_client).encode()


def test_pipelined_cpu_requests_keep_their_order(front_end: ServerProcess) -> None:
    with front_end.connect() as conn:
        sizes = [3_000_000, 10, 1_000_000, 100, 2]
        from server.protocol import encode_command

        conn.send_raw(b"".join(encode_command("PRIMES", n) for n in sizes) + encode_command("PING"))
        assert [conn.read_reply() for _ in sizes] == [216_816, 4, 78_498, 25, 1]
        assert conn.read_reply() == SimpleString("PONG")
