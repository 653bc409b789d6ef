"""Every built-in command, over real sockets, against every mode (the ``server`` fixture)."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from server.commands.cpu import FACTOR_MAX_N, PBKDF2_MAX_ITERATIONS, PRIMES_MAX_N
from server.protocol import ErrorReply, SimpleString
from tests.support import ServerProcess


def key(name: str) -> str:
    """A key no other test uses: the servers are shared across a session."""
    return f"{name}:{uuid.uuid4().hex}"


def test_ping_echo(server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("PING") == SimpleString("PONG")
        assert conn.call("PING", "hi there") == b"hi there"
        assert conn.call("ECHO", b"\x00\r\nbinary") == b"\x00\r\nbinary"
        assert conn.call("ping", "a", "b") == ErrorReply("ERR wrong number of arguments for 'ping' command")


def test_inline_commands_as_netcat_sends_them(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send_raw(b'PING\r\nECHO "hello world"\r\nFACTOR 360\nECHO \'it\\\'s\'\r\n')
        assert conn.read_reply() == SimpleString("PONG")
        assert conn.read_reply() == b"hello world"
        assert conn.read_reply() == [2, 2, 2, 3, 3, 5]
        assert conn.read_reply() == b"it's"


def test_unknown_command_and_arity_use_redis_wording(server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("FOO", "a", "b") == ErrorReply(
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        )
        assert conn.call("NOPE") == ErrorReply("ERR unknown command 'NOPE', with args beginning with: ")
        assert conn.call("ECHO") == ErrorReply("ERR wrong number of arguments for 'echo' command")
        assert conn.call("GET", "a", "b") == ErrorReply("ERR wrong number of arguments for 'get' command")
        assert conn.call("PING") == SimpleString("PONG")  # the connection goes on after command errors


def test_time(server: ServerProcess) -> None:
    with server.connect() as conn:
        seconds, micros = conn.call("TIME")  # type: ignore[misc]
        assert abs(int(seconds) - time.time()) < 60
        assert 0 <= int(micros) < 1_000_000


def test_sleep_replies_ok_and_bounds(server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("SLEEP", 10) == SimpleString("OK")
        assert conn.call("SLEEP", -1) == ErrorReply("ERR ms must be between 0 and 60000")
        assert conn.call("SLEEP", "x") == ErrorReply("ERR value is not an integer or out of range")


def test_quit_replies_then_closes_and_ignores_the_rest(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send_raw(b"PING\r\nQUIT\r\nPING\r\n")
        assert conn.read_until_closed() == b"+PONG\r\n+OK\r\n"


def test_hello(server: ServerProcess) -> None:
    with server.connect() as conn:
        reply = conn.call("HELLO", 2, "SETNAME", "me")
        assert isinstance(reply, list)
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        assert fields[b"proto"] == 2 and fields[b"server"] == b"redis"
        assert conn.call("CLIENT", "GETNAME") == b"me"
        assert conn.call("HELLO", 4) == ErrorReply("NOPROTO unsupported protocol version")
        assert conn.call("HELLO", "x") == ErrorReply("ERR Protocol version is not an integer or out of range")


def test_client_subcommands(server: ServerProcess) -> None:
    with server.connect() as first, server.connect() as second:
        first_id = first.call("CLIENT", "ID")
        second_id = second.call("CLIENT", "ID")
        assert isinstance(first_id, int) and isinstance(second_id, int) and first_id != second_id
        assert first.call("CLIENT", "GETNAME") is None
        assert first.call("CLIENT", "SETNAME", "worker-1") == SimpleString("OK")
        assert first.call("CLIENT", "GETNAME") == b"worker-1"
        assert first.call("CLIENT", "SETNAME", "has space") == ErrorReply(
            "ERR Client names cannot contain spaces, newlines or special characters."
        )
        listing = second.call("CLIENT", "LIST")
        assert isinstance(listing, bytes)
        lines = listing.decode().splitlines()
        assert any(f"id={first_id} " in line and "name=worker-1" in line for line in lines)
        assert any(f"id={second_id} " in line and "cmd=client" in line for line in lines)
        only = second.call("CLIENT", "LIST", "ID", first_id)
        assert isinstance(only, bytes) and only.decode().count("\n") == 1
        assert first.call("CLIENT", "NOPE") == ErrorReply("ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")
        assert first.call("CLIENT", "SETNAME") == ErrorReply(
            "ERR wrong number of arguments for 'client|setname' command"
        )


def test_info_sections(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.call("SET", key("info"), "v")
        text = conn.call("INFO")
        assert isinstance(text, bytes)
        info = text.decode()
        for section in ("# Server", "# Clients", "# Stats", "# Keyspace", "# Crossdock"):
            assert section in info
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        assert int(fields["connected_clients"]) >= 1
        assert int(fields["total_commands_processed"]) >= 2
        assert fields["mode"] == server.mode and fields["cpu"] == server.cpu
        assert fields["db0"].startswith("keys=")
        only_clients = conn.call("INFO", "clients")
        assert isinstance(only_clients, bytes)
        assert b"# Clients" in only_clients and b"# Server" not in only_clients


def test_command_introspection(server: ServerProcess) -> None:
    with server.connect() as conn:
        count = conn.call("COMMAND", "COUNT")
        names = conn.call("COMMAND", "LIST")
        assert isinstance(names, list) and count == len(names)
        expected = {"ping", "echo", "time", "sleep", "quit", "hello", "client", "info", "command", "config", "get",
                    "set", "del", "exists", "incr", "expire", "ttl", "dbsize", "flushdb", "primes", "factor", "pbkdf2"}
        assert expected <= {name.decode() for name in names}
        info = conn.call("COMMAND", "INFO", "get", "nosuch")
        assert isinstance(info, list)
        get_info, missing = info
        assert get_info[:2] == [b"get", 2] and missing is None
        docs = conn.call("COMMAND", "DOCS", "primes")
        assert isinstance(docs, list) and docs[0] == b"primes"
        doc_fields = dict(zip(docs[1][::2], docs[1][1::2], strict=True))
        assert b"summary" in doc_fields and doc_fields[b"group"] == b"crossdock"
        everything = conn.call("COMMAND")
        assert isinstance(everything, list) and len(everything) == count


def test_config_get_answers_what_redis_benchmark_asks(server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("CONFIG", "GET", "save") == [b"save", b""]
        assert conn.call("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
        ports = conn.call("CONFIG", "GET", "p*rt")
        assert ports == [b"port", str(server.port).encode()]
        assert conn.call("CONFIG", "GET", "nothing-like-this") == []


def test_get_set_options(server: ServerProcess) -> None:
    k = key("set")
    with server.connect() as conn:
        assert conn.call("GET", k) is None
        assert conn.call("SET", k, "v1") == SimpleString("OK")
        assert conn.call("GET", k) == b"v1"
        assert conn.call("SET", k, "v2", "NX") is None
        assert conn.call("SET", k, "v2", "XX") == SimpleString("OK")
        assert conn.call("SET", k + "missing", "v", "XX") is None
        assert conn.call("SET", k, "v3", "GET") == b"v2"
        assert conn.call("SET", k, "v", "NX", "XX") == ErrorReply("ERR syntax error")
        assert conn.call("SET", k, "v", "EX", 0) == ErrorReply("ERR invalid expire time in 'set' command")
        assert conn.call("SET", k, "v", "EX", "abc") == ErrorReply("ERR value is not an integer or out of range")
        assert conn.call("SET", k, "v", "EX", 100) == SimpleString("OK")
        assert 99 <= conn.call("TTL", k) <= 100  # type: ignore[operator]
        assert conn.call("SET", k, "v", "PX", 50_000) == SimpleString("OK")
        assert 40_000 < conn.call("PTTL", k) <= 50_000  # type: ignore[operator]
        assert conn.call("SET", k, "w", "KEEPTTL") == SimpleString("OK")
        assert conn.call("TTL", k) > 0  # type: ignore[operator]
        assert conn.call("SET", k, "plain") == SimpleString("OK")
        assert conn.call("TTL", k) == -1


def test_expiry_is_enforced(server: ServerProcess) -> None:
    k = key("exp")
    with server.connect() as conn:
        assert conn.call("SET", k, "v", "PX", 100) == SimpleString("OK")
        assert conn.call("EXISTS", k) == 1
        deadline = time.monotonic() + 10
        while conn.call("EXISTS", k) == 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conn.call("GET", k) is None
        assert conn.call("TTL", k) == -2


def test_del_exists_expire_ttl(server: ServerProcess) -> None:
    a, b = key("a"), key("b")
    with server.connect() as conn:
        conn.call("SET", a, "1")
        conn.call("SET", b, "2")
        assert conn.call("EXISTS", a, b, a, key("none")) == 3
        assert conn.call("EXPIRE", a, 100) == 1
        assert conn.call("EXPIRE", a, 200, "NX") == 0
        assert conn.call("EXPIRE", a, 300, "GT") == 1
        assert 299 <= conn.call("TTL", a) <= 300  # type: ignore[operator]
        assert conn.call("EXPIRE", key("none"), 10) == 0
        assert conn.call("EXPIRE", a, 10, "NX", "XX") == ErrorReply(
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        )
        assert conn.call("EXPIRE", b, -1) == 1  # a deadline in the past deletes, as in Redis
        assert conn.call("EXISTS", b) == 0
        assert conn.call("DEL", a, b, key("none")) == 1
        assert conn.call("TTL", a) == -2


def test_incr(server: ServerProcess) -> None:
    k = key("n")
    with server.connect() as conn:
        assert conn.call("INCR", k) == 1
        assert conn.call("INCR", k) == 2
        assert conn.call("INCRBY", k, 40) == 42
        assert conn.call("DECR", k) == 41
        conn.call("SET", k, "abc")
        assert conn.call("INCR", k) == ErrorReply("ERR value is not an integer or out of range")
        conn.call("SET", k, str(2**63 - 1))
        assert conn.call("INCR", k) == ErrorReply("ERR increment or decrement would overflow")
        conn.call("SET", k, " 1")
        assert conn.call("INCR", k) == ErrorReply("ERR value is not an integer or out of range")


def test_dbsize_and_flushdb(fresh_server_factory) -> None:  # type: ignore[no-untyped-def]
    for mode in ("async", "threaded"):
        process = fresh_server_factory(mode, "inline")
        with process.connect() as conn:
            assert conn.call("DBSIZE") == 0
            conn.call("SET", "a", "1")
            conn.call("SET", "b", "2")
            assert conn.call("DBSIZE") == 2
            assert conn.call("FLUSHDB", "bogus") == ErrorReply("ERR syntax error")
            assert conn.call("FLUSHDB") == SimpleString("OK")
            assert conn.call("DBSIZE") == 0


def test_cpu_commands(server: ServerProcess) -> None:
    with server.connect() as conn:
        assert conn.call("PRIMES", 100) == 25
        assert conn.call("PRIMES", 100_000) == 9592
        assert conn.call("PRIMES", 1) == 0
        assert conn.call("FACTOR", 360) == [2, 2, 2, 3, 3, 5]
        assert conn.call("FACTOR", 97) == [97]
        assert conn.call("FACTOR", 1) == []
        expected = hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 1000).hex()
        assert conn.call("PBKDF2", "pw", "salt", 1000) == expected.encode()


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (("PRIMES", PRIMES_MAX_N + 1), f"ERR n must be between 0 and {PRIMES_MAX_N}"),
        (("PRIMES", -5), f"ERR n must be between 0 and {PRIMES_MAX_N}"),
        (("PRIMES", "ten"), "ERR value is not an integer or out of range"),
        (("FACTOR", FACTOR_MAX_N + 1), f"ERR n must be between 1 and {FACTOR_MAX_N}"),
        (("FACTOR", 0), f"ERR n must be between 1 and {FACTOR_MAX_N}"),
        (("PBKDF2", "p", "s", 0), f"ERR iterations must be between 1 and {PBKDF2_MAX_ITERATIONS}"),
        (("PBKDF2", "p" * 1025, "s", 1), "ERR password must be at most 1024 bytes"),
        (("PRIMES",), "ERR wrong number of arguments for 'primes' command"),
    ],
)
def test_cpu_command_bounds_are_refused_up_front(server: ServerProcess, command: tuple, error: str) -> None:
    with server.connect() as conn:
        assert conn.call(*command) == ErrorReply(error)
        assert conn.call("PING") == SimpleString("PONG")


def test_pipelined_replies_stay_in_request_order(server: ServerProcess) -> None:
    k = key("pipe")
    with server.connect() as conn:
        batch = b""
        from server.protocol import encode_command

        for i in range(200):
            batch += encode_command("ECHO", str(i))
            if i % 50 == 0:
                batch += encode_command("PRIMES", 20_000 + i)
            if i % 70 == 0:
                batch += encode_command("SLEEP", 5)
            batch += encode_command("INCR", k)
        conn.send_raw(batch)
        for count, i in enumerate(range(200), start=1):
            assert conn.read_reply() == str(i).encode()
            if i % 50 == 0:
                assert isinstance(conn.read_reply(), int)
            if i % 70 == 0:
                assert conn.read_reply() == SimpleString("OK")
            assert conn.read_reply() == count


def test_protocol_error_is_answered_then_the_connection_closes(server: ServerProcess) -> None:
    with server.connect() as conn:
        conn.send_raw(b"PING\r\n*1\r\n+oops\r\nPING\r\n")
        assert conn.read_until_closed() == b"+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n"
    with server.connect() as conn:
        conn.send_raw(b'ECHO "unbalanced\r\n')
        assert conn.read_until_closed() == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    with server.connect() as conn:
        conn.send_raw(b"x" * (64 * 1024 + 10))
        assert conn.read_until_closed() == b"-ERR Protocol error: too big inline request\r\n"


def test_plain_set_drops_the_ttl_and_counts_an_expired_key_it_overwrites(server: ServerProcess) -> None:
    """SET with no options takes a fast path in the server; it must still behave as Redis's SET."""
    k = key("plainset")
    with server.connect() as conn:
        assert conn.call("SET", k, "v1", "EX", 100) == SimpleString("OK")
        assert conn.call("SET", k, "v2") == SimpleString("OK")
        assert conn.call("TTL", k) == -1 and conn.call("GET", k) == b"v2"
        before = conn.call("INFO", "stats")
        assert isinstance(before, bytes)
        expired_before = int(before.split(b"expired_keys:")[1].split(b"\r\n")[0])
        assert conn.call("SET", k, "v3", "PX", 1) == SimpleString("OK")
        time.sleep(0.05)
        assert conn.call("SET", k, "v4") == SimpleString("OK")
        after = conn.call("INFO", "stats")
        assert isinstance(after, bytes)
        assert int(after.split(b"expired_keys:")[1].split(b"\r\n")[0]) >= expired_before + 1
        assert conn.call("GET", k) == b"v4" and conn.call("TTL", k) == -1
