"""``crossdock cli``: an interactive RESP client with redis-cli's conventions.

::

    crossdock cli -p 7379                  # interactive: prompt, history, completion, pretty replies
    crossdock cli -p 7379 PRIMES 100000    # one-shot: print the reply and exit
    echo "PING" | crossdock cli -p 7379    # one command per stdin line when stdin is not a terminal

(``python -m clients.cli`` is the same program.)

Conventions taken from redis-cli, so habits and scripts carry over:

* ``-h host``, ``-p port``, ``-a password`` (or ``CROSSDOCK_CLI_AUTH`` in the
  environment, which ``ps`` does not show), ``--user``, ``-t`` connect
  timeout, ``--raw`` / ``--no-raw``;
* replies printed as redis-cli prints them (:mod:`clients.display`): the
  standard form on a terminal, the raw form when stdout is not one;
* a typed line is split into words as redis-cli splits it: spaces separate,
  ``"double quotes"`` take ``\\n \\r \\t \\a \\b \\\\ \\" \\xHH`` escapes,
  ``'single quotes'`` take only ``\\'``;
* interactive: prompt ``host:port>``, readline line editing, history kept in
  ``~/.crossdock_history`` (``CROSSDOCK_HISTFILE`` overrides it; AUTH lines
  are never saved), Tab completes command names taken from the server's
  ``COMMAND`` reply (a built-in list when the server has no COMMAND),
  ``quit`` / ``exit`` / Ctrl-D leave, Ctrl-C abandons the line or the
  running command.

Where this differs from redis-cli, on purpose: in one-shot and stdin modes
an error reply is written to stderr and the exit status is 1 (redis-cli
prints it on stdout and exits 0), so scripts can tell failure from success;
stdin mode runs every line and exits 1 if any of them failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TextIO

from clients._core import DEFAULT_CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT
from clients.display import format_raw, format_standard
from clients.errors import (
    ClientConnectionError,
    ClientError,
    ClientTimeoutError,
    ConnectionLostError,
    ReplyError,
)
from clients.tls import TlsOptions
from server.protocol import split_args as _split_inline

#: Environment variable naming the history file; ``/dev/null`` turns history off (as REDISCLI_HISTFILE).
HISTORY_FILE_ENV: Final = "CROSSDOCK_HISTFILE"
DEFAULT_HISTORY_FILE: Final = "~/.crossdock_history"

#: Lines kept in the history file: a few weeks of typing for most people,
#: and the file stays around 100 KB, read in well under a millisecond at start.
HISTORY_LENGTH: Final = 1000

#: Environment variable holding the password, so it does not show in ``ps`` as ``-a`` does.
AUTH_ENV: Final = "CROSSDOCK_CLI_AUTH"

#: Command names to complete when the server cannot list its own (COMMAND
#: failed): crossdock's built-ins as the README's Commands section lists them.
FALLBACK_COMMANDS: Final = (
    "CLIENT", "COMMAND", "CONFIG", "DBSIZE", "DEL", "ECHO", "EXISTS", "EXPIRE", "FACTOR", "FLUSHDB",
    "GET", "HELLO", "INCR", "INFO", "PBKDF2", "PING", "PRIMES", "QUIT", "SET", "SLEEP", "TIME", "TTL",
)  # fmt: skip

_HELP_TEXT: Final = """\
crossdock cli: type a command and its arguments, as in redis-cli.
  "double quotes" and 'single quotes' group words; \\n \\t \\xHH escapes work in double quotes.
  Tab completes command names; Up/Down browse history; Ctrl-C abandons; quit, exit or Ctrl-D leave.
  clear clears the screen. Commands the server knows: COMMAND, or press Tab on an empty line.
