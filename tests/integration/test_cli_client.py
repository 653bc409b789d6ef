"""``crossdock cli`` as a subprocess: one-shot, stdin, interactive on a pseudo-terminal, redis-cli parity."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.client_fixtures import Endpoint
from tests.support import ROOT

pytest_plugins = ["tests.client_fixtures"]

#: Seconds any test here may take before pytest-timeout fails it.
pytestmark = pytest.mark.timeout(60)

#: Seconds one CLI subprocess may run: start-up is well under a second.
CLI_TIMEOUT = 20


def cli(
    endpoint: Endpoint, *args: str, stdin: str | None = None, via: str = "clients"
) -> subprocess.CompletedProcess[str]:
    """Run the CLI (``python -m clients.cli``, or ``python -m server cli`` with via="server")."""
    module = ["-m", "clients.cli"] if via == "clients" else ["-m", "server", "cli"]
    return subprocess.run(
        [sys.executable, *module, "-h", endpoint.host, "-p", str(endpoint.port), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=ROOT,
        check=False,
    )


def test_one_shot_prints_the_reply(endpoint: Endpoint) -> None:
    done = cli(endpoint, "PING")
    assert (done.returncode, done.stdout, done.stderr) == (0, "PONG\n", "")
    done = cli(endpoint, "ECHO", "a b")
    assert done.stdout == "a b\n"


def test_one_shot_through_the_crossdock_command(crossdock_endpoint: Endpoint) -> None:
    done = cli(crossdock_endpoint, "PRIMES", "100000", via="server")
    assert (done.returncode, done.stdout, done.stderr) == (0, "9592\n", "")
    done = cli(crossdock_endpoint, "--no-raw", "FACTOR", "360", via="server")
    assert done.stdout == "".join(f"{i}) (integer) {f}\n" for i, f in enumerate([2, 2, 2, 3, 3, 5], 1))


def test_one_shot_error_reply_exits_1_with_the_message_on_stderr(endpoint: Endpoint) -> None:
    done = cli(endpoint, "NOSUCHCOMMAND", "x")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("ERR unknown command")
    done = cli(endpoint, "--no-raw", "NOSUCHCOMMAND")
    assert done.returncode == 1 and done.stderr.startswith("(error) ERR unknown command")


def test_formatted_output_with_no_raw(endpoint: Endpoint, key: str) -> None:
    cli(endpoint, "DEL", key)
    assert cli(endpoint, "--no-raw", "INCR", key).stdout == "(integer) 1\n"
    assert cli(endpoint, "--no-raw", "GET", f"{key}:missing").stdout == "(nil)\n"
    assert cli(endpoint, "--no-raw", "ECHO", 'say "hi"\n').stdout == '"say \\"hi\\"\\n"\n'


def test_stdin_lines_are_commands_when_stdin_is_not_a_tty(endpoint: Endpoint) -> None:
    done = cli(endpoint, stdin='PING\n\nECHO "a b"\n')
    assert (done.returncode, done.stdout, done.stderr) == (0, "PONG\na b\n", "")


def test_stdin_runs_every_line_and_exits_1_if_any_failed(endpoint: Endpoint) -> None:
    done = cli(endpoint, stdin='PING\nNOSUCHCOMMAND\nECHO after\nECHO "unbalanced\n')
    assert done.returncode == 1
    assert done.stdout == "PONG\nafter\n"
    assert "ERR unknown command" in done.stderr and "Invalid argument(s)" in done.stderr


def test_connection_refused_exits_1() -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        done = cli(Endpoint("crossdock", "async", "127.0.0.1", port), "PING")
    assert done.returncode == 1
    assert done.stderr.startswith(f"Could not connect to 127.0.0.1:{port}")


#: Commands covering every reply type and nesting; each gives the same reply when run twice,
#: since ours and redis-cli's runs alternate on the same server.
PARITY_COMMANDS: list[list[str]] = [
    ["PING"],
    ["ECHO", "plain"],
    ["ECHO", 'quo"te\\back\nnew\ttab\x01é'],
    ["ECHO", ""],
    ["SET", "parity:k", "v"],
    ["GET", "parity:k"],
    ["GET", "parity:missing"],
    ["INCRBY", "parity:n", "0"],
    ["TTL", "parity:k"],
    ["EXISTS", "parity:k", "parity:n", "parity:missing"],
    ["EVAL", "return {1,{2,'x',{}},'y',false,{'a','b','c','d','e','f','g','h','i','j'}}", "0"],
]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("mode", ["--raw", "--no-raw"])
def test_output_is_byte_for_byte_what_redis_cli_prints(redis_endpoint: Endpoint, mode: str) -> None:
    for command in PARITY_COMMANDS:
        ours = cli(redis_endpoint, mode, *command)
        theirs = subprocess.run(
            ["redis-cli", "-h", redis_endpoint.host, "-p", str(redis_endpoint.port), mode, *command],
            capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
        )  # fmt: skip
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout, command


#: RESP3's types, nested: maps (with a multi-line value), sets, verbatim text, doubles, booleans, nulls.
PARITY_COMMANDS_RESP3: list[list[str]] = [
    ["GET", "parity3:missing"],
    ["MGET", "parity:k", "parity3:missing"],
    ["CONFIG", "GET", "maxclients"],
    ["CONFIG", "GET", "no-such-parameter"],
    ["COMMAND", "INFO", "get", "no-such-command"],
    ["COMMAND", "DOCS", "get"],
    ["CLIENT", "GETNAME"],
    ["INFO", "keyspace"],
    ["EVAL", "redis.setresp(3); return {double=3.14}", "0"],
    ["EVAL", "redis.setresp(3); return {double=-1/0}", "0"],
    ["EVAL", "redis.setresp(3); return {true, false, {map={a={1, 2}, b='x'}}}", "0"],
    ["EVAL", "redis.setresp(3); return {map={}}", "0"],
    ["PUBSUB", "NUMSUB", "parity3:channel"],
]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("mode", ["--raw", "--no-raw"])
def test_resp3_output_is_byte_for_byte_what_redis_cli_3_prints(redis_endpoint: Endpoint, mode: str) -> None:
    for command in PARITY_COMMANDS_RESP3:
        ours = cli(redis_endpoint, "-3", mode, *command)
        theirs = subprocess.run(
            ["redis-cli", "-3", "-h", redis_endpoint.host, "-p", str(redis_endpoint.port), mode, *command],
            capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
        )  # fmt: skip
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout, command


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("options", [["--raw"], ["--no-raw"], ["-3", "--raw"], ["-3", "--no-raw"]])
def test_subscribe_prints_messages_as_redis_cli_does(endpoint: Endpoint, options: list[str], tmp_path: Path) -> None:
    """SUBSCRIBE keeps printing messages until Ctrl-C, as redis-cli does: the same bytes, side by side."""
    channel = f"cli-sub:{endpoint.mode}:{'-'.join(options)}"
    where = ["-h", endpoint.host, "-p", str(endpoint.port)]
    commands = {
        "ours": [sys.executable, "-m", "clients.cli", *where, *options],
        "theirs": ["redis-cli", *where, *options],
    }
    outputs = {name: tmp_path / f"{name}.out" for name in commands}
    procs = []
    try:
        for name, command in commands.items():
            with outputs[name].open("wb") as sink:
                procs.append(subprocess.Popen(
                    [*command, "SUBSCRIBE", channel], stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
                ))  # fmt: skip
        deadline = time.monotonic() + CLI_TIMEOUT
        while cli(endpoint, "PUBSUB", "NUMSUB", channel).stdout.split() != [channel, "2"]:
            assert time.monotonic() < deadline, "the two subscribers never both subscribed"
            time.sleep(0.05)
        assert cli(endpoint, "PUBLISH", channel, "hello").stdout.strip() == "2"
        while not all(b"hello" in path.read_bytes() for path in outputs.values()):
            assert time.monotonic() < deadline, {name: path.read_bytes() for name, path in outputs.items()}
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            proc.wait(CLI_TIMEOUT)
    ours, theirs = (outputs[name].read_bytes() for name in ("ours", "theirs"))
    assert ours.split(b"hello")[0] == theirs.split(b"hello")[0]


class Pty:
    """The CLI on a pseudo-terminal, so it runs interactively (prompt, readline) as for a person."""

    def __init__(self, endpoint: Endpoint, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "-h", endpoint.host, "-p", str(endpoint.port)],
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self.output = b""

    def expect(self, needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen in {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"CLI exited before {needle!r}: {self.output!r}")
                self.output += chunk

    def send(self, text: str) -> None:
        self.output = b""
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(CLI_TIMEOUT)
        finally:
            os.close(self.master)


def test_interactive_prompt_replies_completion_and_history(endpoint: Endpoint, tmp_path: Path, key: str) -> None:
    history = tmp_path / "history"
    env = {**os.environ, "TERM": "dumb", "CROSSDOCK_HISTFILE": str(history), "HOME": str(tmp_path)}
    session = Pty(endpoint, env)
    try:
        prompt = f"{endpoint.host}:{endpoint.port}> ".encode()
        session.expect(prompt)
        session.send("PING\r")
        session.expect(b"PONG")
        session.expect(prompt)
        session.send(f"INCR {key}:i\r")
        session.expect(b"(integer) ")
        session.send("NOSUCHCOMMAND\r")
        session.expect(b"(error) ERR unknown command")
        session.send("ECH\t 'from tab'\r")  # Tab completes ECH to ECHO from the server's COMMAND reply
        session.expect(b'"from tab"')
        session.send("AUTH not-a-real-password\r")
        session.expect(prompt)
        session.send("quit\r")
        assert session.close() == 0
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    saved = history.read_text()
    assert "PING" in saved and "ECHO 'from tab'" in saved
    assert "not-a-real-password" not in saved


def test_interactive_ctrl_c_abandons_the_command_not_the_session(crossdock_endpoint: Endpoint, tmp_path: Path) -> None:
    env = {**os.environ, "TERM": "dumb", "CROSSDOCK_HISTFILE": os.devnull, "HOME": str(tmp_path)}
    session = Pty(crossdock_endpoint, env)
    try:
        prompt = f"{crossdock_endpoint.host}:{crossdock_endpoint.port}> ".encode()
        session.expect(prompt)
        session.send("SLEEP 5000\r")
        time.sleep(0.3)
        session.proc.send_signal(signal.SIGINT)
        session.expect(b"(interrupted)")
        session.expect(prompt)
        session.send("PING\r")  # a fresh connection: the abandoned SLEEP reply does not hold it up
        session.expect(b"PONG", timeout=3)
        session.expect(prompt)
        session.output = b""
        # CPython's readline notices a signal only while it waits in select(); a person is never
        # fast enough to hit the instant between the prompt being drawn and that wait, a test is.
        time.sleep(0.3)
        session.proc.send_signal(signal.SIGINT)  # at the prompt: a new prompt, not an exit
        session.expect(prompt)
        session.send("exit\r")
        assert session.close() == 0
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
