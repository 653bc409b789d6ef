"""Fair sharing of the loop (issue 15 item 5): how long others wait while clients stream pipelined requests.

For each server (crossdock async, crossdock threaded, redis-server, started
here on loopback, pinned to CPU 0; the clients run on CPU 1): ``--streamers``
clients each write pipelined ``ECHO`` requests as fast as the server takes them
(a reader thread each discards the replies). Meanwhile a probe opens a new
connection every 50 ms and times its first PING, and a held connection times
a PING every 10 ms. Printed per server: median and worst first-PING of new
connections, worst probe PING, connections accepted, and how long the server
took to exit after SIGTERM. Bounded: ``--seconds`` per server, loopback only.

    .venv/bin/python bench/fairness.py --streamers 1 --seconds 5
    .venv/bin/python bench/fairness.py --streamers 500 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.servers import RunningServer, pin_to, start_crossdock, start_redis  # noqa: E402

#: Requests per write of a streaming client: a pipeline deep enough that the server reads full buffers.
PIPELINE = 2000
#: Seconds a probe waits for its PONG before it counts the probe as lost.
PROBE_TIMEOUT = 10.0


def _stream(port: int, stop: threading.Event, started: list[int]) -> None:
    """One streaming client: write pipelines without waiting; a thread discards the replies."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT)
    except OSError:
        return
    started.append(1)
    payload = b"ECHO hello-fairness\r\n" * PIPELINE

    def drain() -> None:
        try:
            while not stop.is_set() and sock.recv(1 << 20):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        while not stop.is_set():
            sock.sendall(payload)
    except OSError:
        pass
    finally:
        sock.close()


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


def measure(server: RunningServer, streamers: int, seconds: float) -> dict[str, object]:
    stop = threading.Event()
    started: list[int] = []
    threads = [threading.Thread(target=_stream, args=(server.port, stop, started), daemon=True) for _ in range(streamers)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    all_accepted_after = None
    held = socket.create_connection(("127.0.0.1", server.port), timeout=PROBE_TIMEOUT)
    firsts: list[float] = []
    probes: list[float] = []
    lost = 0
    deadline = time.perf_counter() + seconds
    next_new = time.perf_counter()
    while time.perf_counter() < deadline:
        if all_accepted_after is None and len(started) == streamers:
            all_accepted_after = time.perf_counter() - begin
        t0 = time.perf_counter()
        try:
            held.sendall(b"PING\r\n")
            held.recv(64)
            probes.append(time.perf_counter() - t0)
        except OSError:
            lost += 1
        if time.perf_counter() >= next_new:
            first = _first_ping(server.port)
            if first is None:
                lost += 1
            else:
                firsts.append(first)
            next_new = time.perf_counter() + 0.05
        time.sleep(0.01)
    held.close()
    sigterm = time.perf_counter()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(60)
        exit_after = round(time.perf_counter() - sigterm, 3)
    except Exception:
        exit_after = None
    stop.set()
    server.stop()
    return {
        "server": server.name,
        "streamers": streamers,
        "accepted": len(started),
        "all_accepted_after_s": None if all_accepted_after is None else round(all_accepted_after, 3),
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
        if name == "redis":
            server = start_redis(cpus=[0])
        else:
            server = start_crossdock(name, "inline", 1, cpus=[0])
        print(measure(server, args.streamers, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
