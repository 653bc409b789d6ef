"""The README is executable truth: every shell and Python block runs as written and prints what the README shows.

Blocks run in README order in one scratch folder, with the virtual
environment activated the way the README tells the user (its ``setup``
block, run in the repository), against the servers the README starts.
Markers, HTML comments on the line before a fence, say how a block is used:

* ``<!-- readme-test: skip REASON -->``: not run (``make run`` serves until
  Ctrl-C, docker, interactive sessions); the reason is required, and
  :func:`test_every_skip_says_why` lists them, so skipping stays deliberate.
* ``<!-- readme-test: setup -->``: sourced in the repository before every
  other block (it puts the venv's bin on PATH).
* ``<!-- readme-test: file NAME -->``: written to NAME in the scratch folder.
* ``<!-- readme-test: server -->``: one command that starts a server; it is
  started in the background and is the server every later block talks to.
  Before the first one, ``crossdock serve`` runs, as ``make run`` starts it.
* ``<!-- readme-test: output -->``: what the Python block before it prints.
* ``<!-- readme-test: run-only REASON -->``: run, must succeed, output not
  compared (figures that vary from run to run).

``console`` blocks are ``$ command`` lines, each followed by the output it
must print (stdout on a terminal, as a person sees it; CRLF read as LF).
``sh`` blocks run as one bash script that must exit 0. The README's port,
7379, is replaced by a free port everywhere (servers get ``CROSSDOCK_PORT``),
so the test never collides with a server already running on this machine.
Blocks with no language or ``text`` (the Layout tree) are prose.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

README = ROOT / "README.md"

#: The port the README uses; replaced by a free one in every command, output and program.
README_PORT = "7379"

#: Seconds a README server may take to open its port (pool pre-warm included); as tests/support.py's start-up bound.
STARTUP_TIMEOUT = 30.0

#: Seconds one block may run: the longest (a load test of a few seconds, redis-benchmark) takes well under this.
BLOCK_TIMEOUT = 120.0

#: Seconds a README server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0

_MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>[a-z-]+)\s*(?P<detail>.*?)\s*-->")
_FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    marker: str = ""
    detail: str = ""


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block with its language, first line number and the marker on the line before it."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.fullmatch(before.strip())
        blocks.append(
            Block(
                match.group("lang"),
                match.group("body"),
                text.count("\n", 0, match.start()) + 1,
                marker.group("kind") if marker else "",
                marker.group("detail") if marker else "",
            )
        )
    return blocks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Session:
    """The reader's shell: the scratch folder, the environment after the setup block, the current server."""

    def __init__(self, scratch: Path, setup: str) -> None:
        self.scratch = scratch
        self.setup = setup
        self.port = str(_free_port())
        self.servers: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "CROSSDOCK_PORT": self.port}
        self.env.pop("PYTHONPATH", None)  # the README never sets it: nothing may depend on it

    def script(self, commands: str) -> str:
        """Bash that activates as the README says (in the repository), then runs ``commands`` in the scratch folder."""
        return f"set -e\ncd {ROOT}\n{self.setup}\ncd {self.scratch}\n{self.localize(commands)}"

    def localize(self, text: str) -> str:
        return text.replace(README_PORT, self.port)

    def start_server(self, command: str, where: str) -> None:
        self.stop_servers()
        self.port = self.env["CROSSDOCK_PORT"] = str(_free_port())
        log = self.scratch / f"server-{len(self.servers)}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                ["bash", "-c", self.script("exec " + command)],
                env=self.env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.servers.append(proc)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(self.port)), timeout=1).close()
                return
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{where}: `{command}` did not open port {self.port}:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop_servers(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def run_sh(self, body: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.script(body)], env=self.env, cwd=self.scratch, capture_output=True, text=True,
            timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def run_in_terminal(self, command: str) -> tuple[int, str, str]:
        """Run one console command with stdout on a terminal (as a person sees it); (status, stdout, stderr)."""
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            ["bash", "-c", self.script(command)], env=self.env, stdout=slave, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(slave)
        output = b""
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"`{command}` did not finish within {BLOCK_TIMEOUT} s: {output[-500:]!r}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    chunk = b""
                if chunk:
                    output += chunk
                    continue
                break
            if proc.poll() is not None and not select.select([master], [], [], 0)[0]:
                break
        os.close(master)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        status = proc.wait(STOP_TIMEOUT)
        # The terminal turns LF into CRLF (and a CRLF a program wrote into CR CR LF); a reader sees line breaks.
        text = output.decode(errors="replace").replace("\r\r\n", "\n").replace("\r\n", "\n")
        return status, text, stderr


def _console_steps(body: str) -> Iterator[tuple[str, str]]:
    """(command, expected output) for each ``$ `` line of a console block."""
    command: str | None = None
    expected: list[str] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, "\n".join(expected)
            command, expected = line[2:], []
        else:
            expected.append(line)
    if command is not None:
        yield command, "\n".join(expected)


def _setup_block(blocks: list[Block]) -> str:
    setups = [block.body for block in blocks if block.marker == "setup"]
    assert len(setups) == 1, "the README must have exactly one setup block (how crossdock gets on PATH)"
    return setups[0]


def test_every_skip_says_why() -> None:
    blocks = readme_blocks(README.read_text())
    unknown = [b for b in blocks if b.marker not in ("", "skip", "setup", "file", "server", "output", "run-only")]
    assert not unknown, f"unknown readme-test markers: {unknown}"
    for block in blocks:
        if block.marker in ("skip", "run-only"):
            assert block.detail, f"README line {block.line}: a {block.marker} marker needs a reason"
    runnable = [b for b in blocks if b.lang in ("sh", "console", "python") and b.marker != "skip"]
    assert len(runnable) > len([b for b in blocks if b.marker == "skip"]), "most of the README must run"


def test_readme_bounds_are_the_server_s() -> None:
    from server.commands.cpu import FACTOR_MAX_N, PBKDF2_MAX_ITERATIONS, PRIMES_MAX_N

    text = README.read_text()
    assert f"0 <= n <= {PRIMES_MAX_N:,}" in text
    assert f"iterations 1..{PBKDF2_MAX_ITERATIONS:,}" in text
    assert FACTOR_MAX_N == 10**15 and "1 <= n <= 10^15" in text


@pytest.mark.skipif(shutil.which("redis-cli") is None or shutil.which("nc") is None, reason="needs redis-tools and nc")
def test_readme_runs_as_written(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("no .venv in the repository: the README's set-up is `make install` (CI does it)")
    blocks = readme_blocks(README.read_text())
    session = Session(tmp_path, _setup_block(blocks))
    try:
        session.start_server("crossdock serve", "before the first block (what `make run` starts)")
        for index, block in enumerate(blocks):
            where = f"README line {block.line}"
            if block.marker in ("skip", "setup", "output") or block.lang not in ("sh", "console", "python"):
                continue
            if block.marker == "file":
                (tmp_path / block.detail).write_text(session.localize(block.body))
            elif block.marker == "server":
                command = block.body.strip().split("  #", 1)[0]
                assert "\n" not in command, f"{where}: a server block is one command"
                session.start_server(command, where)
            elif block.lang == "sh":
                result = session.run_sh(block.body)
                assert result.returncode == 0, f"{where}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
            elif block.lang == "console":
                for command, expected in _console_steps(block.body):
                    status, stdout, stderr = session.run_in_terminal(command)
                    assert status == 0, f"{where}: `{command}` exited {status}: {stderr}"
                    if block.marker != "run-only":
                        assert stdout.rstrip("\n") == session.localize(expected), f"{where}: `{command}`"
            else:  # python, run by the venv's python as the reader would paste it
                result = session.run_sh("python - <<'README_PYTHON'\n" + block.body + "README_PYTHON\n")
                assert result.returncode == 0, f"{where}: exit {result.returncode}\n{result.stderr}"
                following = blocks[index + 1] if index + 1 < len(blocks) else None
                if following is not None and following.marker == "output":
                    assert result.stdout == session.localize(following.body), f"{where}: output"
    finally:
        session.stop_servers()
