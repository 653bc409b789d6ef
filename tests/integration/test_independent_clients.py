"""Independent RESP clients against both front ends: redis-py, redis-cli (one-shot and interactive), nc,
redis-benchmark. They prove crossdock speaks RESP2 as Redis does, not just our own dialect."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import time

import pytest

from tests.support import ServerProcess

redis = pytest.importorskip("redis")

needs_redis_cli = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
needs_benchmark = pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark not installed")
needs_nc = pytest.mark.skipif(shutil.which("nc") is None, reason="nc not installed")

#: Seconds any external client may run before the test fails.
CLIENT_TIMEOUT = 60


def test_redis_py(front_end: ServerProcess) -> None:
    client = redis.Redis(host=front_end.host, port=front_end.port, protocol=2, socket_timeout=CLIENT_TIMEOUT)
    try:
        assert client.ping() is True
        assert client.echo("héllo") == "héllo".encode()
        assert client.set("redis-py:k", "v", ex=100) is True
        assert client.get("redis-py:k") == b"v"
        assert 0 < client.ttl("redis-py:k") <= 100
        assert client.incr("redis-py:n") >= 1
        assert client.execute_command("PRIMES", 1000) == 168
        assert client.execute_command("FACTOR", 360) == [2, 2, 2, 3, 3, 5]
        info = client.info()
        assert info["redis_mode"] == "standalone" and info["mode"] == front_end.mode
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.echo(str(i))
        assert pipe.execute() == [str(i).encode() for i in range(100)]
        with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
            client.execute_command("NOSUCH")
        client.client_setname("py")
        assert client.client_getname() == "py"
        assert any(entry["name"] == "py" for entry in client.client_list())
    finally:
        client.close()


@needs_redis_cli
def test_redis_cli_one_shot(front_end: ServerProcess) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["redis-cli", "-p", str(front_end.port), *args], capture_output=True, text=True, timeout=CLIENT_TIMEOUT
        )

    assert cli("PING").stdout == "PONG\n"
    assert cli("PRIMES", "5000000").stdout == "348513\n"
    assert cli("FACTOR", "360").stdout == "2\n2\n2\n3\n3\n5\n"
    assert cli("ECHO", "hello world").stdout == "hello world\n"
    result = cli("-e", "NOSUCH")
    assert result.returncode == 1 and "unknown command" in (result.stdout + result.stderr)


@needs_redis_cli
def test_redis_cli_interactive_mode_starts_without_errors(front_end: ServerProcess) -> None:
    """Interactive redis-cli asks COMMAND DOCS at start and asserts on its shape; it must then just work."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: redis-cli on a terminal; TERM=dumb so linenoise asks no cursor position
        os.environ["TERM"] = "dumb"
        os.execvp("redis-cli", ["redis-cli", "-p", str(front_end.port)])
    output = b""
    exited = False
    try:
        os.write(fd, b"PING\r")
        os.write(fd, b"PRIMES 100\r")
        os.write(fd, b"help primes\r")  # help text built from our COMMAND DOCS reply
        os.write(fd, b"QUIT\r")
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    exited = True
                    break
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        if not exited:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert "PONG" in text and "(integer) 25" in text, text
    assert "summary:" in text and "Count the primes" in text, text
    assert "Assertion" not in text and "Error" not in text, text


@needs_nc
def test_netcat_session_from_the_readme(front_end: ServerProcess) -> None:
    script = b'PING\r\nECHO "hello world"\r\nPRIMES 100000\r\nFACTOR 360\r\nSET k 1\r\nINCR k\r\nQUIT\r\n'
    result = subprocess.run(
        ["nc", "127.0.0.1", str(front_end.port)], input=script, capture_output=True, timeout=CLIENT_TIMEOUT
    )
    assert result.stdout == (
        b"+PONG\r\n$11\r\nhello world\r\n:9592\r\n*6\r\n:2\r\n:2\r\n:2\r\n:3\r\n:3\r\n:5\r\n+OK\r\n:2\r\n+OK\r\n"
    )


@needs_benchmark
def test_redis_benchmark_runs_without_warnings_or_errors(front_end: ServerProcess) -> None:
    result = subprocess.run(
        ["redis-benchmark", "-p", str(front_end.port), "-t", "ping_mbulk,set,get,incr", "-n", "2000", "-c", "10", "-q"],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output and "ERR" not in output, output
    for test in ("PING_MBULK", "SET", "GET", "INCR"):
        assert f"{test}: " in output and "requests per second" in output, output
