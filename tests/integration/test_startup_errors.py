"""Every start-up mistake a user can make on the command line ends in one line naming the flag, the value and what
to do, before the pool starts (server/preflight.py); and ``--modules`` imports from the working directory."""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.preflight import bind_error_message
from server.protocol import ErrorReply
from tests.support import ROOT, ServerProcess

#: Seconds a failing start-up may take: it must fail in the preflight, long before any pool would be warm.
FAIL_BOUND = 30.0

#: The console script the README tells the user to run (the venv's bin is on PATH after `make install`).
CROSSDOCK = str(Path(sys.executable).parent / "crossdock")


def _serve_fails(*flags: str, mode: str = "async", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CROSSDOCK, "serve", "--mode", mode, "--workers", "1", "--log-format", "json", *flags],
        cwd=cwd, capture_output=True, text=True, timeout=FAIL_BOUND, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert not re.search(r'"event": "(pool_ready|started)"', result.stdout), "it started before failing"
    return result


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process (this one) listens on, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_port_in_use_is_one_line_naming_port(mode: str, busy_port: int) -> None:
    result = _serve_fails("--port", str(busy_port), mode=mode)
    line = _one_line(result)
    assert result.returncode == 1
    assert f"--port {busy_port}" in line and "already in use" in line and "choose another port" in line


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_metrics_port_in_use_is_one_line_naming_it(mode: str, busy_port: int) -> None:
    line = _one_line(_serve_fails("--port", "0", "--metrics-port", str(busy_port), mode=mode))
    assert f"--metrics-port {busy_port}" in line and "already in use" in line


def test_metrics_port_equal_to_port_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    line = _one_line(_serve_fails("--port", str(port), "--metrics-port", str(port)))
    assert f"--metrics-port {port}" in line and "same port as --port" in line


def test_unresolvable_host_is_one_line() -> None:
    line = _one_line(_serve_fails("--host", "no-such-host.invalid", "--port", "0"))
    assert "--host no-such-host.invalid" in line and "cannot resolve" in line and "127.0.0.1" in line


def test_host_not_on_this_machine_is_one_line() -> None:
    line = _one_line(_serve_fails("--host", "192.0.2.1", "--port", "0"))  # TEST-NET-1: never a local address
    assert "--host 192.0.2.1" in line and "not an address of this machine" in line


def test_reuseport_port_in_use_is_one_line(busy_port: int) -> None:
    line = _one_line(_serve_fails("--port", str(busy_port), "--reuseport", "2"))
    assert f"--port {busy_port}" in line and "already in use" in line


def test_bad_flag_value_is_one_line() -> None:
    result = _serve_fails("--port", "seventy")
    assert result.returncode == 2
    assert _one_line(result) == "crossdock serve: --port: cannot use 'seventy'"


def test_bind_error_message_for_a_real_bind_failure(busy_port: int) -> None:
    """The function the front ends call when the real bind fails after the preflight passed (a race)."""
    with socket.socket() as sock, pytest.raises(OSError) as caught:
        sock.bind(("127.0.0.1", busy_port))
    message = bind_error_message("--port", "127.0.0.1", busy_port, caught.value)
    assert message.startswith(f"crossdock serve: --port {busy_port}: address 127.0.0.1:{busy_port} is already in use")
    assert "\n" not in message
    denied = bind_error_message("--metrics-port", "0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))
    assert "--metrics-port 80" in denied and "1024" in denied
    other = bind_error_message("--port", "127.0.0.1", 7379, OSError(errno.ENOBUFS, "No buffer space available"))
    assert "--port 7379" in other and "No buffer space available" in other


# -- --modules from the working directory (README "Adding a command") --------------------------------------------------
def _readme_module(folder: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n# mycommands.py\n(.*?)```", readme, re.S)
    assert match, "the README lost its command example"
    (folder / "mycommands.py").write_text(match.group(1))


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_console_script_imports_modules_from_working_directory(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``crossdock serve --modules mycommands`` from the module's folder, with no PYTHONPATH, as the README says."""
    _readme_module(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    process = ServerProcess(mode, "pool", ["--modules", "mycommands"], program=[CROSSDOCK], cwd=tmp_path)
    try:
        with process.connect() as conn:
            assert conn.call("UPPER", "hello") == b"HELLO"
            assert conn.call("FIB", 90) == 2880067194370816120  # computed in a pool worker: it imported it too
            assert conn.call("FIB", 100_001) == ErrorReply("ERR n must be between 0 and 100000")
    finally:
        assert process.stop() == 0


def test_missing_module_is_one_line(tmp_path: Path) -> None:
    result = _serve_fails("--port", "0", "--modules", "nosuchmodule", cwd=tmp_path)
    assert result.returncode == 2
    line = _one_line(result)
    assert "--modules nosuchmodule" in line and str(tmp_path) in line and "PYTHONPATH" in line


def test_a_port_taken_after_the_preflight_check_is_still_one_line() -> None:
    """The race the preflight cannot close: the real bind fails; both front ends say which flag, stop the pool."""
    import asyncio
    import socket

    import uvloop

    from server.config import Config
    from server.errors import StartupError
    from server.frontends.aio import AsyncServer
    from server.frontends.threaded import ThreadedServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(port=port, cpu="inline", metrics_port=-1)
        for start in (
            lambda: asyncio.Runner(loop_factory=uvloop.new_event_loop).run(AsyncServer(config).start()),
            lambda: ThreadedServer(config).start(),
        ):
            try:
                start()
            except StartupError as exc:
                message = str(exc)
            else:
                raise AssertionError("the bind should have failed")
            assert "\n" not in message and f"--port {port}" in message and "already in use" in message
