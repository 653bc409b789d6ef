"""Security, against both front ends: AUTH/--requirepass, protected mode, HTTP detection, TLS.

Every server is a real ``crossdock serve`` subprocess; the clients are raw
sockets, Python's ``ssl``, crossdock's own clients and CLI, redis-py and
``redis-cli``. Where Redis has a behaviour, a differential test runs the same
bytes against a real ``redis-server`` (skipped when it is not installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import AsyncClient, Client, ReplyError
from server import security
from server.config import Config, parse_config
from server.frontends.tls import TLS_HANDSHAKE_TIMEOUT
from server.protocol import ReplyParser, encode_command
from tests.client_fixtures import RedisServer, have_redis_server
from tests.support import ROOT, SOCKET_TIMEOUT, STARTUP_TIMEOUT, RespSocket, ServerProcess, info_fields

PASSWORD = "s3cret pass"  # a space, so quoting on every path is exercised

NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."

#: Seconds a subprocess client (redis-cli, crossdock cli) may take; they finish in well under a second.
CLIENT_TIMEOUT = 30.0

FRONT_ENDS = ["async", "threaded"]


def _serve(front: str, *extra: str) -> ServerProcess:
    # --cpu inline: no pool to start; these tests never run a cpu command.
    return ServerProcess(front, "inline", extra)


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, or None when it has only loopback."""
    candidates: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: it only picks the source address
            candidates.append(probe.getsockname()[0])
        except OSError:
            pass
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    for address in candidates:
        if not ipaddress.ip_address(address).is_loopback and not ipaddress.ip_address(address).is_unspecified:
            return address
    return None


NON_LOOPBACK = _non_loopback_ipv4()
needs_non_loopback = pytest.mark.skipif(
    NON_LOOPBACK is None, reason="this machine has only a loopback interface: no non-loopback peer can connect"
)
needs_redis_server = pytest.mark.skipif(not have_redis_server(), reason="redis-server is not installed")
needs_redis_cli = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")


# ---------------------------------------------------------------------------------------------
# Fixtures: one server per front end and configuration, shared by this module
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=FRONT_ENDS)
def front(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def password_server(front: str) -> Iterator[ServerProcess]:
    process = _serve(front, "--requirepass", PASSWORD)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def open_server(front: str) -> Iterator[ServerProcess]:
    """No password, protected mode on (the default), bound to every interface."""
    process = _serve(front, "--host", "0.0.0.0")
    yield process
    process.stop()


@dataclass(frozen=True)
class Pki:
    """A CA made for this test run, a server certificate for 127.0.0.1, and client certificates."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path

    def client_context(self, with_cert: bool = False, stranger: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        if stranger:
            context.load_cert_chain(str(self.stranger_cert), str(self.stranger_key))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.example")
    stranger = trustme.CA().issue_cert("stranger.example")
    paths = {name: directory / f"{name}.pem" for name in Pki.__dataclass_fields__}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    stranger.cert_chain_pems[0].write_to_path(str(paths["stranger_cert"]))
    stranger.private_key_pem.write_to_path(str(paths["stranger_key"]))
    return Pki(**paths)


@pytest.fixture(scope="module")
def tls_server(front: str, pki: Pki) -> Iterator[ServerProcess]:
    process = _serve(front, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mtls_server(front: str, pki: Pki) -> Iterator[ServerProcess]:
    process = _serve(
        front, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca),
        "--requirepass", PASSWORD,
    )  # fmt: skip
    yield process
    process.stop()


class TlsRespSocket(RespSocket):
    """RespSocket over TLS (the handshake happens in the constructor)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, source: str | None = None) -> None:
        raw = socket.create_connection(
            (host, port), timeout=SOCKET_TIMEOUT, source_address=(source, 0) if source else None
        )
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.parser = ReplyParser()


def _connect_from(source: str, host: str, port: int) -> RespSocket:
    """A RespSocket whose local (source) address is ``source``."""
    conn = RespSocket.__new__(RespSocket)
    conn.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT, source_address=(source, 0))
    conn.parser = ReplyParser()
    return conn


def _redis_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=CLIENT_TIMEOUT)


