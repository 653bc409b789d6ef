"""Per-connection limits (issue 5), each against both front ends: a real server subprocess, real sockets.

What each test proves is in its docstring; every wait is bounded, and the
bounds are generous (a loaded CI machine), never a latency claim.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.limits.constants import RESERVED_FDS
from server.protocol import SimpleString, encode_command
from tests.support import ROOT, RespSocket, ServerProcess, info_fields

FRONT_ENDS = ["async", "threaded"]

#: Seconds any "the server closes it eventually" wait may take before the test fails.
CLOSE_BOUND = 30.0

StartServer = Callable[..., ServerProcess]


@pytest.fixture(params=FRONT_ENDS)
def start(request: pytest.FixtureRequest) -> Iterator[StartServer]:
    """Start a server of the parametrized front end with extra flags (cpu inline: no pool start-up cost)."""
    started: list[ServerProcess] = []

    def start_server(*flags: str, nofile: tuple[int, int] | None = None) -> ServerProcess:
        process = ServerProcess(request.param, "inline", flags, nofile=nofile)
        started.append(process)
        return process

    yield start_server
    for process in started:
        process.stop()


def info(conn: RespSocket, section: str) -> dict[str, str]:
    return info_fields(conn, section)


def client_ids(conn: RespSocket) -> set[str]:
    listing = conn.call("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return {line.split()[0] for line in listing.decode().splitlines() if line}


def wait_until(predicate: Callable[[], bool], what: str, bound: float = CLOSE_BOUND, step: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` when it has not within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    if not predicate():
        raise AssertionError(f"not within {bound} s: {what}")


def raw_connect(server: ServerProcess, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # before connect, so the advertised window stays small: the server's replies back up quickly
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(CLOSE_BOUND)
    sock.connect((server.host, server.port))
    return sock


# -- maxclients ----------------------------------------------------------------------------------------------------


def test_maxclients_overflow_is_refused_with_redis_error_and_the_server_goes_on(start: StartServer) -> None:
    """The client past maxclients reads Redis's error then EOF; the others are served; a freed slot is reused."""
    server = start("--maxclients", "3")
    held = [server.connect() for _ in range(3)]
    for conn in held:
        assert conn.call("PING") == SimpleString("PONG")
    with RespSocket(server.host, server.port) as extra:
        assert extra.read_until_closed() == b"-ERR max number of clients reached\r\n"
    for conn in held:
        assert conn.call("PING") == SimpleString("PONG")
    stats = info(held[0], "everything")
    assert stats["rejected_connections"] == "1"
    assert stats["connected_clients"] == "3"
    assert stats["maxclients"] == "3"
    assert held[0].call("CONFIG", "GET", "maxclients") == [b"maxclients", b"3"]
    held.pop().close()

    def admitted() -> bool:
        with RespSocket(server.host, server.port) as again:
            try:
                return again.call("PING") == SimpleString("PONG")
            except ConnectionError:
                return False

    wait_until(admitted, "a slot freed by a closed client was never reused")
    for conn in held:
        conn.close()


def test_open_file_limit_is_raised_to_fit_maxclients(start: StartServer) -> None:
    """A soft limit below maxclients + the reserve is raised (the hard limit allows it); maxclients is kept."""
    server = start("--maxclients", "500", nofile=(256, 4096))
    with server.connect() as conn:
        limits = info(conn, "limits")
    assert limits["maxclients"] == "500"
    assert limits["open_files_limit"] == str(500 + RESERVED_FDS)  # cpu inline: no pool descriptors
    assert any("Increased maximum number of open files" in line for line in server.raw_lines)


def test_maxclients_is_lowered_to_what_the_hard_limit_allows(start: StartServer) -> None:
    """With the hard limit too low, maxclients shrinks to fit, with Redis's warnings, and is enforced."""
    server = start("--maxclients", "10000", nofile=(40, 40))
    expected = 40 - RESERVED_FDS
    text = "\n".join(server.raw_lines)
    assert "You requested maxclients of 10000 requiring at least 10032 max file descriptors." in text
    assert f"maxclients has been reduced to {expected} to compensate for low ulimit" in text
    held = [server.connect() for _ in range(expected)]
    assert info(held[0], "clients")["maxclients"] == str(expected)
    with RespSocket(server.host, server.port) as extra:
        assert extra.read_until_closed() == b"-ERR max number of clients reached\r\n"
    for conn in held:
        conn.close()


