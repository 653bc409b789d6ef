"""The server-wide output budget (issue 15 item 7): clients that do not read cannot together take more than
``--output-budget`` of reply memory, whatever their own ``--output-buffer-limit``; the others are unaffected.
"""

from __future__ import annotations

import socket
import time

import pytest

from server.protocol import encode_command
from tests.support import ServerProcess, info_fields

BUDGET = 8 * 1024 * 1024
VALUE = b"v" * 65536
CLIENTS = 40
#: GETs each silent client pipelines: 26 MB of replies, under its own 32 MiB cap, far over the budget together.
GETS = 400
SETTLE_BOUND = 30.0


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_silent_clients_share_one_budget(mode: str) -> None:
    process = ServerProcess(mode, "inline", ("--output-budget", str(BUDGET)))
    silent: list[socket.socket] = []
    try:
        with process.connect() as probe:
            assert probe.call("SET", "big", VALUE) == "OK"
            for _ in range(CLIENTS):
                sock = socket.create_connection((process.host, process.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(encode_command("GET", "big") * GETS)
                silent.append(sock)
            deadline = time.monotonic() + SETTLE_BOUND
            while True:
                cut = int(info_fields(probe, "stats")["client_output_buffer_limit_disconnections"])
                held = int(info_fields(probe, "memory")["mem_clients_normal"])
                if cut and held <= BUDGET:
                    break
                assert time.monotonic() < deadline, f"cut={cut} held={held}: the budget was not enforced"
                time.sleep(0.2)
            assert probe.call("PING") == "PONG"  # a client that reads is served throughout
            assert int(info_fields(probe, "limits")["output_budget"]) == BUDGET
    finally:
        for sock in silent:
            sock.close()
        process.stop()
