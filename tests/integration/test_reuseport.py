"""``--reuseport N``: N asyncio front ends share one port, a supervisor restarts a crashed one and stops them all.

Real processes on port 0 throughout: the supervisor, its children, the kernel's SO_REUSEPORT balancing. Which
child served a connection is read from that connection's own ``INFO server`` (``process_id``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.config import Config
from server.frontends.supervisor import CRASH_LOOP_LIMIT, RESTART_BACKOFF_INITIAL, Instance, Supervisor, worker_shares
from tests.support import ROOT, RespSocket, ServerProcess, info_fields

#: Seconds to wait for a supervisor log line (start, restart): generous for a loaded machine.
LOG_WAIT = 60.0

#: Connections opened at most while looking for a given child. The kernel hashes each connection's 4-tuple, so with
#: two listeners the chance that 64 connections all miss one is 2**-64: a test failure means it is not balancing.
MAX_PROBE_CONNECTIONS = 64

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")


def _wait_event(server: ServerProcess, name: str, count: int = 1, role: str = "supervisor") -> dict[str, object]:
    deadline = time.monotonic() + LOG_WAIT
    while time.monotonic() < deadline:
        found = [line for line in server.events(name) if line.get("role") == role]
        if len(found) >= count:
            return found[count - 1]
        if server.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {name!r} #{count} from {role}: {server.raw_lines[-20:]}")


def _info_fields(conn: RespSocket, section: str) -> dict[str, str]:
    return info_fields(conn, section)


def _pid_of(conn: RespSocket) -> int:
    return int(_info_fields(conn, "server")["process_id"])


def _connect_until(server: ServerProcess, wanted: set[int]) -> dict[int, list[RespSocket]]:
    """Open connections until each pid in ``wanted`` has served one (bounded); connections grouped by pid."""
    by_pid: dict[int, list[RespSocket]] = {}
    for _ in range(MAX_PROBE_CONNECTIONS):
        conn = server.connect()
        by_pid.setdefault(_pid_of(conn), []).append(conn)
        if wanted <= set(by_pid):
            return by_pid
    raise AssertionError(f"children {wanted} not all reached in {MAX_PROBE_CONNECTIONS} connections: {set(by_pid)}")


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _group_empty(pgid: int, timeout: float = 30.0) -> bool:
    """True once no live process is in process group ``pgid`` (a child's group holds its pool processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(entry)
        if not members:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def group() -> Iterator[ServerProcess]:
    """``--reuseport 2`` on port 0, returned once the supervisor says every child listens."""
    process = ServerProcess("async", "pool", ["--reuseport", "2"])
    try:
        _wait_event(process, "started")
        yield process
    finally:
        process.stop()


def test_children_share_the_port_and_a_killed_child_is_replaced(group: ServerProcess) -> None:
    started = _wait_event(group, "started")
    children = set(started["instances"])  # type: ignore[call-overload]
    assert len(children) == 2 and group.proc.pid not in children
    assert started["port"] == group.port

    by_pid = _connect_until(group, children)
    victim, survivor = sorted(children)
    os.kill(victim, signal.SIGKILL)

    # The survivor's clients do not notice; the victim's clients lost their connection.
    for conn in by_pid[survivor]:
        assert conn.call("PING") == "PONG"
    for conn in by_pid[victim]:
        assert conn.is_closed_by_server()

    assert _group_empty(victim)  # its pool's forkserver and workers did not outlive it

    restarted = _wait_event(group, "instance_restarted")
    new_pid = int(restarted["pid"])  # type: ignore[call-overload]
    assert new_pid not in children
    exited = _wait_event(group, "instance_exited")
    assert exited["pid"] == victim and exited["exited"] == "signal SIGKILL"
    assert exited["restart_in_seconds"] == RESTART_BACKOFF_INITIAL

    fresh = _connect_until(group, {new_pid, survivor})
    info = _info_fields(fresh[new_pid][0], "crossdock")
    assert info["reuseport_instance"] == str(exited["instance"])
    assert info["supervisor_pid"] == str(group.proc.pid)
    for conn in by_pid[survivor]:  # still the same connections, still answered
        assert conn.call("ECHO", "still here") == b"still here"
    for conns in (*by_pid.values(), *fresh.values()):
        for conn in conns:
            conn.close()

    group.signal(signal.SIGTERM)
    assert group.proc.wait(30) == 0
    assert _gone(new_pid) and _gone(survivor)
    assert [line.get("exit_status") for line in group.events("stopped") if line.get("role") == "supervisor"] == [0]


def test_each_child_has_its_own_keyspace(group: ServerProcess) -> None:
    children = set(_wait_event(group, "started")["instances"])  # type: ignore[call-overload]
    by_pid = _connect_until(group, children)
    first, second = (by_pid[pid][0] for pid in sorted(children))
    assert first.call("SET", "reuseport:k", "v") == "OK"
    assert first.call("GET", "reuseport:k") == b"v"
    assert second.call("GET", "reuseport:k") is None  # another process, another keyspace
    for conn in (first, second):
        info = _info_fields(conn, "crossdock")
        assert info["keyspace_scope"] == "per-instance" and info["reuseport"] == "2"
        assert int(_info_fields(conn, "pool")["pool_workers"]) == 1  # --workers 2 split between two children
    for conns in by_pid.values():
        for conn in conns:
            conn.close()


def test_sigint_stops_a_single_supervised_child_gracefully() -> None:
    """``--reuseport 1`` is one supervised child; a pipelined request read before SIGINT still gets its reply."""
    process = ServerProcess("async", "pool", ["--reuseport", "1"])
    try:
        started = _wait_event(process, "started")
        (child,) = started["instances"]  # type: ignore[misc]
        with process.connect() as conn, process.connect() as watcher:
            assert _pid_of(conn) == child
            conn.send("SLEEP", 500)
            deadline = time.monotonic() + LOG_WAIT
            while b"cmd=sleep" not in watcher.call("CLIENT", "LIST"):  # type: ignore[operator]
                assert time.monotonic() < deadline, "SLEEP never reached the server"
                time.sleep(0.01)
            process.signal(signal.SIGINT)
            assert conn.read_reply() == "OK"
        assert process.proc.wait(30) == 0
        assert _gone(child)
    finally:
        process.stop()


def test_threaded_front_end_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--mode", "threaded", "--reuseport", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--reuseport needs --mode async" in result.stderr


def test_port_held_by_another_socket_fails_the_start() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()  # no SO_REUSEPORT: nobody may share this port
    try:
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server", "serve", "--port", str(port), "--reuseport", "2", "--log-format", "json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    # The start-up check (server/preflight.py) finds it before any child or pool starts: one line naming the port.
    assert result.stderr == (
        f"crossdock serve: --port {port}: address 127.0.0.1:{port} is already in use by another process; "
        "stop it or choose another port with --port (0 picks a free one)\n"
    )
    assert '"event": "started"' not in result.stdout


def test_a_child_that_cannot_start_fails_the_start_with_its_status(tmp_path: Path) -> None:
    """A configuration error only a child discovers (an unreadable TLS key) ends the supervisor as it ends a server."""
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--reuseport", "2", "--log-format", "json",
         "--tls-cert", missing, "--tls-key", missing],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert '"event": "tls_setup_failed"' in result.stdout
    assert '"event": "instance_failed_to_start"' in result.stdout
    assert '"event": "started"' not in result.stdout


def test_workers_are_split_at_least_one_each() -> None:
    assert worker_shares(2, 2) == [1, 1]
    assert worker_shares(5, 2) == [3, 2]
    assert worker_shares(1, 3) == [1, 1, 1]


def test_back_off_doubles_and_a_crash_loop_gives_up() -> None:
    """The restart schedule on one slot: 0.5 s, 1 s, 2 s ... until more than CRASH_LOOP_LIMIT exits in the window."""
    supervisor = Supervisor(Config(port=0, reuseport=1, workers=1))
    instance: Instance = supervisor.instances[0]
    delays = []
    for _ in range(CRASH_LOOP_LIMIT):
        instance.started_at = time.monotonic()  # it crashed at once
        assert supervisor._on_exit(instance, 1)
        assert instance.restart_at is not None
        delays.append(round(instance.restart_at - time.monotonic(), 1))
    assert delays == [RESTART_BACKOFF_INITIAL * 2**i for i in range(CRASH_LOOP_LIMIT)]
    instance.started_at = time.monotonic()
    assert not supervisor._on_exit(instance, 1)
