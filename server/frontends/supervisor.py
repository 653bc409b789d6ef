"""``crossdock serve --reuseport N``: N front-end processes on one port, supervised by a parent that does not serve.

Linux's ``SO_REUSEPORT`` lets several listening sockets share one address and
port; the kernel hashes each new connection to one of them. So N ordinary
``crossdock serve`` processes (asyncio front end, each with its own event loop
and its own share of the cpu pool) can use N cores for the front-end work that
one event loop does on one core.

The parent (:func:`run`) is a small supervisor:

* it reserves the port first: it binds (never listens on) a ``SO_REUSEPORT``
  socket, which turns ``--port 0`` into one concrete port all children share,
  and keeps the port held while a child is being restarted. A bound socket
  that does not listen gets no connections: only listeners join the kernel's
  reuseport group;
* it starts N children, ``python -m server serve`` with the whole
  configuration passed as ``CROSSDOCK_*`` variables (so ``--requirepass`` is
  not visible in ``ps``), the concrete port, ``--workers`` split between them
  (each at least 1) and :data:`ENV_INSTANCE` / :data:`ENV_SUPERVISOR` telling
  them they are instance *i* of this supervisor. A child binds with
  ``reuse_port=True`` because its ``reuseport`` setting is N (see
  :mod:`server.frontends.aio`), and runs in its own process group, so a Ctrl-C at a
  terminal reaches the supervisor only, which forwards it once;
* a child is ready when it has a listening socket on the port, read from
  ``/proc`` (``/proc/<pid>/fd`` against ``/proc/net/tcp{,6}``): the children
  are unmodified servers, and "listening" is exactly what matters for
  ``SO_REUSEPORT``. The pool is started and pre-warmed before a server listens,
  so listening means ready. Once every child is ready the supervisor logs
  ``started`` with the port, like the single server;
* a child that exits without being asked to is restarted after a back-off
  (:data:`RESTART_BACKOFF_INITIAL` doubling up to :data:`RESTART_BACKOFF_MAX`,
  reset after :data:`STABLE_UPTIME`). More than :data:`CRASH_LOOP_LIMIT` exits
  of one instance within :data:`CRASH_LOOP_WINDOW` is a crash loop: the
  supervisor stops the others and exits 1, so whatever supervises *it*
  (systemd, Docker's restart policy) sees the failure;
* SIGINT/SIGTERM are forwarded to every child, which shuts down gracefully as
  a single server does; the supervisor waits for them and exits 0 when all
  exited 0. A second signal is forwarded too (children exit at once) and the
  supervisor exits 1. If the supervisor itself is killed, each child gets
  SIGTERM from the kernel (``PR_SET_PDEATHSIG``, set by :func:`prepare_child`).

The keyspace is per instance: each child has its own, and a client sees the
keys of whichever child the kernel handed its connection to. INFO says so
(``keyspace_scope:per-instance``, with ``reuseport_instance`` and
``supervisor_pid``); docs/deployment.md says how to get one shared keyspace.

Only the asyncio front end can be multiplied this way; ``--mode threaded`` is
refused (it is the legacy baseline kept for comparison), and so is any OS but
Linux, where ``SO_REUSEPORT`` does not balance connections between listeners.

Error handling: a child that exits before it is ready during start-up (bad
TLS file, port taken by another user's socket) stops the start: the others are
stopped and the supervisor exits with that child's status (1 if it was
killed), since a retry would fail the same way. A
child that does not become ready within :data:`CHILD_START_TIMEOUT` is treated
the same. A child that outlives ``--shutdown-timeout`` plus
:data:`CHILD_EXIT_GRACE` after the shutdown signal is killed and the exit
status is 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any

import structlog

from server.config import ENV_PREFIX, Config
from server.errors import CrossdockError
from server.observability.instance import ENV_INSTANCE, ENV_SUPERVISOR, supervised_instance
from server.preflight import bind_error_message

log = structlog.get_logger("crossdock.supervisor")

#: Seconds before the first restart of a crashed child: long enough that a child crashing at once does not spin a
#: core, short enough that the port's share of connections comes back quickly.
RESTART_BACKOFF_INITIAL = 0.5
#: Cap on the doubling back-off between restarts of one instance.
RESTART_BACKOFF_MAX = 30.0
#: A child that ran this long before exiting was healthy: its back-off starts again from the initial value.
STABLE_UPTIME = 30.0
#: Exits of one instance within :data:`CRASH_LOOP_WINDOW` that make the supervisor give up. With the back-off
#: above, five exits take at least 7.5 s, so a child that dies at once is retried for several seconds, not forever.
CRASH_LOOP_LIMIT = 5
CRASH_LOOP_WINDOW = 60.0
#: Seconds a child may take from exec to listening. Start-up pre-warms its pool (every worker answers once),
#: which takes about a second on an idle machine; a loaded CI machine can be far slower.
CHILD_START_TIMEOUT = 60.0
#: Seconds past ``--shutdown-timeout`` a child may take to exit after the signal before it is killed: its own
#: shutdown closes connections at the timeout, then stops its pool.
CHILD_EXIT_GRACE = 10.0
#: Seconds between checks while waiting for children to listen (/proc reads; only during start and restarts).
READY_POLL_INTERVAL = 0.05
#: Longest the main loop sleeps without a signal: bounds how late a due restart or a deadline is noticed.
TICK = 0.5

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_TCP_LISTEN = "0A"  # st column of /proc/net/tcp for a listening socket


class SupervisorError(CrossdockError):
    """The supervisor cannot run with this configuration (message for the user; exit 2)."""


def worker_shares(workers: int, instances: int) -> list[int]:
    """Split ``--workers`` between the instances, the remainder to the first ones, at least 1 each."""
    base, extra = divmod(workers, instances)
    return [max(1, base + (1 if i < extra else 0)) for i in range(instances)]


def prepare_child() -> None:
    """In a supervised child: ask the kernel for SIGTERM when the supervisor dies, so no child is orphaned.

    Error handling: where prctl is unavailable the child simply runs on; if
    the supervisor is already gone the child stops itself at once.
    """
    supervised = supervised_instance()
    if supervised is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervised[1]:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def check(config: Config) -> None:
    """Refuse what ``--reuseport`` cannot do. Raises :class:`SupervisorError` with the reason."""
    if config.mode != "async":
        raise SupervisorError(
            "--reuseport needs --mode async: the threaded front end is the legacy baseline and is not multiplied"
        )
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise SupervisorError("--reuseport needs Linux: elsewhere SO_REUSEPORT does not balance connections")


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def child_environment(config: Config, index: int, port: int, workers: int) -> dict[str, str]:
    """The environment of instance ``index``: the whole configuration as ``CROSSDOCK_*`` plus the instance marks.

    Every field is set, so a stray variable in the supervisor's environment
    cannot change a child. A fixed ``--metrics-port P`` becomes ``P + index``
    (one metrics endpoint per instance; 0 lets each pick one, -1 stays off).
    """
    env = dict(os.environ)
    for item in fields(config):
        env[ENV_PREFIX + item.name.upper()] = _env_value(getattr(config, item.name))
    metrics_port = config.metrics_port + index if config.metrics_port > 0 else config.metrics_port
    env.update(
        {
            ENV_PREFIX + "PORT": str(port),
            ENV_PREFIX + "WORKERS": str(workers),
            ENV_PREFIX + "METRICS_PORT": str(metrics_port),
            ENV_INSTANCE: str(index),
            ENV_SUPERVISOR: str(os.getpid()),
        }
    )
    return env


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket: learns the port for ``--port 0`` and holds it.

    Error handling: ``OSError`` (address in use by a socket without
    SO_REUSEPORT, bad host) propagates; :func:`run` reports it and exits 1.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as table:
                next(table, None)
                for line in table:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == _TCP_LISTEN and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    return inodes


def is_listening(pid: int, port: int) -> bool:
    """True when process ``pid`` holds a socket listening on ``port`` (Linux /proc; no privilege needed)."""
    listening = _listening_inodes(port)
    if not listening:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:[") and target[8:-1] in listening:
                return True
    return False


@dataclass
class Instance:
    """One child slot: the process now in it, and its crash history for the back-off."""

    index: int
    workers: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    restart_at: float | None = None
    consecutive_crashes: int = 0
    exits: list[float] = field(default_factory=list)
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


class Supervisor:
    """Starts, watches, restarts and stops the N children. :meth:`run` returns the exit status."""

    def __init__(self, config: Config, argv_prefix: list[str] | None = None) -> None:
        self.config = config
        self.argv = argv_prefix or [sys.executable, "-m", "server", "serve"]
        self.instances = [
            Instance(index=i, workers=w) for i, w in enumerate(worker_shares(config.workers, config.reuseport))
        ]
        self.port = 0
        self._first_signal: int = signal.SIGTERM
        #: Exit status when a child could not start: the child's own (2 for a configuration error such as a bad
        #: TLS file), so the supervisor fails the way a single server would.
        self._start_failure = 1
        #: The signal wake-up socket pair (made by _install_signals): the C-level handler writes to the second.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # -- processes --------------------------------------------------------------------------
    def _spawn(self, instance: Instance) -> None:
        env = child_environment(self.config, instance.index, self.port, instance.workers)
        instance.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL, process_group=0)
        instance.started_at = time.monotonic()
        instance.ready = False
        instance.restart_at = None

    def _signal_children(self, signum: int) -> None:
        for instance in self.instances:
            if instance.proc is not None and instance.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    instance.proc.send_signal(signum)

    @staticmethod
    def _kill_leftovers(pid: int) -> None:
        """SIGKILL what is left in a dead child's process group: its pool's forkserver, workers, resource tracker.

        A child killed outright (SIGKILL, OOM killer) does not shut its pool down, and those processes do not
        notice on their own; every crash would leak them. The group id is the child's pid (it was started with
        ``process_group=0``), and Linux hands out no new pid equal to a live group's id, so this reaches only
        that child's descendants.
        """
        if pid <= 1:  # no process in the slot: killpg(0) would be our own group
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _live(self) -> list[Instance]:
        return [i for i in self.instances if i.proc is not None and i.proc.poll() is None]

    # -- signals ----------------------------------------------------------------------------
    def _install_signals(self) -> None:
        """Handlers do nothing; the C-level handler writes the signal number to the wake-up socket."""
        self._wake_r, wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_w = wake_w  # kept open for the process's life
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, lambda _s, _f: None)

    def _wait(self, timeout: float) -> list[int]:
        """Sleep until a signal arrives or ``timeout`` passes; the signal numbers received."""
        assert self._wake_r is not None, "signals are installed first"
        ready, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        received: list[int] = []
        if ready:
            with contextlib.suppress(BlockingIOError):
                received.extend(self._wake_r.recv(256))
        return [s for s in received if s != signal.SIGCHLD]

    # -- the phases -------------------------------------------------------------------------
    def _start_all(self) -> str:
        """Start every child and wait until each listens: ``"ready"``, ``"signal"`` or ``"failed"``."""
        for instance in self.instances:
            self._spawn(instance)
        deadline = time.monotonic() + CHILD_START_TIMEOUT
        while not all(i.ready for i in self.instances):
            signals = self._wait(READY_POLL_INTERVAL)
            if signals:
                self._first_signal = signals[0]
                return "signal"
            for instance in self.instances:
                if instance.ready:
                    continue
                assert instance.proc is not None
                code = instance.proc.poll()
                if code is not None:
                    log.error("instance_failed_to_start", instance=instance.index, pid=instance.pid, exit_code=code)
                    self._start_failure = code if code > 0 else 1
                    return "failed"
                if is_listening(instance.pid, self.port):
                    instance.ready = True
                    log.info("instance_started", instance=instance.index, pid=instance.pid, workers=instance.workers)
            if time.monotonic() > deadline:
                log.error("instances_start_timeout", timeout=CHILD_START_TIMEOUT)
                return "failed"
        return "ready"

    def _on_exit(self, instance: Instance, code: int) -> bool:
        """A child exited unasked: schedule its restart. False when this is a crash loop."""
        now = time.monotonic()
        ran = now - instance.started_at
        instance.exits = [t for t in instance.exits if now - t < CRASH_LOOP_WINDOW] + [now]
        instance.consecutive_crashes = 1 if ran >= STABLE_UPTIME else instance.consecutive_crashes + 1
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_INITIAL * 2 ** (instance.consecutive_crashes - 1))
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        if len(instance.exits) > CRASH_LOOP_LIMIT:
            self._kill_leftovers(instance.pid)
            log.error(
                "instance_crash_loop",
                instance=instance.index,
                pid=instance.pid,
                exited=how,
                exits=len(instance.exits),
                window_seconds=CRASH_LOOP_WINDOW,
            )
            return False
        self._kill_leftovers(instance.pid)
        log.warning("instance_exited", instance=instance.index, pid=instance.pid, exited=how, restart_in_seconds=delay)
        instance.proc = None
        instance.ready = False
        instance.restart_at = now + delay
        return True

    def _watch(self) -> int:
        """Serve until a signal: restart crashed children. Returns 1 on a crash loop, else 0 (signal received)."""
        while True:
            due = [i.restart_at for i in self.instances if i.restart_at is not None]
            waiting_ready = any(i.proc is not None and not i.ready for i in self.instances)
            timeout = READY_POLL_INTERVAL if waiting_ready else TICK
            if due:
                timeout = min(timeout, max(0.0, min(due) - time.monotonic()))
            signals = self._wait(timeout)
            if signals:
                self._first_signal = signals[0]
                return 0
            now = time.monotonic()
            for instance in self.instances:
                if not self._check(instance, now):
                    return 1

    def _check(self, instance: Instance, now: float) -> bool:
        """One look at one slot: note an exit, a restarted child listening, a due restart. False on a crash loop."""
        if instance.proc is None:
            if instance.restart_at is not None and now >= instance.restart_at:
                instance.restarts += 1
                self._spawn(instance)
            return True
        code = instance.proc.poll()
        if code is not None:
            return self._on_exit(instance, code)
        if not instance.ready:
            if is_listening(instance.pid, self.port):
                instance.ready = True
                log.info("instance_restarted", instance=instance.index, pid=instance.pid, restarts=instance.restarts)
            elif now - instance.started_at > CHILD_START_TIMEOUT:
                log.error("instance_start_timeout", instance=instance.index, pid=instance.pid)
                instance.proc.kill()  # seen as an exit on the next look: restarted with the back-off
        return True

    def _stop_all(self, signum: int) -> int:
        """Forward ``signum`` to every child and wait; a second signal is forwarded too. The exit status."""
        self._signal_children(signum)
        deadline = time.monotonic() + self.config.shutdown_timeout + CHILD_EXIT_GRACE
        status = 0
        while self._live():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("instances_killed", pids=[i.pid for i in self._live()])
                self._signal_children(signal.SIGKILL)
                status = 1
                break
            for again in self._wait(min(TICK, remaining)):
                log.warning("signal_received_again", signal=signal.Signals(again).name, action="children exit now")
                self._signal_children(again)
                status = 1
        for instance in self.instances:
            if instance.proc is not None:
                code = instance.proc.wait()
                self._kill_leftovers(instance.pid)
                if code != 0:
                    status = 1
        return status

    def run(self) -> int:
        """The whole life: reserve the port, start, watch, stop. Returns the process exit status."""
        config = self.config
        try:
            reserved = reserve_port(config.host, config.port)
        except OSError as exc:  # taken since server/preflight.py checked it
            log.error("bind_failed", host=config.host, port=config.port, error=str(exc))
            print(bind_error_message("--port", config.host, config.port, exc), file=sys.stderr)
            return 1
        with reserved:
            self.port = reserved.getsockname()[1]
            self._install_signals()
            outcome = self._start_all()
            if outcome == "ready":
                log.info(
                    "started",
                    mode=config.mode,
                    cpu=config.cpu,
                    host=config.host,
                    port=self.port,
                    reuseport=len(self.instances),
                    instances=[i.pid for i in self.instances],
                    workers=[i.workers for i in self.instances],
                    keyspace_scope="per-instance",
                )
                outcome = "signal" if self._watch() == 0 else "failed"
            if outcome == "signal":
                log.info(
                    "signal_received",
                    signal=signal.Signals(self._first_signal).name,
                    action="graceful shutdown of every instance",
                )
                status = self._stop_all(self._first_signal)
            else:
                self._stop_all(signal.SIGTERM)
                status = self._start_failure
            log.info("stopped", exit_status=status)
            return status


def run(config: Config) -> int:
    """Entry point for ``crossdock serve --reuseport N`` (N >= 1). The exit status."""
    try:
        check(config)
    except SupervisorError as exc:
        print(f"crossdock serve: {exc}", file=sys.stderr)
        return 2
    return Supervisor(config).run()
