"""Where a 1-connection cpu round trip spends its CPU, thread by thread: crossdock's pool beside the bare executor.

    .venv/bin/python bench/roundtrip_threads.py [--calls 4000] [--rounds 3] [--json out.json]

Issue 12's round-trip row compares medians; this says why they differ. For ``PRIMES 10`` sent in a closed
loop over one connection (this client pinned to CPU 1) to crossdock async+pool and async+inline (each server
and its one worker pinned to CPU 0), and for a bare ``ProcessPoolExecutor(1).submit(count_primes, 10).result()``
loop run in a child pinned to CPU 0, it reads every thread's CPU time (``/proc/PID/task/TID/schedstat``: time on
a CPU, kernel included) and context switches before and after the timed calls, and prints per call:

* the median round trip;
* per thread: the event loop (or the caller), the executor's manager thread, the call queue's feeder thread,
  and the worker process, in microseconds of CPU and context switches.

On one shared core the round trip is close to the sum of those CPU times, so the difference between crossdock's
threads and the bare executor's is what crossdock adds. Rounds alternate the sides; the medians of the rounds
are printed (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.servers import pin_to, start_crossdock
from server.commands.cpu import count_primes
from server.protocol import encode_command

#: Calls per measurement: ~1 s through the pool, enough for per-call CPU to a microsecond.
DEFAULT_CALLS = 4000
#: Untimed calls first.
WARMUP = 300
#: Server CPU and client CPU (bench/targets.py's plan on two CPUs).
SERVER_CPU, CLIENT_CPU = 0, 1
REQUEST = encode_command("PRIMES", 10)


def _threads(pids: list[int]) -> dict[tuple[int, int], tuple[int, int, str]]:
    """(pid, tid) -> (ns on CPU, context switches, thread name) of every thread of ``pids``."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/schedstat") as fh:
                    ns = int(fh.read().split()[0])
                with open(f"{base}/status") as fh:
                    status = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
                with open(f"{base}/comm") as fh:
                    name = fh.read().strip()
            except FileNotFoundError:
                continue
            switches = int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
            out[(pid, int(tid))] = (ns, switches, name)
    return out


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (the forkserver, its worker, the resource tracker)."""
    table = [tuple(map(int, line.split())) for line in subprocess.run(
        ["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout.splitlines()]  # fmt: skip
    family = [pid]
    for _ in range(3):
        family += [child for child, parent in table if parent in family and child not in family]
    return family


def crossdock_side(port: int, server_pid: int, calls: int) -> dict[str, Any]:
    pids = _family(server_pid)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(WARMUP):
            sock.sendall(REQUEST)
            sock.recv(64)
        before = _threads(pids)
        timings = []
        for _ in range(calls):
            began = time.perf_counter_ns()
            sock.sendall(REQUEST)
            sock.recv(64)
            timings.append((time.perf_counter_ns() - began) / 1000)
        after = _threads(pids)
    return {"median_us": statistics.median(timings), "before": before, "after": after, "pids": pids}


def bare_side(calls: int) -> dict[str, Any]:
    """The bare executor loop, in this process (pinned to the server CPU by the caller)."""
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        for _ in range(WARMUP):
            executor.submit(count_primes, 10).result()
        pids = [os.getpid(), *executor._processes]  # the worker's pid, to read its CPU
        before = _threads(pids)
        timings = []
        for _ in range(calls):
            began = time.perf_counter_ns()
            executor.submit(count_primes, 10).result()
            timings.append((time.perf_counter_ns() - began) / 1000)
        after = _threads(pids)
    return {"median_us": statistics.median(timings), "before": before, "after": after, "pids": pids}


def summarise(side: dict[str, Any], main_pid: int, calls: int) -> dict[str, float]:
    """Per call: the median round trip, and CPU/switches of the main thread, the other threads of the main
    process (the executor's manager and feeder threads, largest first) and the worker process."""
    before, after = side["before"], side["after"]
    delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after if k in before}
    out = {"round_trip_us": side["median_us"]}
    main = delta.get((main_pid, main_pid), (0, 0))
    out["main_cpu_us"], out["main_switches"] = main[0] / calls / 1000, main[1] / calls
    helpers = sorted((v for (pid, tid), v in delta.items() if pid == main_pid and tid != main_pid), key=lambda v: -v[0])
    for index, label in enumerate(("manager", "feeder")):
        value = helpers[index] if index < len(helpers) else (0, 0)
        out[f"{label}_cpu_us"], out[f"{label}_switches"] = value[0] / calls / 1000, value[1] / calls
    worker = [v for (pid, tid), v in delta.items() if pid != main_pid and pid == tid]
    busiest = max(worker, key=lambda v: v[0], default=(0, 0))
    out["worker_cpu_us"], out["worker_switches"] = busiest[0] / calls / 1000, busiest[1] / calls
    out["all_cpu_us"] = sum(v[0] for v in delta.values()) / calls / 1000
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"async+pool": [], "async+inline": [], "bare executor": []}
    with (
        start_crossdock("async", "pool", 1, [SERVER_CPU]) as pool,
        start_crossdock("async", "inline", 1, [SERVER_CPU]) as inline,
    ):
        servers = {"async+pool": pool, "async+inline": inline}
        for round_index in range(args.rounds):
            order = list(results) if round_index % 2 == 0 else list(results)[::-1]
            for name in order:
                if name == "bare executor":
                    pin_to([SERVER_CPU])
                    side = bare_side(args.calls)
                    results[name].append(summarise(side, os.getpid(), args.calls))
                else:
                    pin_to([CLIENT_CPU])
                    server = servers[name]
                    side = crossdock_side(server.port, server.proc.pid, args.calls)
                    results[name].append(summarise(side, server.proc.pid, args.calls))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    medians = {
        name: {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
        for name, runs in results.items()
    }
    keys = list(next(iter(medians.values())))
    print("| per call | " + " | ".join(medians) + " |")
    print("|---|" + "---:|" * len(medians))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{medians[name][key]:,.1f}" for name in medians) + " |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results,
                                         "medians": medians}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
