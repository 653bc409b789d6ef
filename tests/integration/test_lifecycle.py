"""Start-up, configuration, logging and graceful shutdown, on real server subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from server.config import parse_config
from server.protocol import SimpleString, encode_command
from tests.support import ROOT, ServerProcess

#: Long enough (seconds of pure-Python sieve) that a signal surely lands while it runs.
LONG_PRIMES = 20_000_000
PRIMES_20M = 1_270_607


def test_port_zero_is_reported_in_the_startup_log(fresh_server_factory) -> None:  # type: ignore[no-untyped-def]
    process = fresh_server_factory("async", "pool")
    started = process.events("started")[0]
    assert started["mode"] == "async" and started["cpu"] == "pool" and started["workers"] == 2
    assert started["loop"] == "uvloop"
    assert process.port > 0
    ready = process.events("pool_ready")[0]
    assert len(ready["pids"]) == 2  # type: ignore[arg-type]  # pre-warmed: every worker already answered


def test_cpu_inline_warns_at_startup(fresh_server_factory) -> None:  # type: ignore[no-untyped-def]
    process = fresh_server_factory("async", "inline")
    warnings = process.events("cpu_inline_blocks_loop")
    assert warnings and warnings[0]["level"] == "warning"


def test_environment_variables_configure_the_server() -> None:
    config = parse_config(["--workers", "3"], {"CROSSDOCK_MODE": "threaded", "CROSSDOCK_WORKERS": "5",
                                               "CROSSDOCK_SHUTDOWN_TIMEOUT": "2.5"})
    assert config.mode == "threaded" and config.workers == 3 and config.shutdown_timeout == 2.5
    with pytest.raises(ValueError, match="CROSSDOCK_PORT"):
        parse_config([], {"CROSSDOCK_PORT": "seventy"})


def test_environment_reaches_a_real_server() -> None:
    process = ServerProcess("async", "inline", env={"CROSSDOCK_SLOWLOG_THRESHOLD_MS": "0"})
    try:
        with process.connect() as conn:
            assert conn.call("CONFIG", "GET", "slowlog-log-slower-than") == [b"slowlog-log-slower-than", b"0"]
    finally:
        process.stop()


def test_slow_commands_are_logged_once_each_and_fast_ones_not_at_all(fresh_server_factory) -> None:  # type: ignore[no-untyped-def]
    process = fresh_server_factory("async", "pool", "--slowlog-threshold-ms", "100")
    with process.connect() as conn:
        for _ in range(50):
            conn.call("PING")
        assert conn.call("SLEEP", 0) == SimpleString("OK")
        assert conn.call("PRIMES", 10_000_000) == 664_579  # about 0.6 s of sieve: well past 100 ms
    assert process.stop() == 0
    slow = process.events("slow_command")
    assert [event["command"] for event in slow] == ["primes"]
    assert all(event.get("event") != "request" for event in process.lines)


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(mode: str, fresh_server_factory) -> None:  # type: ignore[no-untyped-def]
    process = fresh_server_factory(mode, "pool")
    with process.connect() as busy, process.connect() as idle:
        assert idle.call("PING") == SimpleString("PONG")
        busy.send_raw(encode_command("PRIMES", LONG_PRIMES) + encode_command("ECHO", "after"))
        assert process.proc.poll() is None
        import time

        time.sleep(0.2)  # let the server read the request; the reply takes seconds
        process.signal(signal.SIGTERM)
        assert busy.read_reply() == PRIMES_20M
        assert busy.read_reply() == b"after"
        assert busy.is_closed_by_server(timeout=20)
        assert idle.is_closed_by_server(timeout=20)
    assert process.proc.wait(30) == 0
    events = [line.get("event") for line in process.lines]
    assert "stopping" in events and events[-1] == "stopped"


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_second_signal_exits_at_once(mode: str, fresh_server_factory) -> None:  # type: ignore[no-untyped-def]
    process = fresh_server_factory(mode, "inline", "--shutdown-timeout", "60")
    with process.connect() as conn:
        conn.send("SLEEP", 50_000)
        import time

        time.sleep(0.3)
        process.signal(signal.SIGTERM)
        time.sleep(0.3)
        process.signal(signal.SIGINT)
        assert process.proc.wait(20) != 0  # well before the 50 s SLEEP or the 60 s shutdown timeout


def test_console_script_and_python_m_server_both_work() -> None:
    for command in ([sys.executable, "-m", "server", "--help"], [os.path.join(os.path.dirname(sys.executable),
                                                                              "crossdock"), "serve", "--help"]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "serve" in result.stdout or "--mode" in result.stdout


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_json_logs_when_not_a_tty(fresh_server_factory, mode: str) -> None:  # type: ignore[no-untyped-def]
    process = fresh_server_factory(mode, "inline")
    with process.connect() as conn:
        conn.call("PING")
    process.stop()
    parsed = [json.loads(line) for line in process.raw_lines if line.startswith("{")]
    assert parsed and all("timestamp" in line and "level" in line for line in parsed)
    opened = [line for line in parsed if line["event"] == "connection_open"]
    assert opened and "client_id" in opened[0] and "peer" in opened[0]
    closed = [line for line in parsed if line["event"] == "connection_closed"]
    assert closed and closed[0]["client_id"] == opened[0]["client_id"]


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_sigterm_stops_a_server_whose_log_reader_has_gone(mode: str) -> None:
    """The process reading its log died (a closed pipe): the signal handler must still stop the server."""
    command = [sys.executable, "-m", "server", "serve", "--port", "0", "--mode", mode, "--cpu", "inline"]
    proc = subprocess.Popen(
        [*command, "--log-format", "json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # up to the start-up line: the server is serving
            if json.loads(line).get("event") == "started":
                break
        proc.stdout.close()  # the reader goes away: every log line from now on meets a broken pipe
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
