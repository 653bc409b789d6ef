"""Two crossdock instances behind HAProxy (TCP mode, deploy/haproxy.cfg as checked in): both serve, replies are
right, and the keyspace is per instance, as the README and INFO say.

HAProxy runs unprivileged in the foreground, its stats socket in the test's temp dir; its health checks must
see both instances up before any client connects (polled through that socket, bounded).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, RespSocket, ServerProcess, info_fields

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
CONFIG = ROOT / "deploy" / "haproxy.cfg"

#: Seconds for HAProxy's checks (inter 2s, rise 2) to see both instances up; generous for a loaded machine.
HEALTH_WAIT = 60.0

#: Client connections opened through HAProxy and held open together.
CLIENTS = 8

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stats(stats_socket: Path) -> dict[str, dict[str, str]]:
    """HAProxy's ``show stat`` for the crossdock backend's servers: server name -> its CSV fields by name."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = [line for line in data.decode().splitlines() if line]
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return {row["svname"]: row for row in rows if row["pxname"] == "crossdock_instances" and row["svname"] != "BACKEND"}


class HAProxy:
    """``haproxy -db -f deploy/haproxy.cfg`` with the addresses in its environment; stopped by :meth:`stop`."""

    def __init__(self, tmp: Path, front_port: int, backends: list[int]) -> None:
        assert HAPROXY is not None
        self.port = front_port
        self.stats_socket = tmp / "haproxy.sock"
        env = {
            **os.environ,
            "CROSSDOCK_LB_BIND": f"127.0.0.1:{front_port}",
            "CROSSDOCK_LB_SERVER1": f"127.0.0.1:{backends[0]}",
            "CROSSDOCK_LB_SERVER2": f"127.0.0.1:{backends[1]}",
            "CROSSDOCK_LB_STATS_SOCKET": str(self.stats_socket),
        }
        self.log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(CONFIG)], cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_for(self, wanted: dict[str, str], check: str = "") -> dict[str, dict[str, str]]:
        """Poll the stats socket until each named server has the wanted status (and its last check's status
        starts with ``check``); bounded by HEALTH_WAIT. The stats last seen."""
        deadline = time.monotonic() + HEALTH_WAIT
        stats: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "haproxy exited"
            if self.stats_socket.exists():
                stats = _stats(self.stats_socket)
                rows = [stats.get(name, {}) for name in wanted]
                if all(row.get("status") == wanted[name] for name, row in zip(wanted, rows, strict=True)) and all(
                    row.get("check_status", "").startswith(check) for row in rows
                ):
                    return stats
            time.sleep(0.1)
        seen = {name: (row.get("status"), row.get("check_status")) for name, row in stats.items()}
        raise AssertionError(f"haproxy never reached {wanted} {check}: {seen}")

    def wait_all_up(self) -> None:
        """Both servers UP by a passed check: L7OK means HAProxy's RESP check sent PING and got +PONG."""
        self.wait_for({"crossdock1": "UP", "crossdock2": "UP"}, check="L7OK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[tuple[HAProxy, list[ServerProcess]]]:
    instances = [ServerProcess("async", "pool", ["--workers", "1"]) for _ in range(2)]
    proxy = HAProxy(tmp_path, _free_port(), [server.port for server in instances])
    try:
        proxy.wait_all_up()
        yield proxy, instances
    finally:
        proxy.stop()
        for server in instances:
            server.stop()


def _is_prime(n: int) -> bool:
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def _info(conn: RespSocket, section: str) -> dict[str, str]:
    return info_fields(conn, section)


def test_connections_are_shared_and_each_instance_answers(balanced: tuple[HAProxy, list[ServerProcess]]) -> None:
    proxy, instances = balanced
    pids = {int(_info(RespSocket("127.0.0.1", server.port), "server")["process_id"]) for server in instances}
    clients = [RespSocket("127.0.0.1", proxy.port) for _ in range(CLIENTS)]
    served_by = [int(_info(conn, "server")["process_id"]) for conn in clients]
    assert set(served_by) == pids
    counts = Counter(served_by)
    assert max(counts.values()) - min(counts.values()) <= 1  # leastconn with every connection held open

    for i, conn in enumerate(clients):
        assert conn.call("PING") == "PONG"
        assert conn.call("PRIMES", 1000 + i) == sum(1 for n in range(2, 1001 + i) if _is_prime(n))
        assert conn.call("SET", f"haproxy:{i}", i) == "OK"
        assert conn.call("GET", f"haproxy:{i}") == str(i).encode()

    # Each instance counted its own share of those commands (checked directly, not through HAProxy).
    for server in instances:
        with RespSocket("127.0.0.1", server.port) as direct:
            stats = _info(direct, "stats")
            assert int(stats["total_commands_processed"]) >= 5 * counts[int(_info(direct, "server")["process_id"])]
            assert int(stats["total_connections_received"]) >= counts[int(_info(direct, "server")["process_id"])]
    for conn in clients:
        conn.close()


def test_the_keyspace_is_per_instance_behind_haproxy(balanced: tuple[HAProxy, list[ServerProcess]]) -> None:
    proxy, _instances = balanced
    clients = [RespSocket("127.0.0.1", proxy.port) for _ in range(2)]  # leastconn: one on each instance
    first, second = clients
    assert _info(first, "server")["process_id"] != _info(second, "server")["process_id"]
    assert first.call("SET", "haproxy:shared?", "no") == "OK"
    assert second.call("GET", "haproxy:shared?") is None
    assert _info(second, "crossdock")["keyspace_scope"] == "per-instance"
    for conn in clients:
        conn.close()


def test_a_stopped_instance_is_taken_out_and_clients_reach_the_other(
    balanced: tuple[HAProxy, list[ServerProcess]],
) -> None:
    proxy, instances = balanced
    with RespSocket("127.0.0.1", instances[0].port) as direct:
        survivor = int(_info(direct, "server")["process_id"])
    assert instances[1].stop() == 0
    # fall 3 failed checks at inter 2s; L4: the connection is refused, nobody listens there any more
    proxy.wait_for({"crossdock1": "UP", "crossdock2": "DOWN"})
    assert _stats(proxy.stats_socket)["crossdock2"]["check_status"].startswith("L4")
    for _ in range(4):
        with RespSocket("127.0.0.1", proxy.port) as conn:
            assert int(_info(conn, "server")["process_id"]) == survivor
            assert conn.call("PING") == "PONG"
