"""``--executor dask://HOST:PORT``: cpu commands on a real Dask cluster, both front ends.

The scheduler and workers are real ``dask scheduler`` / ``dask worker`` subprocesses of this venv on
loopback; crossdock is a real server subprocess. Each test is bounded: processes wait for a ready
line or file within :data:`DASK_START_TIMEOUT`, polls end after :data:`RECOVERY_TIMEOUT`, and every
socket read is bounded by the support module's timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from server.commands.cpu import count_primes
from server.cpu.jobs import timeout_error
from server.protocol import ErrorReply, encode_command
from tests.support import ROOT, RespSocket, ServerProcess, info_fields

#: The dask CLI of the interpreter running the tests (the venv's, where crossdock is installed).
DASK = str(Path(sys.executable).with_name("dask"))

#: Seconds a scheduler or worker may take to be ready: about 1 s when the machine is idle.
DASK_START_TIMEOUT = 30.0

#: Seconds a test polls for crossdock to use a cluster that came back (it does in about 1 s).
RECOVERY_TIMEOUT = 60.0

#: Seconds within which a timed-out job must leave the books: far less than its 60 s spin, so only a
#: cancelled Dask future can meet it.
CANCEL_BOUND = 30.0

#: Seconds a server must need to give up at start-up (CONNECT_TIMEOUT is 5 s; the rest is slack).
START_FAILURE_TIMEOUT = 60.0

#: A --modules module loaded by crossdock and the workers: DIVIDE has a result, a CommandError and an
#: unexpected exception, to compare replies from both executors; SPIN is busy for a set wall time, so
#: a timeout does not depend on how loaded the machine is.
COMMAND_MODULE = "dask_test_commands"
COMMAND_SOURCE = '''
import time

from server.commands import CommandError, bounded_int, cpu_command


@cpu_command("SPIN", arity=2, argspec=(bounded_int("ms", 0, 60_000),))
def spin(ms: int) -> int:
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        pass
    return ms


@cpu_command("DIVIDE", arity=3, argspec=(bounded_int("a", -1000, 1000), bounded_int("b", -1000, 1000)))
def divide(a: int, b: int) -> int:
    if a < 0:
        raise CommandError("ERR a must not be negative")
    return a // b
'''


class DaskProcess:
    """One ``dask scheduler`` or ``dask worker`` subprocess; ready once ``ready`` appears in its log."""

    def __init__(self, args: Sequence[str], env: dict[str, str], ready: str) -> None:
        self.proc = subprocess.Popen(
            [DASK, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        self.lines: list[str] = []
        self._ready_text = ready
        self._ready = threading.Event()
        threading.Thread(target=self._read_logs, daemon=True).start()
        if not self._ready.wait(DASK_START_TIMEOUT) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"dask {args[0]} did not start: {self.lines[-20:]}")

    def _read_logs(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if self._ready_text in line:
                self._ready.set()
        self._ready.set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class DaskCluster:
    """A scheduler on 127.0.0.1 (port 0, or a given one to come back on) and its workers."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.scheduler: DaskProcess | None = None
        self.workers: list[DaskProcess] = []
        self.address = ""
        self.port = 0
        self._starts = 0

    def start_scheduler(self, port: int = 0) -> None:
        """Start the scheduler; its address comes from ``--scheduler-file`` (no log parsing)."""
        self._starts += 1
        scheduler_file = self.directory / f"scheduler-{self._starts}.json"
        self.scheduler = DaskProcess(
            [
                "scheduler", "--host", "127.0.0.1", "--port", str(port),
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
            ],
            self.env,
            ready="Scheduler at:",
        )  # fmt: skip
        deadline = time.monotonic() + DASK_START_TIMEOUT
        while True:
            try:
                self.address = json.loads(scheduler_file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise RuntimeError("the scheduler wrote no scheduler file") from None
                time.sleep(0.05)
        self.port = int(self.address.rsplit(":", 1)[1])

    def start_worker(self, threads: int = 2) -> None:
        """A worker without a nanny: it exits when its scheduler goes away, as a lost machine would."""
        self.workers.append(
            DaskProcess(
                [
                    "worker", self.address, "--host", "127.0.0.1", "--nthreads", str(threads), "--no-nanny",
                    "--dashboard-address", "127.0.0.1:0", "--local-directory", str(self.directory),
                ],
                self.env,
                ready="Registered to:",
            )
        )  # fmt: skip

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()

    def stop(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.scheduler is not None:
            self.scheduler.kill()

    @property
    def executor(self) -> str:
        return f"dask://127.0.0.1:{self.port}"


def _python_path(directory: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PYTHONPATH with the test command module, for crossdock and the workers alike."""
    directory = tmp_path_factory.mktemp("dask-modules")
    (directory / f"{COMMAND_MODULE}.py").write_text(COMMAND_SOURCE)
    return _python_path(directory)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, module_env: dict[str, str]) -> Iterator[DaskCluster]:
    """A scheduler and one worker, shared by the tests that do not break it."""
    running = DaskCluster(tmp_path_factory.mktemp("dask-cluster"), module_env)
    try:
        running.start_scheduler()
        running.start_worker()
        yield running
    finally:
        running.stop()


def _serve(mode: str, executor: str, env: dict[str, str], *extra: str) -> ServerProcess:
    return ServerProcess(mode, "pool", ["--executor", executor, "--modules", COMMAND_MODULE, *extra], env=env)


def _crossdock_info(conn: RespSocket) -> dict[str, str]:
    """INFO's crossdock and pool sections (executor fields, cpu-job counters) as one dict."""
    return info_fields(conn, "crossdock", "pool")


def _poll(conn_call: Callable[..., object], command: tuple[object, ...], wanted: object) -> list[object]:
    """Send ``command`` until the reply is ``wanted`` (bounded); returns every reply seen."""
    seen: list[object] = []
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        seen.append(conn_call(*command))
        if seen[-1] == wanted:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"never got {wanted!r}; last replies {seen[-5:]!r}")


@pytest.fixture(scope="module", params=["async", "threaded"])
def servers(
    request: pytest.FixtureRequest, cluster: DaskCluster, module_env: dict[str, str]
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(crossdock on the process pool, crossdock on the Dask cluster), one front end per param."""
    process = _serve(request.param, "process", module_env)
    try:
        dask = _serve(request.param, cluster.executor, module_env)
    except BaseException:
        process.stop()
        raise
    yield process, dask
    for server in (process, dask):
        assert server.stop() == 0


#: Cpu requests and the replies both executors must give: results, bounds refused on the front end,
#: and both kinds of error raised in a worker.
SAME_REPLIES: list[tuple[tuple[object, ...], object]] = [
    (("PRIMES", 0), 0),
    (("PRIMES", 100_000), 9592),
    (("PRIMES", -1), ErrorReply("ERR n must be between 0 and 50000000")),
    (("FACTOR", 1), []),
    (("FACTOR", 360), [2, 2, 2, 3, 3, 5]),
    (("FACTOR", 999_983 * 1_000_003), [999_983, 1_000_003]),
    (("PBKDF2", "pw", "salt", 1000), b"0a38253555ce37f5c72a6b703f996814ebf241f203af146e93dcdeb031c5567e"),
    (("PBKDF2", "", "", 1), None),  # compared between executors only
    (("DIVIDE", 7, 2), 3),
    (("DIVIDE", -1, 2), ErrorReply("ERR a must not be negative")),
    (("DIVIDE", 1, 0), ErrorReply("ERR ZeroDivisionError: integer division or modulo by zero")),
]


def test_cpu_replies_match_the_process_pool(servers: tuple[ServerProcess, ServerProcess]) -> None:
    process, dask = servers
    with process.connect() as on_process, dask.connect() as on_dask:
        for command, expected in SAME_REPLIES:
            reply = on_dask.call(*command)
            assert reply == on_process.call(*command), command
            if expected is not None:
                assert reply == expected, command


def test_pipelined_cpu_requests_answer_in_order(servers: tuple[ServerProcess, ServerProcess]) -> None:
    _process, dask = servers
    # Large requests first: on two worker threads the small ones finish first, the replies must not.
    sizes = [3_000_000, 10, 1_000_000, 2, 200_000, 0, 50_000, 1, 500_000, 100, 30, 7] * 2
    with dask.connect() as conn:
        request = b"".join(f"PRIMES {n}\r\nPING\r\n".encode() for n in sizes)
        conn.send_raw(request)
        replies = [conn.read_reply() for _ in range(2 * len(sizes))]
    expected: list[object] = []
    for n in sizes:
        expected += [count_primes(n), "PONG"]
    assert replies == expected


def test_info_reports_the_executor(servers: tuple[ServerProcess, ServerProcess], cluster: DaskCluster) -> None:
    process, dask = servers
    with dask.connect() as conn:
        info = conn.call("INFO", "crossdock")
    assert isinstance(info, bytes)
    assert b"executor:dask\r\n" in info
    assert f"executor_address:{cluster.address}\r\n".encode() in info
    assert b"executor_workers:1\r\n" in info
    with process.connect() as conn:
        info = conn.call("INFO", "crossdock")
    assert isinstance(info, bytes)
    assert b"executor:process\r\n" in info and b"executor_workers:2\r\n" in info


def test_cpu_timeout_cancels_the_dask_task(tmp_path: Path, module_env: dict[str, str]) -> None:
    """A job past --cpu-timeout is answered with the timeout error in its place, and its Dask future is
    cancelled: the books return to 0 long before the 60 s spin could end (the worker thread still spins:
    Dask cannot interrupt it, which is why this test has a cluster of its own). The timeout counts from
    the job's start on the worker, whose pid the start event carries."""
    cluster = DaskCluster(tmp_path, module_env)
    servers: list[ServerProcess] = []
    try:
        cluster.start_scheduler()
        cluster.start_worker(threads=3)  # one spinning thread per front end, one for the PRIMES after
        worker_pid = cluster.workers[0].proc.pid
        servers += [_serve(mode, cluster.executor, module_env, "--cpu-timeout", "1") for mode in ("async", "threaded")]
        for server in servers:
            with server.connect() as conn, server.connect() as other:
                conn.send_raw(encode_command("SPIN", 60_000) + encode_command("PING"))
                assert conn.read_reply() == ErrorReply(timeout_error("spin", 1))
                assert conn.read_reply() == "PONG"
                assert conn.call("PRIMES", 1000) == 168
                assert _crossdock_info(other)["cpu_timeouts"] == "1"
                deadline = time.monotonic() + CANCEL_BOUND
                while _crossdock_info(other)["cpu_jobs_in_flight"] != "0":
                    assert time.monotonic() < deadline, "the timed-out job was not cancelled"
                    time.sleep(0.1)
            assert [event["pid"] for event in server.events("cpu_timeout")] == [worker_pid]
    finally:
        for server in servers:
            server.stop()
        cluster.stop()
    assert [server.proc.returncode for server in servers] == [0, 0]


def test_worker_loss_answers_queued_jobs_and_bounds_running_ones(tmp_path: Path, module_env: dict[str, str]) -> None:
    """The only worker dies (scheduler alive): a queued request is answered `has no workers` rather than left
    waiting; the running one, rescheduled by Dask with nowhere to run, gets the cpu timeout; a new worker
    serves again. The async front end only: this is the pool's behaviour, the same under both."""
    cluster = DaskCluster(tmp_path, module_env)
    server: ServerProcess | None = None
    try:
        cluster.start_scheduler()
        cluster.start_worker(threads=1)
        server = _serve("async", cluster.executor, module_env, "--cpu-timeout", "2")
        with server.connect() as running, server.connect() as queued, server.connect() as other:
            running.send("SPIN", 60_000)
            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while _crossdock_info(other)["cpu_jobs_running"] != "1":
                assert time.monotonic() < deadline, "SPIN never started"
                time.sleep(0.05)
            queued.send("PRIMES", 1000)
            cluster.workers[0].kill()
            no_workers = ErrorReply(f"ERR cpu executor unavailable: dask cluster at {cluster.address} has no workers")
            assert queued.read_reply() == no_workers
            assert running.read_reply() == ErrorReply(timeout_error("spin", 2))
            assert other.call("PRIMES", 1000) == no_workers
            cluster.start_worker(threads=1)
            _poll(other.call, ("PRIMES", 1000), 168)
    finally:
        if server is not None:
            server.stop()
        cluster.stop()
    assert server is not None and server.proc.returncode == 0


def test_scheduler_loss_and_return(tmp_path: Path, module_env: dict[str, str]) -> None:
    """Scheduler killed: PING answers, cpu requests get the error at once; back on its port: they work."""
    cluster = DaskCluster(tmp_path, module_env)
    started: list[ServerProcess] = []
    try:
        cluster.start_scheduler()
        cluster.start_worker()
        started += [_serve(mode, cluster.executor, module_env) for mode in ("async", "threaded")]
        conns = [server.connect() for server in started]
        for conn in conns:
            assert conn.call("PRIMES", 1000) == 168
            conn.send("PRIMES", 20_000_000)  # in flight (or about to be) when the scheduler dies

        cluster.kill_scheduler()
        unreachable = f"ERR cpu executor unavailable: dask scheduler at {cluster.address}"
        for conn in conns:
            in_flight = conn.read_reply()
            assert isinstance(in_flight, ErrorReply) and in_flight.startswith(unreachable), in_flight
            assert conn.call("PING") == "PONG"
            assert conn.call("SET", "still", "here") == "OK"
            assert conn.call("PRIMES", 1000) == ErrorReply(f"{unreachable} unreachable")
            assert conn.call("GET", "still") == b"here"

        cluster.start_scheduler(port=cluster.port)
        no_workers = ErrorReply(f"ERR cpu executor unavailable: dask cluster at {cluster.address} has no workers")
        for conn in conns:
            for reply in _poll(conn.call, ("PRIMES", 1000), no_workers):
                assert isinstance(reply, ErrorReply) and reply.startswith("ERR cpu executor unavailable: "), reply

        cluster.start_worker()
        for conn in conns:
            _poll(conn.call, ("PRIMES", 1000), 168)
            assert conn.call("FACTOR", 360) == [2, 2, 2, 3, 3, 5]
            conn.close()
        # No assertion on the dask_scheduler_lost log line: the supervisor samples the Client's status every
        # SUPERVISE_INTERVAL, and a Client that reconnects between two samples is never seen lost.
    finally:
        for server in started:
            server.stop()
        cluster.stop()
    assert [server.proc.returncode for server in started] == [0, 0]


def _start_and_fail(*commands: Sequence[str]) -> list[tuple[int, list[dict[str, object]]]]:
    """Run server commands that must exit by themselves, side by side; each one's exit status and JSON logs."""
    procs = [
        subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        for args in commands
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=START_FAILURE_TIMEOUT)
        finally:
            proc.kill()
        lines = []
        for raw in out.decode(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        results.append((proc.wait(), lines))
    return results


SERVE = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0", "--log-format", "json"]


def test_unreachable_scheduler_fails_start() -> None:
    """Both front ends, side by side (each waits out the connect timeout)."""
    # A bound socket that never listens holds the port: connecting is refused for the whole test.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        executor = ["--executor", f"dask://127.0.0.1:{port}"]
        results = _start_and_fail(*([*SERVE, "--mode", mode, *executor] for mode in ("async", "threaded")))
    for status, lines in results:
        assert status == 1
        failed = [line for line in lines if line.get("event") == "cpu_executor_failed"]
        assert failed and f"dask scheduler at tcp://127.0.0.1:{port} unreachable" in str(failed[0]["detail"])
        assert not [line for line in lines if line.get("event") == "started"]


def test_missing_extra_fails_start() -> None:
    # ``import distributed`` fails as it would without the dask extra installed.
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from server.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    [(status, lines)] = _start_and_fail([sys.executable, "-c", code, *SERVE[3:], "--executor", "dask://127.0.0.1:8786"])
    assert status == 1
    failed = [line for line in lines if line.get("event") == "cpu_executor_failed"]
    assert failed and "pip install 'crossdock[dask]'" in str(failed[0]["detail"])


def test_malformed_address_fails_start() -> None:
    [(status, lines)] = _start_and_fail([*SERVE, "--executor", "dask://no-port"])
    assert status == 1
    assert any("dask://HOST:PORT" in str(line.get("detail")) for line in lines)
