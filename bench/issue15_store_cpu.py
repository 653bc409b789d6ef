"""Issue 15's store and cpu measurements, against any checkout (to compare a baseline with this one).

    .venv/bin/python bench/issue15_store_cpu.py SRC SCENARIO MODE [server flags...]

SRC is a checkout whose ``server`` package is run (``PYTHONPATH=SRC``); MODE is
``async`` or ``threaded`` (``redis`` runs redis-server for ``bigset``). Scenarios:

- ``bigset``: 300 SET of 1 MiB values on one connection; prints RSS before and after, and the
  replies (OK / errors). Pass ``--maxmemory 64mb`` to see the bound.
- ``flush``: 300 MiB of 64 KiB values, then FLUSHDB; prints RSS at start, full, after FLUSHDB.
- ``storm``: 15 s of 50 connections looping ``PRIMES 200000`` with ``--workers 2`` while a pool
  worker is SIGKILLed every 0.5 s; prints kills, good replies, error replies, clients that hung.
- ``fair``: one connection pipelines 500 ``FACTOR 999999999999989`` and never reads; 10 others loop
  ``PRIMES 1000`` for 10 s; prints how many of theirs were answered and how many got -BUSY.

One line of figures per run; the machine's load is the reader's to note (``uptime``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.protocol import NOT_ENOUGH_DATA, ErrorReply, ReplyParser, encode_command

#: Seconds a reply may take before the client counts as hung (longer than any request here should wait).
REPLY_TIMEOUT = 60.0


def start(src: str, mode: str, flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    command = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0", "--mode", mode,
               "--log-format", "json", *flags]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": src}
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "started":
            port = int(event["port"])
            break
    else:
        raise RuntimeError("server did not start")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, port


def start_redis(flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", *flags],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    return proc, port


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(REPLY_TIMEOUT)
        self.parser = ReplyParser()

    def send(self, *args: object) -> None:
        self.sock.sendall(encode_command(*args))

    def read(self) -> object:
        while True:
            reply = self.parser.next_reply()
            if reply is not NOT_ENOUGH_DATA:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.parser.feed(data)

    def call(self, *args: object) -> object:
        self.send(*args)
        return self.read()


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


def bigset(proc: subprocess.Popen[bytes], port: int) -> str:
    conn, base, value, ok, errors = Conn(port), rss_mib(proc.pid), b"x" * (1 << 20), 0, 0
    last: object = None
    for index in range(300):
        last = conn.call("SET", f"k{index}", value)
        errors += isinstance(last, ErrorReply)
        ok += not isinstance(last, ErrorReply)
    return f"rss {base} -> {rss_mib(proc.pid)} MiB, OK {ok}, errors {errors}, last reply {last!r}"


def flush(proc: subprocess.Popen[bytes], port: int) -> str:
    conn, base, value = Conn(port), rss_mib(proc.pid), b"x" * 65536
    for index in range(4800):
        conn.send("SET", f"k{index}", value)
    for _ in range(4800):
        conn.read()
    full = rss_mib(proc.pid)
    conn.call("FLUSHDB")
    return f"rss at start {base} MiB, after 300 MiB of SET {full} MiB, after FLUSHDB {rss_mib(proc.pid)} MiB"


def storm(proc: subprocess.Popen[bytes], port: int) -> str:
    stop, counts = threading.Event(), {"good": 0, "errors": 0, "hung": 0}

    def client() -> None:
        conn = Conn(port)
        while not stop.is_set():
            try:
                reply = conn.call("PRIMES", 200_000)
            except OSError:
                counts["hung"] += 1
                return
            counts["errors" if isinstance(reply, ErrorReply) else "good"] += 1

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    probe, kills, end = Conn(port), 0, time.monotonic() + 15
    while time.monotonic() < end:
        time.sleep(0.5)
        text = probe.call("INFO", "pool")
        assert isinstance(text, bytes)
        pids = [int(pid) for pid in text.decode().split("pool_worker_pids:")[1].split("\r\n")[0].split(",") if pid]
        if pids:
            try:
                os.kill(random.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
    stop.set()
    for thread in threads:
        thread.join(REPLY_TIMEOUT)
    return f"kills {kills}, good {counts['good']}, errors {counts['errors']}, hung {counts['hung']}, " \
           f"probe PING {probe.call('PING')!r}"  # fmt: skip


def fair(proc: subprocess.Popen[bytes], port: int) -> str:
    greedy = socket.create_connection(("127.0.0.1", port))
    greedy.sendall(b"".join(encode_command("FACTOR", "999999999999989") for _ in range(500)))
    time.sleep(1.0)
    stop, counts = threading.Event(), {"answered": 0, "busy": 0, "hung": 0}

    def client() -> None:
        conn = Conn(port)
        while not stop.is_set():
            try:
                reply = conn.call("PRIMES", 1000)
            except OSError:
                counts["hung"] += 1
                return
            counts["busy" if isinstance(reply, ErrorReply) else "answered"] += 1

    threads = [threading.Thread(target=client) for _ in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(10)
    stop.set()
    for thread in threads:
        thread.join(REPLY_TIMEOUT)
    greedy.close()
    return f"other clients' PRIMES 1000 in 10 s: answered {counts['answered']}, -BUSY {counts['busy']}, " \
           f"hung {counts['hung']}"  # fmt: skip


SCENARIOS = {"bigset": bigset, "flush": flush, "storm": storm, "fair": fair}


def main() -> None:
    src, scenario, mode, flags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    if scenario in ("storm", "fair"):
        flags = ["--workers", "2", *flags]
    proc, port = start_redis(flags) if mode == "redis" else start(src, mode, flags)
    try:
        print(f"{scenario} {mode} {' '.join(flags)} [{src}]: {SCENARIOS[scenario](proc, port)}", flush=True)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