@pytest.mark.parametrize("mode", FRONT_ENDS)
def test_a_limit_too_low_for_the_server_itself_stops_start_up(mode: str) -> None:
    """Fewer descriptors than the server's own reserve: exit 1 with Redis's message, before listening."""
    import functools
    import resource

    done = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--mode", mode, "--cpu", "inline"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        preexec_fn=functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (20, 20)),
    )
    assert done.returncode == 1
    assert b"is not enough for the server to start" in done.stdout + done.stderr
    assert b'"started"' not in done.stdout


# -- deadlines -----------------------------------------------------------------------------------------------------


def test_slowloris_clients_are_closed_and_a_normal_client_is_served_throughout(start: StartServer) -> None:
    """200 clients each dribbling one byte of a request every 0.5 s are all closed after --request-timeout."""
    server = start("--request-timeout", "1")
    count = 200
    request = b"*2\r\n$4\r\nECHO\r\n$100\r\n" + b"x" * 100 + b"\r\n"  # 120 bytes: a minute at this pace
    slow = [raw_connect(server) for _ in range(count)]
    for sock in slow:
        sock.setblocking(False)
    normal = server.connect()
    closed: set[int] = set()
    pongs = 0
    position = 0
    deadline = time.monotonic() + CLOSE_BOUND
    while len(closed) < count and time.monotonic() < deadline and position < len(request):
        for index, sock in enumerate(slow):
            if index in closed:
                continue
            try:
                if sock.recv(1) == b"":
                    closed.add(index)
                    continue
                pytest.fail("a slowloris client got a reply")
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed.add(index)
                continue
            try:
                sock.send(request[position : position + 1])
            except OSError:
                closed.add(index)
        position += 1
        assert normal.call("PING") == SimpleString("PONG")
        pongs += 1
        time.sleep(0.5)
    assert len(closed) == count, f"{count - len(closed)} slowloris clients still open"
    assert position < len(request), "no client completed its request"
    assert pongs >= 2
    stats = info(normal, "stats")
    assert int(stats["client_request_timeout_disconnections"]) == count
    assert normal.call("PING") == SimpleString("PONG")
    for sock in slow:
        sock.close()
    normal.close()


def test_idle_client_is_closed_but_not_while_its_request_runs(start: StartServer) -> None:
    """--idle-timeout closes a silent client without a reply; a client inside a long SLEEP is not idle."""
    server = start("--idle-timeout", "1")
    with server.connect() as busy:
        busy.send("SLEEP", 3000)  # at once: the idle deadline runs from the connect
        with server.connect() as idle:
            assert idle.read_until_closed() == b""
        assert busy.read_reply() == SimpleString("OK")  # three idle timeouts long, still open
        # The idle deadline restarts at the reply: the next command is served, not cut off.
        assert busy.call("CONFIG", "GET", "timeout") == [b"timeout", b"1"]
        assert int(info(busy, "stats")["client_idle_timeout_disconnections"]) >= 1


def test_query_buffer_cap_closes_the_client_without_a_reply(start: StartServer) -> None:
    """A request that makes the server hold more than --query-buffer-limit unparsed bytes closes the client."""
    server = start("--max-bulk-length", "1024", "--query-buffer-limit", "4096")
    with server.connect() as conn, server.connect() as control:
        conn.send_raw(b"*100\r\n" + (b"$1000\r\n" + b"a" * 1000 + b"\r\n") * 5)
        assert conn.read_until_closed() == b""
        assert info(control, "stats")["client_query_buffer_limit_disconnections"] == "1"
        assert control.call("PING") == SimpleString("PONG")


# -- output buffer and write deadline ------------------------------------------------------------------------------

BIG = 1024 * 1024


def _rss(conn: RespSocket) -> int:
    return int(info(conn, "memory")["used_memory_rss"])


def _closes(conn: RespSocket) -> int:
    """Clients closed so far for their output (either write-side limit)."""
    stats = info(conn, "stats")
    return int(stats["client_output_buffer_limit_disconnections"]) + int(stats["client_write_timeout_disconnections"])