# ---------------------------------------------------------------------------------------------
# AUTH and --requirepass
# ---------------------------------------------------------------------------------------------
def test_commands_before_auth_get_noauth_in_redis_order(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        assert conn.call("PING") == NOAUTH
        assert conn.call("SET", "k", "v") == NOAUTH
        assert conn.call("CONFIG", "GET", "requirepass") == NOAUTH
        # Redis checks the command table and the arity before authentication.
        assert conn.call("NOSUCH", "x").startswith("ERR unknown command 'NOSUCH'")
        assert conn.call("GET") == "ERR wrong number of arguments for 'get' command"
        assert conn.call("AUTH", "wrong") == WRONGPASS
        assert conn.call("PING") == NOAUTH
        assert conn.call("AUTH", PASSWORD) == "OK"
        assert conn.call("PING") == "PONG"
        # A failed AUTH later does not log the client out (as in Redis).
        assert conn.call("AUTH", "wrong") == WRONGPASS
        assert conn.call("PING") == "PONG"


def test_auth_forms(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        assert conn.call("AUTH") == "ERR wrong number of arguments for 'auth' command"
        assert conn.call("AUTH", "a", "b", "c") == "ERR syntax error"
        assert conn.call("AUTH", "someone", PASSWORD) == WRONGPASS  # only the default user exists
        assert conn.call("AUTH", "default", PASSWORD + "x") == WRONGPASS
        assert conn.call("AUTH", PASSWORD[:-1]) == WRONGPASS
        assert conn.call("PING") == NOAUTH
        assert conn.call("AUTH", "default", PASSWORD) == "OK"
        assert conn.call("ECHO", "in") == b"in"


def test_hello_authenticates_or_says_noauth(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        noauth_hello = conn.call("HELLO")
        assert isinstance(noauth_hello, str) and noauth_hello.startswith("NOAUTH HELLO must be called")
        assert conn.call("HELLO", 2, "SETNAME", "x") == noauth_hello
        assert conn.call("HELLO", 3) == noauth_hello  # Redis 7: RESP3 exists, the caller is not authenticated
        assert conn.call("HELLO", 4) == "NOPROTO unsupported protocol version"
        assert conn.call("HELLO", 2, "AUTH", "default", "wrong") == WRONGPASS
        assert conn.call("HELLO", 2, "AUTH", "bob", PASSWORD) == WRONGPASS
        reply = conn.call("HELLO", 2, "AUTH", "default", PASSWORD, "SETNAME", "sec")
        assert isinstance(reply, list) and reply[:2] == [b"server", b"redis"]
        assert conn.call("CLIENT", "GETNAME") == b"sec"
        assert isinstance(conn.call("HELLO"), list)


def test_quit_before_auth_closes(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        assert conn.call("QUIT") == "OK"
        assert conn.is_closed_by_server()


def test_pre_auth_caps_are_redis_s_and_lifted_by_auth(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        conn.send_raw(b"*11\r\n")
        assert conn.read_reply() == "ERR Protocol error: unauthenticated multibulk length"
        assert conn.is_closed_by_server()
    with password_server.connect() as conn:
        conn.send_raw(b"*2\r\n$16385\r\n")
        assert conn.read_reply() == "ERR Protocol error: unauthenticated bulk length"
        assert conn.is_closed_by_server()
    with password_server.connect() as conn:
        # AUTH then, in the same write, requests past both pre-AUTH caps: the caps go as soon as AUTH succeeds.
        big = b"v" * 20_000
        mset: list[object] = ["MSET"]
        for i in range(6):
            mset += [f"sec:cap:{i}", i]  # 13 arguments
        conn.send_raw(encode_command("AUTH", PASSWORD) + encode_command(*mset) + encode_command("SET", "sec:big", big))
        assert [conn.read_reply() for _ in range(3)] == ["OK", "OK", "OK"]
        assert conn.call("GET", "sec:big") == big


def test_inline_requests_before_auth_keep_the_ordinary_limit(password_server: ServerProcess) -> None:
    # Redis caps only multibulk requests before AUTH; an inline line of 11 words is parsed and refused.
    with password_server.connect() as conn:
        conn.send_raw(b"SET k " + b" ".join(b"w" for _ in range(11)) + b"\r\n")
        assert conn.read_reply() == NOAUTH


def test_config_get_shows_settings_as_redis_does(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        assert conn.call("AUTH", PASSWORD) == "OK"
        assert conn.call("CONFIG", "GET", "requirepass") == [b"requirepass", PASSWORD.encode()]
        assert conn.call("CONFIG", "GET", "protected-mode") == [b"protected-mode", b"yes"]
        assert conn.call("CONFIG", "GET", "tls-auth-clients") == [b"tls-auth-clients", b"no"]


def test_auth_without_a_password_configured(open_server: ServerProcess) -> None:
    with open_server.connect() as conn:
        assert conn.call("AUTH", "x") == (
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
        assert conn.call("AUTH", "default", "anything") == "OK"  # the default user is nopass
        assert conn.call("AUTH", "bob", "anything") == WRONGPASS
        assert conn.call("HELLO", 2, "AUTH", "bob", "x") == WRONGPASS
        assert isinstance(conn.call("HELLO", 2, "AUTH", "default", "x"), list)
        assert conn.call("CONFIG", "GET", "requirepass") == [b"requirepass", b""]


def test_auth_flags_in_command_info(open_server: ServerProcess) -> None:
    with open_server.connect() as conn:
        for name in ("auth", "hello", "quit"):
            info = conn.call("COMMAND", "INFO", name)
            assert isinstance(info, list)
            assert "no_auth" in info[0][2]
        ping = conn.call("COMMAND", "INFO", "ping")
        assert isinstance(ping, list) and "no_auth" not in ping[0][2]


#: The same bytes go to crossdock and to redis-server 7 with requirepass; the replies must match, except the
#: version string and client ids, which are normalised.
AUTH_SESSION = (
    b"PING\r\nFOO\r\nGET\r\nAUTH\r\nAUTH x\r\nAUTH a b\r\nAUTH default x\r\nAUTH a b c\r\nHELLO\r\nHELLO 2\r\n"
    b"HELLO 2 AUTH default wrong\r\nHELLO 2 AUTH bob secret\r\nHELLO 2 SETNAME foo\r\nHELLO 4\r\nHELLO x\r\n"
    b"CLIENT ID\r\nHELLO AUTH default secret\r\nHELLO 2 AUTH default\r\n*11\r\n"
)


def _normalised_session(port: int, session: bytes) -> list[object]:
    with RespSocket("127.0.0.1", port) as conn:
        conn.send_raw(session)
        replies: list[object] = []
        while True:
            try:
                reply = conn.read_reply()
            except ConnectionError:
                break
            if isinstance(reply, list):  # HELLO's map: drop the version and the id
                reply = [item for i, item in enumerate(reply) if i not in (3, 7)]
            if isinstance(reply, int):
                reply = "<int>"
            replies.append(reply)
        return replies


@needs_redis_server
def test_auth_session_matches_redis_server(front: str) -> None:
    redis = RedisServer("--requirepass", "secret")
    ours = _serve(front, "--requirepass", "secret")
    try:
        expected = _normalised_session(redis.port, AUTH_SESSION)
        assert _normalised_session(ours.port, AUTH_SESSION) == expected
        assert expected[-1] == "ERR Protocol error: unauthenticated multibulk length"
    finally:
        ours.stop()
        redis.stop()


@needs_redis_server
def test_no_password_session_matches_redis_server(open_server: ServerProcess) -> None:
    session = b"AUTH x\r\nAUTH a b\r\nAUTH default x\r\nHELLO 2 AUTH foo bar\r\nAUTH a b c\r\nQUIT\r\n"
    redis = RedisServer()
    try:
        assert _normalised_session(open_server.port, session) == _normalised_session(redis.port, session)
    finally:
        redis.stop()


# ---------------------------------------------------------------------------------------------
# Clients with a password: crossdock's own, redis-py, redis-cli, crossdock cli
# ---------------------------------------------------------------------------------------------
def test_sync_client_password(password_server: ServerProcess) -> None:
    with Client(password_server.host, password_server.port, password=PASSWORD) as client:
        assert client.execute("PING") == "PONG"
    with pytest.raises(ReplyError) as info:
        Client(password_server.host, password_server.port, password="wrong")
    assert info.value.code == "WRONGPASS"
    with Client(password_server.host, password_server.port) as client:
        with pytest.raises(ReplyError) as info:
            client.execute("PING")
        assert info.value.code == "NOAUTH"


def test_async_client_password(password_server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(password_server.host, password_server.port, password=PASSWORD) as client:
            assert await client.execute("ECHO", "hi") == b"hi"
        with pytest.raises(ReplyError) as info:
            async with AsyncClient(password_server.host, password_server.port, username="default", password="x"):
                pass
        assert info.value.code == "WRONGPASS"

    asyncio.run(scenario())


def test_redis_py_password(password_server: ServerProcess) -> None:
    redis = pytest.importorskip("redis")
    # protocol=2: crossdock speaks RESP2 only, and redis-py 8 would otherwise send HELLO 3 AUTH.
    client = redis.Redis(host=password_server.host, port=password_server.port, password=PASSWORD, protocol=2)
    try:
        assert client.ping() is True
    finally:
        client.close()
    anonymous = redis.Redis(host=password_server.host, port=password_server.port, protocol=2)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()


@needs_redis_cli
def test_redis_cli_password(password_server: ServerProcess) -> None:
    port = str(password_server.port)
    ok = _redis_cli("-p", port, "-a", PASSWORD, "--no-auth-warning", "PING")
    assert ok.stdout.strip() == "PONG"
    refused = _redis_cli("-p", port, "PING")
    assert refused.stdout.strip() == "NOAUTH Authentication required."


def test_crossdock_cli_password(password_server: ServerProcess) -> None:
    base = [sys.executable, "-m", "clients.cli", "-h", "127.0.0.1", "-p", str(password_server.port)]
    ok = subprocess.run([*base, "-a", PASSWORD, "PING"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert (ok.returncode, ok.stdout.strip()) == (0, "PONG")
    via_env = subprocess.run(
        [*base, "ECHO", "x"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
        env={**os.environ, "CROSSDOCK_CLI_AUTH": PASSWORD},
    )  # fmt: skip
    assert (via_env.returncode, via_env.stdout.strip()) == (0, "x")
    refused = subprocess.run([*base, "PING"], capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert refused.returncode == 1 and "NOAUTH" in refused.stderr


# ---------------------------------------------------------------------------------------------
# Protected mode
# ---------------------------------------------------------------------------------------------
def test_protected_mode_decision_with_real_addresses() -> None:
    protected = Config()
    assert security.protected_mode_active(protected)
    assert not security.protected_mode_active(Config(requirepass="x"))
    assert not security.protected_mode_active(Config(protected_mode=False))
    for peer in (("127.0.0.1", 5), ("127.0.0.2", 5), ("::1", 5, 0, 0), ("::ffff:127.0.0.1", 5, 0, 0)):
        assert security.protected_mode_refusal(protected, peer) is None, peer
    for peer in (("192.0.2.2", 5), ("10.1.2.3", 5), ("2001:db8::1", 5, 0, 0), ("::ffff:192.0.2.2", 5, 0, 0)):
        assert security.protected_mode_refusal(protected, peer) == security.DENIED_REPLY, peer
        assert security.protected_mode_refusal(Config(requirepass="x"), peer) is None
        assert security.protected_mode_refusal(Config(protected_mode=False), peer) is None
    assert security.protected_mode_refusal(protected, "/tmp/some.sock") == security.DENIED_REPLY


@needs_non_loopback
def test_default_bind_is_loopback_only() -> None:
    assert parse_config([], {}).host == "127.0.0.1"
    assert NON_LOOPBACK is not None
    command = [sys.executable, "-m", "server", "serve", "--port", "0", "--cpu", "inline", "--log-format", "json"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CROSSDOCK_")}
    proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killer = threading.Timer(STARTUP_TIMEOUT, proc.kill)  # bounds the readline loop below
    killer.start()
    try:
        assert proc.stdout is not None
        port = 0
        for raw in proc.stdout:
            event = json.loads(raw) if raw.startswith(b"{") else {}
            if event.get("event") == "started":
                assert event["host"] == "127.0.0.1"
                port = int(event["port"])
                break
        assert port, "the server did not start"
        with RespSocket("127.0.0.1", port) as local:
            assert local.call("PING") == "PONG"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((NON_LOOPBACK, port), timeout=SOCKET_TIMEOUT).close()
    finally:
        killer.cancel()
        proc.terminate()
        proc.wait(SOCKET_TIMEOUT)


@needs_non_loopback
def test_protected_mode_denies_non_loopback_peer(open_server: ServerProcess) -> None:
    assert NON_LOOPBACK is not None
    with open_server.connect() as local:
        before = _info_field(local, "rejected_connections")
    with RespSocket(NON_LOOPBACK, open_server.port) as outsider:
        outsider.send("PING")  # sent at once, as redis-cli does: the refusal must still arrive whole
        received = outsider.read_until_closed()
    assert received == security.DENIED_REPLY
    with open_server.connect() as local:
        assert local.call("PING") == "PONG"
        assert _info_field(local, "rejected_connections") == before + 1


@needs_non_loopback
def test_loopback_range_is_not_refused(open_server: ServerProcess) -> None:
    # Redis 7.0 refuses 127.0.0.2 (it compares text with 127.0.0.1); crossdock treats 127/8 as loopback.
    with _connect_from("127.0.0.2", "127.0.0.1", open_server.port) as conn:
        assert conn.call("PING") == "PONG"
        info = conn.call("CLIENT", "INFO")
        assert isinstance(info, bytes) and b"addr=127.0.0.2:" in info


@needs_non_loopback
@needs_redis_cli
def test_protected_mode_as_redis_cli_sees_it(open_server: ServerProcess) -> None:
    assert NON_LOOPBACK is not None
    result = _redis_cli("-h", NON_LOOPBACK, "-p", str(open_server.port), "PING")
    assert result.stdout.strip() == security.DENIED_REPLY.decode()[1:].strip()


@needs_non_loopback
@pytest.mark.parametrize("flags", [("--protected-mode", "no"), ("--requirepass", PASSWORD)], ids=["off", "password"])
def test_protected_mode_off_or_password_lets_outsiders_in(front: str, flags: tuple[str, str]) -> None:
    assert NON_LOOPBACK is not None
    process = _serve(front, "--host", "0.0.0.0", *flags)
    try:
        with RespSocket(NON_LOOPBACK, process.port) as outsider:
            expected = "PONG" if flags[0] == "--protected-mode" else NOAUTH
            assert outsider.call("PING") == expected
            if flags[0] == "--requirepass":
                assert outsider.call("AUTH", PASSWORD) == "OK"
            info = outsider.call("CLIENT", "INFO")
            assert isinstance(info, bytes) and f"addr={NON_LOOPBACK}:".encode() in info
    finally:
        process.stop()


def _info_field(conn: RespSocket, name: str) -> int:
    fields = info_fields(conn, "stats")
    assert name in fields, f"{name} not in INFO stats"
    return int(fields[name])


# ---------------------------------------------------------------------------------------------
# HTTP sent to the RESP port
# ---------------------------------------------------------------------------------------------
def _attack_lines(process: ServerProcess) -> list[dict[str, object]]:
    return process.events("possible_security_attack")


def _wait_for_event(process: ServerProcess, name: str, count: int, timeout: float = 20.0) -> None:
    """Wait until the server has logged ``name`` ``count`` times; fail the test if it has not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(process.events(name)) < count:
        if time.monotonic() > deadline or process.proc.poll() is not None:
            raise AssertionError(f"{name!r} not logged {count} times within {timeout} s: {process.raw_lines[-10:]}")
        time.sleep(0.05)


def _wait_for_command(conn: RespSocket, commands: tuple[str, ...], timeout: float = 20.0) -> None:
    """Wait until CLIENT LIST (asked on ``conn``) shows a client whose last command is one of ``commands``; fail the
    test if none does within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        listing = conn.call("CLIENT", "LIST")
        assert isinstance(listing, bytes)
        if any(f" cmd={command} " in listing.decode() for command in commands):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no client ran {commands} within {timeout} s: {listing!r}")
        time.sleep(0.05)


def test_http_post_closes_without_reply_and_is_logged_once_a_minute(front: str) -> None:
    process = _serve(front)
    try:
        with process.connect() as conn:
            assert conn.call("PING") == "PONG"  # earlier requests are answered as usual
            conn.send_raw(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nPING\r\n")
            assert conn.read_until_closed() == b""
        _wait_for_event(process, "possible_security_attack", 1)
        lines = _attack_lines(process)
        assert len(lines) == 1
        assert lines[0]["level"] == "warning"
        assert lines[0]["message"] == security.SECURITY_ATTACK_MESSAGE
        # A second attempt within the minute is closed the same way, and not logged again.
        with process.connect() as conn:
            conn.send_raw(b"host: example.com\r\n")
            assert conn.read_until_closed() == b""
        with process.connect() as conn:
            assert conn.call("PING") == "PONG"
        assert len(_attack_lines(process)) == 1
    finally:
        process.stop()


def test_http_detection_runs_before_auth_and_for_multibulk(password_server: ServerProcess) -> None:
    with password_server.connect() as conn:
        conn.send("HOST:", "x")  # multibulk, upper case, no AUTH yet: closed all the same
        assert conn.read_until_closed() == b""
    with password_server.connect() as conn:
        reply = conn.call("POSTS")  # only the exact words count
        assert isinstance(reply, str) and reply.startswith("ERR unknown command 'POSTS'")
        assert conn.call("PING") == NOAUTH


def test_real_http_client_gets_no_answer(password_server: ServerProcess) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{password_server.port}/", data=b"FLUSHDB\r\n", method="POST")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(request, timeout=SOCKET_TIMEOUT)


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------
def test_tls_python_client(tls_server: ServerProcess, pki: Pki) -> None:
    with TlsRespSocket("127.0.0.1", tls_server.port, pki.client_context()) as conn:
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert conn.call("PING") == "PONG"
        conn.send_raw(b"ECHO a\r\nECHO b\r\n")  # pipelined, inline
        assert [conn.read_reply(), conn.read_reply()] == [b"a", b"b"]
        assert conn.call("SET", "tls:k", b"x" * 100_000) == "OK"  # larger than one TLS record
        assert conn.call("GET", "tls:k") == b"x" * 100_000
    started = tls_server.events("started")
    assert started and started[0]["tls"] is True


def test_tls_refuses_old_protocols_and_plain_text(tls_server: ServerProcess, pki: Pki) -> None:
    old = pki.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so this client can offer TLS 1.1: the refusal is the server's
    with pytest.raises(ssl.SSLError):  # a protocol-version alert (threaded) or a bare close (uvloop)
        TlsRespSocket("127.0.0.1", tls_server.port, old)
    with RespSocket("127.0.0.1", tls_server.port) as plain:
        plain.send_raw(b"PING\r\n")
        assert b"PONG" not in plain.read_until_closed()
    with TlsRespSocket("127.0.0.1", tls_server.port, pki.client_context()) as conn:
        assert conn.call("PING") == "PONG"  # the server goes on


def test_tls_untrusting_client_fails(tls_server: ServerProcess) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsRespSocket("127.0.0.1", tls_server.port, ssl.create_default_context())


@needs_redis_cli
def test_tls_redis_cli(tls_server: ServerProcess, pki: Pki) -> None:
    if "--tls" not in _redis_cli("--help").stdout + _redis_cli("--help").stderr:
        pytest.skip("this redis-cli is built without TLS")
    result = _redis_cli("--tls", "--cacert", str(pki.ca), "-h", "127.0.0.1", "-p", str(tls_server.port), "PING")
    assert result.stdout.strip() == "PONG"


def test_tls_client_certificates_required_with_tls_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    # No certificate, then one from another CA: the handshake or the first read fails, and no reply comes.
    for context in (pki.client_context(), pki.client_context(stranger=True)):
        with pytest.raises(OSError), TlsRespSocket("127.0.0.1", mtls_server.port, context) as conn:
            conn.call("PING")
    with TlsRespSocket("127.0.0.1", mtls_server.port, pki.client_context(with_cert=True)) as conn:
        assert conn.call("PING") == NOAUTH  # TLS and the password are independent layers
        assert conn.call("AUTH", PASSWORD) == "OK"
        assert conn.call("CONFIG", "GET", "tls-auth-clients") == [b"tls-auth-clients", b"yes"]


@needs_redis_cli
def test_tls_client_certificate_with_redis_cli(mtls_server: ServerProcess, pki: Pki) -> None:
    common = ["--tls", "--cacert", str(pki.ca), "-h", "127.0.0.1", "-p", str(mtls_server.port)]
    with_cert = _redis_cli(
        *common, "--cert", str(pki.client_cert), "--key", str(pki.client_key), "-a", PASSWORD, "--no-auth-warning",
        "PING",
    )  # fmt: skip
    assert with_cert.stdout.strip() == "PONG"
    without = _redis_cli(*common, "-a", PASSWORD, "--no-auth-warning", "PING")
    assert "PONG" not in without.stdout


@needs_non_loopback
def test_tls_protected_mode_refusal_is_sent_over_tls(front: str, pki: Pki) -> None:
    assert NON_LOOPBACK is not None
    process = _serve(front, "--host", "0.0.0.0", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    try:
        context = pki.client_context()
        context.check_hostname = False  # the certificate names 127.0.0.1; we connect to the other interface
        with TlsRespSocket(NON_LOOPBACK, process.port, context) as outsider:
            outsider.send("PING")
            assert outsider.read_until_closed() == security.DENIED_REPLY
    finally:
        process.stop()


def test_silent_tls_client_blocks_no_one_and_is_dropped(front: str, pki: Pki) -> None:
    """A peer that connects and never starts its handshake holds neither the accept loop nor the event loop."""
    process = _serve(front, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    try:
        with socket.create_connection(("127.0.0.1", process.port), timeout=SOCKET_TIMEOUT) as silent:
            with TlsRespSocket("127.0.0.1", process.port, pki.client_context()) as conn:
                assert conn.call("PING") == "PONG"
            # Ordering: the silent peer was still connected when PING was answered, so nothing waited for it.
            silent.setblocking(False)
            with pytest.raises(BlockingIOError):
                silent.recv(1)
            # ... and the server drops it once the handshake timeout has passed.
            silent.settimeout(TLS_HANDSHAKE_TIMEOUT + SOCKET_TIMEOUT)
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""
    finally:
        process.stop()


def test_graceful_shutdown_answers_in_flight_requests_over_tls(front: str, pki: Pki) -> None:
    """SIGTERM while a request runs: its reply still arrives, encrypted (the TLS state survives the shutdown)."""
    process = _serve(front, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    try:
        with TlsRespSocket("127.0.0.1", process.port, pki.client_context()) as conn:
            assert conn.call("PING") == "PONG"
            conn.send_raw(encode_command("SLEEP", 1000) + encode_command("ECHO", "after"))  # one write, one record
            with TlsRespSocket("127.0.0.1", process.port, pki.client_context()) as watcher:
                _wait_for_command(watcher, ("sleep", "echo"))  # the server has read the SLEEP (and the ECHO beside it)
            process.signal()
            assert conn.read_reply() == "OK"
            assert conn.read_reply() == b"after"
        assert process.proc.wait(SOCKET_TIMEOUT) == 0
    finally:
        process.stop()


def test_bad_certificate_path_stops_start_up(front: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [
            sys.executable, "-m", "server", "serve", "--port", "0", "--mode", front, "--cpu", "inline",
            "--log-format", "json", "--tls-cert", str(missing), "--tls-key", str(missing),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 2
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failures = [event for event in events if event["event"] == "tls_setup_failed"]
    assert failures and str(missing) in failures[0]["error"]
    assert not any(event["event"] == "started" for event in events)


# ---------------------------------------------------------------------------------------------
# The container health check
# ---------------------------------------------------------------------------------------------
def _healthcheck(port: int, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CROSSDOCK_")}
    environment.update({"CROSSDOCK_PORT": str(port), **env})
    return subprocess.run(
        [sys.executable, "-m", "server.observability.healthcheck"], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
    )  # fmt: skip


def test_healthcheck_follows_password_and_tls(password_server: ServerProcess, tls_server: ServerProcess) -> None:
    assert _healthcheck(password_server.port).returncode == 0
    assert _healthcheck(tls_server.port, CROSSDOCK_TLS_CERT="/certs/server.pem").returncode == 0
    assert _healthcheck(tls_server.port).returncode == 1  # plain text to a TLS port is not healthy
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: nothing answers there
        refused = _healthcheck(unused.getsockname()[1])
    assert refused.returncode == 1 and "unhealthy" in refused.stderr


def test_dockerfile_turns_protected_mode_off_and_checks_health_with_the_module() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "CROSSDOCK_PROTECTED_MODE=no" in text
    assert 'CMD ["python", "-m", "server.observability.healthcheck"]' in text
