"""Nanoseconds per request through the shared per-chunk loop (parse, dispatch, encode), no sockets.

Runs ``Dispatcher.run_chunk`` on one request per chunk (what a client that
waits for each reply sends), or ``--pipeline N`` per chunk (redis-benchmark's
``-P``), for PING, GET and SET, and prints the best of
``--repeat`` timings per command as JSON. Time is this thread's CPU time
(``time.thread_time_ns``), so on a shared machine the time the process
spends descheduled does not count; cache and frequency effects still do. It imports ``server`` from whatever
checkout the interpreter has installed, so ``bench/observability_cost.py``
runs this same file under the baseline's and the candidate's interpreters.

    .venv/bin/python bench/dispatch_micro.py --requests 200000 --repeat 5 [--pipeline 16]

``CROSSDOCK_CORE=pure`` runs it on the pure core.
"""

from __future__ import annotations

import argparse
import json
import time

from server.commands import CommandContext, Dispatcher, default_registry
from server.config import Config
from server.protocol import RequestParser, encode_command
from server.store.state import ServerState

COMMANDS = {"ping": ("PING",), "get": ("GET", "key:1"), "set": ("SET", "key:1", "value-of-16-bytes")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipeline", type=int, default=1, help="requests per chunk (default 1)")
    args = parser.parse_args()
    # A slow threshold no request reaches: the slow log line would measure logging, not dispatch.
    state = ServerState(Config(slowlog_threshold_ms=1e9), thread_safe=False)
    dispatcher = Dispatcher(default_registry(), state)
    client = state.register_client("127.0.0.1:1", "127.0.0.1:2", -1)
    ctx = CommandContext(state, client, default_registry())
    request_parser = RequestParser()
    result: dict[str, float] = {}
    for name, command in COMMANDS.items():
        data = encode_command(*command) * args.pipeline
        chunks = max(1, args.requests // args.pipeline)
        best = float("inf")
        for _ in range(args.repeat):
            started = time.thread_time_ns()
            for _ in range(chunks):
                for _reply in dispatcher.run_chunk(ctx, request_parser, data):
                    pass
            best = min(best, (time.thread_time_ns() - started) / (chunks * args.pipeline))
        result[name] = round(best, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