"""


class SplitError(ValueError):
    """A typed line with unbalanced quotes (redis-cli answers "Invalid argument(s)")."""


def split_args(line: bytes) -> list[bytes]:
    """Split a typed line into words exactly as redis-cli (Redis's ``sdssplitargs``) does.

    This is command-line tokenizing, not RESP: what the person typed becomes
    the arguments that :func:`server.protocol.encode_command` then frames.
    It reuses the port of ``sdssplitargs`` that the server's inline-command
    parser uses, so a line typed here and the same line typed into
    ``nc`` become the same arguments.

    Error handling: an unterminated quote, or a closing quote followed by
    something other than a space, raises :class:`SplitError`.
    """
    words = _split_inline(line)
    if words is None:
        raise SplitError("unbalanced quotes")
    return words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the CLI's options to ``parser`` (``crossdock cli`` or ``python -m clients.cli``).

    ``-h`` means host, as in redis-cli; ``--help`` stays help. The parser may
    have been created with the default ``add_help=True``: its ``-h`` is taken
    over (argparse's "resolve" conflict handler), ``--help`` is kept.
    """
    parser.conflict_handler = "resolve"
    connection = parser.add_argument_group("connection")
    connection.add_argument("-h", "--host", default=DEFAULT_HOST, help=f"server host (default {DEFAULT_HOST})")
    connection.add_argument(
        "-p", "--port", type=int, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})"
    )
    connection.add_argument(
        "-a", "--pass", dest="password", default=None,
        help=f"password for AUTH (safer: set {AUTH_ENV} in the environment)",
    )  # fmt: skip
    connection.add_argument("--user", default=None, help="username for AUTH (needs a password)")
    connection.add_argument(
        "-t", "--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT,
        help=f"seconds to wait for the connection (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )  # fmt: skip
    tls = parser.add_argument_group("TLS (as redis-cli)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS")
    tls.add_argument("--sni", default=None, metavar="HOST", help="server name for SNI and the certificate check")
    tls.add_argument("--cacert", default=None, metavar="FILE", help="CA bundle that signed the server's certificate")
    tls.add_argument("--cert", default=None, metavar="FILE", help="client certificate (for a server with --tls-ca)")
    tls.add_argument("--key", default=None, metavar="FILE", help="private key of --cert")
    tls.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    output = parser.add_argument_group("output")
    raw = output.add_mutually_exclusive_group()
    raw.add_argument("--raw", action="store_true", help="raw replies, even on a terminal")
    raw.add_argument("--no-raw", action="store_true", help="formatted replies, even when stdout is not a terminal")
    parser.add_argument(
        "cli_command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG ...]",
        help="run this one command and exit (otherwise: interactive, or stdin lines when piped)",
    )  # fmt: skip


class _Output:
    """Writes replies in the chosen rendering; errors to stderr in scripted modes."""

    def __init__(self, raw: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.raw = raw
        self.stdout = stdout
        self.stderr = stderr

    def reply(self, reply: Any) -> None:
        if self.raw:
            self.stdout.flush()
            self.stdout.buffer.write(format_raw(reply) + b"\n")
            self.stdout.buffer.flush()
        else:
            self.stdout.write(format_standard(reply))
            self.stdout.flush()

    def error_reply(self, error: ReplyError, to_stderr: bool) -> None:
        if not to_stderr:
            self.reply(error)
            return
        self.stdout.flush()
        self.stderr.write(f"{error}\n" if self.raw else f"(error) {error}\n")
        self.stderr.flush()

    def problem(self, message: str) -> None:
        self.stdout.flush()
        self.stderr.write(message + "\n")
        self.stderr.flush()


#: The TLS flags that only mean something with --tls (redis-cli ignores them without it; we say so).
TLS_DETAIL_FLAGS = ("sni", "cacert", "cert", "key", "insecure")


class UsageError(Exception):
    """A flag combination that cannot work; ``str()`` is the one-line message."""


def tls_options(args: argparse.Namespace) -> TlsOptions | None:
    """The TLS flags as :class:`TlsOptions`, or None without ``--tls``.

    Error handling: a TLS flag without ``--tls`` raises :class:`UsageError`
    (redis-cli would silently connect in plain TCP).
    """
    if not getattr(args, "tls", False):
        given = [name for name in TLS_DETAIL_FLAGS if getattr(args, name, None)]
        if given:
            raise UsageError(f"crossdock cli: --{given[0]} needs --tls")
        return None
    return TlsOptions(cacert=args.cacert, cert=args.cert, key=args.key, sni=args.sni, insecure=args.insecure)


class _Session:
    """The connection as the CLI sees it: opened on demand, dropped on loss, reopened on the next command."""

    def __init__(self, args: argparse.Namespace, out: _Output) -> None:
        from clients.sync_client import Client

        self._client_class = Client
        self.host: str = args.host
        self.port: int = args.port
        self.password: str | None = args.password if args.password is not None else os.environ.get(AUTH_ENV)
        self.user: str | None = args.user
        self.connect_timeout: float = args.connect_timeout
        self.tls = tls_options(args)
        self.out = out
        self.client: Any = None

    def connect(self) -> bool:
        """Connect if not connected; on failure say so on stderr (as redis-cli does) and return False."""
        if self.client is not None and not self.client.closed:
            return True
        try:
            self.client = self._client_class(
                self.host, self.port, connect_timeout=self.connect_timeout,
                username=self.user, password=self.password, tls=self.tls,
            )  # fmt: skip
        except ReplyError as exc:
            self.out.problem(f"AUTH failed: {exc}")
            return False
        except (ClientConnectionError, ClientTimeoutError) as exc:
            self.out.problem(f"Could not connect to {self.host}:{self.port}: {_reason(exc)}")
            return False
        return True

    def run(self, words: Sequence[bytes], errors_to_stderr: bool) -> bool:
        """Send one command, print its reply; return False when it was an error of any kind.

        Error handling: an error reply is printed (to stderr in scripted
        modes); a lost connection is reported and dropped so the next
        command reconnects; KeyboardInterrupt closes the connection (the
        command's reply would otherwise hold up the next one) and propagates.
        """
        if not self.connect():
            return False
        try:
            reply = self.client.execute(*words)
        except ReplyError as exc:
            self.out.error_reply(exc, errors_to_stderr)
            return False
        except ConnectionLostError as exc:
            self.out.problem(f"Error: {_reason(exc)}")
            self.close()
            return False
        except KeyboardInterrupt:
            self.close()
            raise
        self.out.reply(reply)
        return True

    def command_names(self) -> list[str]:
        """Command names for completion: COMMAND, else COMMAND DOCS, else the built-in list; never raises."""
        names: set[str] = set()
        with contextlib.suppress(ClientError):
            reply = self.client.execute("COMMAND")
            for entry in reply if isinstance(reply, list) else ():
                if isinstance(entry, list) and entry and isinstance(entry[0], bytes | str):
                    names.add(_text(entry[0]).upper())
                    if len(entry) > 9 and isinstance(entry[9], list):  # Redis 7: subcommands
                        names.update(
                            _text(sub[0]).upper().replace("|", " ")
                            for sub in entry[9]
                            if isinstance(sub, list) and sub and isinstance(sub[0], bytes | str)
                        )
        if not names:
            with contextlib.suppress(ClientError):
                reply = self.client.execute("COMMAND", "DOCS")
                if isinstance(reply, list):
                    names.update(_text(name).upper() for name in reply[::2] if isinstance(name, bytes | str))
        return sorted(names or FALLBACK_COMMANDS)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _reason(exc: BaseException) -> str:
    """The most specific human reason: the OS error text rather than our wrapper's."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc)


def _words(line: str) -> list[bytes]:
    # surrogateescape: bytes that are not UTF-8 (pasted binary) go through unchanged.
    return split_args(line.encode("utf-8", "surrogateescape"))


def run(args: argparse.Namespace) -> int:
    """Run the CLI with parsed ``args``; return the exit status.

    Error handling: 0 when every command succeeded; 1 for an error reply, a
    connection failure or an unsplittable line (message on stderr); 2 for a
    TLS flag without ``--tls``; 130 after Ctrl-C in one-shot and stdin modes.
    """
    raw = args.raw or (not args.no_raw and not sys.stdout.isatty())
    out = _Output(raw, sys.stdout, sys.stderr)
    try:
        session = _Session(args, out)
    except UsageError as exc:
        out.problem(str(exc))
        return 2
    try:
        if args.cli_command:
            words = [arg.encode("utf-8", "surrogateescape") for arg in args.cli_command]
            return 0 if session.run(words, errors_to_stderr=True) else 1
        if not sys.stdin.isatty():
            return _run_stdin(session, out, sys.stdin)
        return _run_interactive(session, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`crossdock cli ... | head`): stop quietly, as other Unix tools do.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        session.close()


def _run_stdin(session: _Session, out: _Output, lines: Iterable[str]) -> int:
    """One command per line; blank lines skipped; exit status 1 if any line failed."""
    status = 0
    for line in lines:
        try:
            words = _words(line)
        except SplitError:
            out.problem("Invalid argument(s)")
            status = 1
            continue
        if words and not session.run(words, errors_to_stderr=True):
            status = 1
    return status


def _run_interactive(session: _Session, out: _Output) -> int:
    """The prompt loop: read, split, send, print; until quit, exit or end of input."""
    session.connect()
    history = _Readline.setup(session.command_names if session.client is not None else lambda: [])
    try:
        while True:
            try:
                if _interactive_step(session, out, history):
                    return 0
            except KeyboardInterrupt:
                # Ctrl-C at the prompt, or while a reply was printed: drop the line, keep the session.
                out.stdout.write("\n")
    finally:
        if history is not None:
            history.save()


def _interactive_step(session: _Session, out: _Output, history: _Readline | None) -> bool:
    """Read and run one line; return True when the person asked to leave."""
    prompt = f"{session.host}:{session.port}> " if session.client is not None else "not connected> "
    try:
        line = input(prompt)
    except EOFError:
        out.stdout.write("\n")
        return True
    try:
        words = _words(line)
    except SplitError:
        out.problem("Invalid argument(s)")
        return False
    if not words:
        return False
    if history is not None:
        history.forget_secret(words)
    first = words[0].lower()
    if first in (b"quit", b"exit") and len(words) == 1:
        return True
    if first == b"help" and len(words) == 1:
        out.stdout.write(_HELP_TEXT)
        return False
    if first == b"clear" and len(words) == 1:
        out.stdout.write("\033[H\033[2J")
        out.stdout.flush()
        return False
    was_connected = session.client is not None
    try:
        session.run(words, errors_to_stderr=False)
    except KeyboardInterrupt:
        out.stdout.write("(interrupted)\n")
        session.connect()  # a fresh connection: the abandoned reply must not hold up the next command
    if history is not None and not was_connected and session.client is not None:
        history.load_names(session.command_names)
    return False


class _Readline:
    """History file and Tab completion, when the ``readline`` module exists (not on Windows)."""

    def __init__(self, readline: Any, path: str | None) -> None:
        self._readline = readline
        self._path = path
        self._names: list[str] = []
        self._loaded = False

    @classmethod
    def setup(cls, names: Callable[[], list[str]]) -> _Readline | None:
        """Load history and install the completer; ``None`` (plain ``input()``) without readline."""
        try:
            import readline
        except ImportError:
            return None
        path: str | None = os.path.expanduser(os.environ.get(HISTORY_FILE_ENV) or DEFAULT_HISTORY_FILE)
        if path == os.devnull:
            path = None
        self = cls(readline, path)
        readline.set_history_length(HISTORY_LENGTH)
        if path is not None:
            with contextlib.suppress(OSError):
                readline.read_history_file(path)
        readline.set_completer_delims(" \t\n\"'")
        readline.set_completer(self.complete)
        if "libedit" in (readline.__doc__ or ""):  # macOS's readline is libedit, with its own syntax
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        self.load_names(names)
        return self

    def load_names(self, names: Callable[[], list[str]]) -> None:
        if not self._loaded:
            self._names = names()
            self._loaded = bool(self._names)

    def complete(self, text: str, state: int) -> str | None:
        """readline's completer: command names for the first word, subcommands for the second."""
        try:
            before = self._readline.get_line_buffer()[: self._readline.get_begidx()].split()
            if len(before) > 1:
                return None
            prefix = (before[0].upper() + " ") if before else ""
            wanted = prefix + text.upper()
            matches = [name[len(prefix) :] for name in self._names if name.startswith(wanted)]
            matches = [m for m in matches if m and " " not in m]
            if text and text == text.lower():
                matches = [m.lower() for m in matches]
            return matches[state] if state < len(matches) else None
        except Exception:  # an exception in a completer is swallowed by readline anyway; be explicit
            return None

    def forget_secret(self, words: Sequence[bytes]) -> None:
        """Drop the line just typed from history when it carries a password (AUTH, HELLO ... AUTH)."""
        first = words[0].upper()
        if first == b"AUTH" or (first == b"HELLO" and any(w.upper() == b"AUTH" for w in words[1:])):
            length = self._readline.get_current_history_length()
            if length:
                self._readline.remove_history_item(length - 1)

    def save(self) -> None:
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._readline.write_history_file(self._path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clients.cli [options] [command ...]``: the same as ``crossdock cli``."""
    parser = argparse.ArgumentParser(prog="crossdock cli", description="Interactive RESP client, like redis-cli.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