def test_non_reading_client_is_cut_off_at_the_output_buffer_limit_and_its_memory_released(start: StartServer) -> None:
    """Pipelined GETs of 1 MiB never read: disconnected once unsent replies pass the cap; memory comes back."""
    limit = 2 * BIG
    server = start("--output-buffer-limit", str(limit))
    with server.connect() as control:
        assert control.call("SET", "big", b"v" * BIG) == SimpleString("OK")
        before = _rss(control)
        ids_before = client_ids(control)
        greedy = raw_connect(server, rcvbuf=4096)
        greedy.sendall(b"GET big\r\n" * 3000)  # 3 GiB of replies if the server kept them all
        wait_until(lambda: _closes(control) > 0, "the non-reading client was never disconnected")
        stats = info(control, "everything")
        assert stats["client_output_buffer_limit_disconnections"] == "1"
        assert stats["client_write_timeout_disconnections"] == "0"
        assert client_ids(control) == ids_before
        assert stats["connected_clients"] == "1"
        assert _rss(control) < before + 64 * BIG
        assert control.call("PING") == SimpleString("PONG")
        greedy.close()


def test_replies_that_do_not_drain_within_the_write_timeout_close_the_client(start: StartServer) -> None:
    """Below the output cap but stuck: a client that does not read is closed after --write-timeout."""
    server = start("--write-timeout", "1")
    with server.connect() as control:
        assert control.call("SET", "big", b"v" * BIG) == SimpleString("OK")
        ids_before = client_ids(control)
        stuck = raw_connect(server, rcvbuf=4096)
        stuck.sendall(b"GET big\r\n" * 12)  # 12 MiB: more than the kernel buffers, less than the 32 MiB cap
        wait_until(lambda: _closes(control) > 0, "the stuck client was never disconnected")
        assert client_ids(control) == ids_before
        stats = info(control, "stats")
        assert stats["client_write_timeout_disconnections"] == "1"
        assert stats["client_output_buffer_limit_disconnections"] == "0"
        stuck.close()


def test_a_slow_reader_that_drains_is_not_cut_off(start: StartServer) -> None:
    """The same 12 MiB, read a little late: the client gets every reply (the limits do not hit readers)."""
    server = start("--write-timeout", "2", "--output-buffer-limit", str(16 * BIG))
    with server.connect() as conn:
        assert conn.call("SET", "big", b"v" * BIG) == SimpleString("OK")
        conn.send_raw(b"GET big\r\n" * 12)
        time.sleep(0.5)
        for _ in range(12):
            assert conn.read_reply() == b"v" * BIG
        assert conn.call("PING") == SimpleString("PONG")


def test_replies_held_behind_a_slow_request_count_toward_the_output_cap(start: StartServer) -> None:
    """GET replies queued behind a SLEEP (ordering holds them back) are unsent replies too: cut off at once.

    asyncio only: a thread runs a client's requests one after another, so
    nothing is queued behind a running SLEEP there (the GETs run after it and
    meet the cap as in the test above).
    """
    server = start("--output-buffer-limit", str(2 * BIG))
    if server.mode == "threaded":
        pytest.skip("the threaded front end runs requests in order: no replies wait behind a running one")
    with server.connect() as control:
        assert control.call("SET", "big", b"v" * BIG) == SimpleString("OK")
        greedy = raw_connect(server, rcvbuf=4096)
        greedy.sendall(b"SLEEP 60000\r\n" + b"GET big\r\n" * 200)
        # The SLEEP runs for a minute: a close inside the bound means the held replies were counted.
        wait_until(lambda: _closes(control) > 0, "the client was not disconnected while its SLEEP ran")
        assert info(control, "stats")["client_output_buffer_limit_disconnections"] == "1"
        assert control.call("PING") == SimpleString("PONG")
        greedy.close()


def test_non_reading_tls_client_is_cut_off_too(start: StartServer, tmp_path: Path) -> None:
    """Over TLS the output limits hold as well (the threaded front end's TLS writes always block)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    server = start("--tls-cert", str(cert_path), "--tls-key", str(key_path), "--write-timeout", "1")
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def tls_connect(rcvbuf: int = 0) -> ssl.SSLSocket:
        return context.wrap_socket(raw_connect(server, rcvbuf), server_hostname="127.0.0.1")

    with tls_connect() as control:
        control.sendall(encode_command("SET", "big", b"v" * 100_000))
        assert control.recv(5) == b"+OK\r\n"
        greedy = tls_connect(rcvbuf=4096)
        greedy.sendall(b"GET big\r\n" * 200)  # 20 MB of replies, below the 32 MiB cap

        def closed_for_output() -> bool:
            control.sendall(b"INFO stats\r\n")
            time.sleep(0.05)
            text = control.recv(1 << 20)
            return b"client_write_timeout_disconnections:1" in text or (
                b"client_output_buffer_limit_disconnections:1" in text
            )

        wait_until(closed_for_output, "the non-reading TLS client was never disconnected")
        greedy.close()
