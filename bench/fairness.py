"""Fair sharing of the loop (issue 15 item 5): how long others wait while clients stream pipelined requests.

For each server (crossdock async, crossdock threaded, redis-server, started
here on loopback, pinned to CPU 0; the clients run on CPU 1): ``--streamers``
clients, in generator processes of STREAMERS_PER_PROCESS asyncio clients each,
write pipelined ``ECHO`` requests as fast as the server takes them and discard
the replies. Meanwhile a probe opens a new connection every 50 ms and times its
first PING, and a held connection times a PING every 10 ms. Printed per server:
median and worst first-PING of new connections, worst probe PING, how long
until every streamer was connected (the kernel's handshake), accepted (the
server's INFO ``connected_clients`` counts it, polled by the held connection)
and had its first reply (its first turn of the loop), and how long the server
took to exit after SIGTERM. Bounded: ``--seconds`` per server, loopback only.

    .venv/bin/python bench/fairness.py --streamers 1 --seconds 5
    .venv/bin/python bench/fairness.py --streamers 500 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.serverinfo import InfoProbe
from loadtest.servers import RunningServer, pin_to, start_crossdock, start_redis

#: Requests per write of a streaming client: a pipeline deep enough that the server reads full buffers.
PIPELINE = 2000
#: Seconds a probe waits for its PONG before it counts the probe as lost.
PROBE_TIMEOUT = 10.0
#: Streaming clients per generator process. The streamers run in child processes on the clients' CPU, each
#: an asyncio loop: with one thread per streamer in this process (the first version of this script) the
#: clients' own GIL decided how fast 500 of them got connected, not the server.
STREAMERS_PER_PROCESS = 125
#: Each streamer's socket send buffer. Unbounded, Linux lets one grow to tcp_wmem's maximum (4 MiB here), and
#: 500 streamers ahead of any server push the kernel's TCP memory past tcp_mem's pressure threshold (1.5 GB
#: here, measured with /proc/net/sockstat): the kernel then prunes receive queues and drops segments, and a
#: new connection's first PING waits for TCP retransmissions (seconds) whatever the server does. A streamer
#: still writes as fast as the server reads; the bound only keeps the test about the server.
STREAMER_SEND_BUFFER = 256 * 1024
#: How often the server's connection count is read while streamers connect.
ACCEPT_POLL_SECONDS = 0.01
#: Seconds the streamers go on after the probes stop: SIGTERM reaches a server that is still being streamed at.
STREAM_PAST_SIGTERM = 3.0


async def _stream_one(port: int, stop_at: float, times: list[tuple[float, float | None]]) -> None:
    """One streaming client: write pipelines without waiting for replies, read and discard them."""
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAMER_SEND_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError:
        return
    connected = time.monotonic()
    payload = b"ECHO hello-fairness\r\n" * PIPELINE

    async def pump() -> None:
        with contextlib.suppress(OSError):
            while time.monotonic() < stop_at:
                writer.write(payload)
                await writer.drain()
                await asyncio.sleep(0)  # drain() returns at once while the socket takes data: let the others run

    sender = asyncio.create_task(pump())
    first: float | None = None
    with contextlib.suppress(OSError, TimeoutError):
        while (left := stop_at - time.monotonic()) > 0:
            data = await asyncio.wait_for(reader.read(1 << 20), timeout=left)
            if not data:
                break
            if first is None:
                first = time.monotonic()
    times.append((connected, first))
    sender.cancel()
    writer.transport.abort()


def _streamers(port: int, count: int, stop_at: float, results: Connection) -> None:
    """A generator process: ``count`` streaming clients until ``stop_at``; sends back (connected, first reply)."""
    times: list[tuple[float, float | None]] = []

    async def run() -> None:
        await asyncio.gather(*(_stream_one(port, stop_at, times) for _ in range(count)))

    asyncio.run(run())
    results.send(times)
    results.close()


def _first_ping(port: int) -> float | None:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(64) != b"+PONG\r\n":
                return None
    except OSError:
        return None
    return time.perf_counter() - started


def _watch_accepts(port: int, streamers: int, begin: float, stop_at: float, accepted: list[float]) -> None:
    """Poll the server's own count (INFO ``connected_clients``) on a connection of its own until all are in.

    Its own thread and connection, so the probes' waits do not delay the reading. The count includes this
    connection and the held probe's: all accepted is ``streamers + 2``.
    """
    probe = InfoProbe.open("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        while time.monotonic() < stop_at:
            if int(probe.info().get("connected_clients", 0)) >= streamers + 2:
                accepted.append(time.monotonic() - begin)
                return
            time.sleep(ACCEPT_POLL_SECONDS)
    finally:
        probe.close()


def measure(server: RunningServer, streamers: int, seconds: float) -> dict[str, object]:
    begin = time.monotonic()
    stop_at = begin + seconds
    context = multiprocessing.get_context("fork")  # no threads of ours yet; a child starts in milliseconds
    children = []
    for first in range(0, streamers, STREAMERS_PER_PROCESS):
        receiver, sender = context.Pipe(duplex=False)
        count = min(STREAMERS_PER_PROCESS, streamers - first)
        streaming_until = stop_at + STREAM_PAST_SIGTERM
        child = context.Process(target=_streamers, args=(server.port, count, streaming_until, sender), daemon=True)
        child.start()
        sender.close()
        children.append((child, receiver))
    held = socket.create_connection(("127.0.0.1", server.port), timeout=PROBE_TIMEOUT)
    accepted: list[float] = []
    counter = threading.Thread(target=_watch_accepts, args=(server.port, streamers, begin, stop_at, accepted))
    counter.start()
    firsts: list[float] = []
    probes: list[float] = []
    lost = 0
    next_new = time.monotonic()
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            held.sendall(b"PING\r\n")
            held.recv(64)
            probes.append(time.perf_counter() - t0)
        except OSError:
            lost += 1
        if time.monotonic() >= next_new:
            first_ping = _first_ping(server.port)
            if first_ping is None:
                lost += 1
            else:
                firsts.append(first_ping)
            next_new = time.monotonic() + 0.05
        time.sleep(0.01)
    held.close()
    counter.join()
    sigterm = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(60)
        exit_after: float | None = round(time.perf_counter() - sigterm, 3)
    except subprocess.TimeoutExpired:
        exit_after = None
    server.stop()
    times: list[tuple[float, float | None]] = []
    for child, receiver in children:
        with contextlib.suppress(EOFError, OSError):
            if receiver.poll(STREAM_PAST_SIGTERM + PROBE_TIMEOUT):
                times += receiver.recv()
        child.join(PROBE_TIMEOUT)
    served = sorted(first - begin for _connected, first in times if first is not None)
    connected = sorted(at - begin for at, _first in times)
    return {
        "server": server.name,
        "streamers": streamers,
        "connected": len(connected),
        "all_connected_after_s": round(connected[-1], 3) if len(connected) == streamers else None,
        "all_accepted_after_s": round(accepted[0], 3) if accepted else None,
        "first_reply": len(served),
        "all_first_replies_after_s": round(served[-1], 3) if len(served) == streamers else None,
        "new_conn_first_ping_ms_median": round(statistics.median(firsts) * 1000, 2) if firsts else None,
        "new_conn_first_ping_ms_max": round(max(firsts) * 1000, 2) if firsts else None,
        "probe_ping_ms_max": round(max(probes) * 1000, 2) if probes else None,
        "probes_lost": lost,
        "exit_after_sigterm_s": exit_after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streamers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--servers", default="async,threaded,redis")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        pin_to([1])
    for name in args.servers.split(","):
        server = start_redis(cpus=[0]) if name == "redis" else start_crossdock(name, "inline", 1, cpus=[0])
        print(measure(server, args.streamers, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
