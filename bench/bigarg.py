"""Issue 12's large-argument question: where does the time of a cpu request with a 1 MiB argument go?

    .venv/bin/python bench/bigarg.py [--size 1048576] [--calls 200] [--runs 5] [--json out.json]

``SHA256 <size bytes>`` (bench/bigarg_commands.py, loaded with ``--modules``) is sent in a closed loop over one
connection to crossdock async+pool and async+inline (servers pinned to CPU 0 with one pool worker, this client on
CPU 1, as bench/targets.py pins); in the same run, on CPU 0 in this process and a one-worker ProcessPoolExecutor:

* **work**: ``sha256_hex(data)`` in-process: the computation alone;
* **pickle**: ``pickle.dumps`` + ``loads`` of the call as the pool ships it (``run_job``'s arguments);
* **bare executor**: ``submit(sha256_hex, data).result()``: pickling plus the call queue's pipe copies;
* **bare executor, shared memory**: the bytes written once into a ``multiprocessing.shared_memory`` block that
  the worker reads by name (the block made once per call, as a server would for each request), so only the
  name crosses the pipe;
* **bare executor, kept shared memory**: the same with one block made once and kept mapped on both sides (the
  worker attaches on first use): per call one copy into the block and the name through the pipe, the best a
  shared-memory path could do;
* **copy**: one copy of the bytes (``bytes(bytearray(data))``), for scale.

With ``--before TREE`` (a checkout of an earlier commit, e.g. ``git archive REV | tar -x -C /tmp/old``), that
tree's async+pool server runs too, in the same rounds (``pool_before_us``, ``hop_before_us``): the same request
through the pool before and after a change, measured side by side.

Rounds alternate the sides; each figure is the median per call of a run, the table the median of runs. The
crossdock hop is through the pool minus inline (the TCP and RESP transfer of the 1 MiB, which both have,
cancels).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import pickle
import socket
import statistics
import sys
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bigarg_commands import sha256_hex
from bench.stdlib_roundtrip import time_calls
from loadtest.servers import pin_to, start_crossdock
from server.cpu.worker import run_job
from server.protocol import encode_command

#: The argument size the issue names.
DEFAULT_SIZE = 1024 * 1024
#: Calls timed per figure and run: ~1-3 ms each, so a run of a side is well under a second.
DEFAULT_CALLS = 200
#: Untimed calls first (worker started, buffers grown).
WARMUP = 20
#: The server CPU and the client CPU (bench/targets.py's plan on two CPUs).
SERVER_CPU, CLIENT_CPU = 0, 1


def _timed(call: Callable[[], object], calls: int) -> float:
    """Median microseconds of ``call`` after a warm-up."""
    return statistics.median(time_calls(call, calls, WARMUP))


def _digest_from_shm(name: str, size: int) -> str:
    """Worker side of the shared-memory variant: hash the block in place (a memoryview, no copy)."""
    block = shared_memory.SharedMemory(name=name)
    try:
        view = block.buf[:size]
        try:
            return sha256_hex(view)  # type: ignore[arg-type]  # hashlib takes any buffer
        finally:
            view.release()
    finally:
        block.close()


#: Worker side of the reused-block variant: blocks attached once and kept mapped, by name.
_ATTACHED: dict[str, shared_memory.SharedMemory] = {}


def _digest_from_kept_shm(name: str, size: int) -> str:
    """Hash ``size`` bytes of a block this worker keeps mapped (attached on first use), in place."""
    block = _ATTACHED.get(name)
    if block is None:
        block = _ATTACHED[name] = shared_memory.SharedMemory(name=name)
    view = block.buf[:size]
    try:
        return sha256_hex(view)  # type: ignore[arg-type]  # hashlib takes any buffer
    finally:
        view.release()


def _kept_shm_call(executor: concurrent.futures.Executor, block: shared_memory.SharedMemory, data: bytes) -> str:
    block.buf[: len(data)] = data  # the one copy: from the request's buffer into the block
    return str(executor.submit(_digest_from_kept_shm, block.name, len(data)).result())


def _shm_call(executor: concurrent.futures.Executor, data: bytes) -> str:
    block = shared_memory.SharedMemory(create=True, size=len(data))
    try:
        block.buf[: len(data)] = data
        return str(executor.submit(_digest_from_shm, block.name, len(data)).result())
    finally:
        block.close()
        block.unlink()


def local_figures(data: bytes, calls: int, executor: concurrent.futures.Executor) -> dict[str, float]:
    """The in-process and stdlib figures (this process pinned to the server CPU meanwhile)."""
    item = (1, 0, sha256_hex, (data,))
    kept = shared_memory.SharedMemory(create=True, size=len(data))
    try:
        return {
            "work_us": _timed(lambda: sha256_hex(data), calls),
            "pickle_us": _timed(lambda: pickle.loads(pickle.dumps(item)), calls),
            "copy_us": _timed(lambda: bytes(bytearray(data)), calls),
            "executor_us": _timed(lambda: executor.submit(sha256_hex, data).result(), calls),
            "executor_shm_us": _timed(lambda: _shm_call(executor, data), calls),
            "executor_kept_shm_us": _timed(lambda: _kept_shm_call(executor, kept, data), calls),
            "run_job_us": _timed(lambda: run_job(1, 0, sha256_hex, (data,)), calls),
        }
    finally:
        kept.close()
        kept.unlink()


def server_figure(port: int, request: bytes, calls: int) -> float:
    """Median microseconds of one SHA256 round trip over one connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def call() -> None:
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                reply += chunk

        return _timed(call, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--before", type=Path, help="an earlier checkout whose async+pool server runs alongside")
    args = parser.parse_args(argv)
    data = os.urandom(args.size)
    request = encode_command("SHA256", data)
    extra = ["--modules", "bench.bigarg_commands"]
    runs: list[dict[str, Any]] = []
    context = multiprocessing.get_context("forkserver")
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(start_crossdock("async", "pool", 1, [SERVER_CPU], extra))
        inline = stack.enter_context(start_crossdock("async", "inline", 1, [SERVER_CPU], extra))
        sides = [("pool_us", pool.port), ("inline_us", inline.port)]
        if args.before is not None:
            here = os.getcwd()
            os.chdir(args.before)  # `python -m server` imports the tree it runs in
            try:
                before = stack.enter_context(start_crossdock("async", "pool", 1, [SERVER_CPU], extra))
            finally:
                os.chdir(here)
            sides.append(("pool_before_us", before.port))
        for round_index in range(args.runs):
            figures: dict[str, Any] = {}
            pin_to([CLIENT_CPU])
            for key, port in sides if round_index % 2 == 0 else sides[::-1]:
                figures[key] = server_figure(port, request, args.calls)
            figures["hop_us"] = figures["pool_us"] - figures["inline_us"]
            if "pool_before_us" in figures:
                figures["hop_before_us"] = figures["pool_before_us"] - figures["inline_us"]
            pin_to([SERVER_CPU])  # the stdlib side where the server runs: caller and worker share a core
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
                figures.update(local_figures(data, args.calls, executor))
            runs.append(figures)
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()), flush=True)
    summary = {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}
    print(json.dumps({"size": args.size, "calls": args.calls, "runs": args.runs, "median_of_runs": summary}))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "median_of_runs": summary}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
