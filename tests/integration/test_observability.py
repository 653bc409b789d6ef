"""Observability: INFO sections (commandstats, latencystats, pool), CONFIG RESETSTAT, Prometheus metrics, SLOWLOG.

Every test runs against both front ends (async and threaded, cpu commands on
the pool) as real subprocesses, and reads the server with the tools a user
would: redis-py's ``info()``/``slowlog_get()``, redis-cli, and a Prometheus
scrape parsed by prometheus_client's own parser. Counts are exact: each
test starts from ``CONFIG RESETSTAT`` or ``SLOWLOG RESET`` on its own
connection, and the servers of this module are used by nothing else.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from server.commands import CommandContext, Dispatcher, default_registry
from server.config import Config
from server.protocol import ErrorReply, cores
from server.store.commandstats import HISTOGRAM_SLOTS, CommandStats, histogram_slot, slot_bounds
from server.store.slowlog import SLOWLOG_MAX_LEN
from server.store.state import ServerState
from tests.support import ServerProcess

#: Seconds any client call in these tests may block.
CLIENT_TIMEOUT = 20.0


@pytest.fixture(scope="module", params=["async", "threaded"])
def observed(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server per front end with the metrics endpoint on and every command slow enough for the slow log."""
    process = ServerProcess(request.param, "pool", ["--metrics-port", "0", "--slowlog-threshold-ms", "0"])
    yield process
    process.stop()


def _client(server: ServerProcess) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, protocol=2, socket_timeout=CLIENT_TIMEOUT)


def _raw_info(server: ServerProcess, *sections: str) -> str:
    with server.connect() as sock:
        reply = sock.call("INFO", *sections)
    assert isinstance(reply, bytes)
    return reply.decode()


def _headers(text: str) -> list[str]:
    return [line for line in text.split("\r\n") if line.startswith("#")]


def _scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from one scrape of /metrics."""
    (event,) = server.events("metrics_listening")
    url = f"http://127.0.0.1:{event['port']}/metrics"
    with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# ---------------------------------------------------------------------------------------------------------------
# INFO
# ---------------------------------------------------------------------------------------------------------------
def test_info_default_sections_in_redis_order_without_per_command_sections(observed: ServerProcess) -> None:
    text = _raw_info(observed)
    assert _headers(text) == [
        "# Server", "# Clients", "# Memory", "# Stats", "# CPU", "# Crossdock", "# Limits", "# Pool", "# Keyspace",
    ]  # fmt: skip
    assert text.endswith("\r\n") and "cmdstat_" not in text and "latency_percentiles_usec_" not in text
    info = _client(observed).info()
    assert info["pool_workers"] == 2
    assert info["pool_executor"] == "process"
    assert isinstance(info["pool_worker_pids"], list) and len(info["pool_worker_pids"]) == 2
    assert info["pool_restarts"] == 0 and info["cpu_jobs_queued"] == info["cpu_jobs_running"] == 0
    assert {"cpu_jobs_in_flight", "cpu_rejected_busy", "cpu_timeouts", "cpu_worker_failures"} <= info.keys()
    assert info["maxclients"] > 0


def test_info_all_everything_and_several_sections(observed: ServerProcess) -> None:
    client = _client(observed)
    client.ping()
    for word in ("all", "everything"):
        text = _raw_info(observed, word)
        assert "# Commandstats" in _headers(text) and "# Latencystats" in _headers(text)
        assert "cmdstat_ping:" in text and "latency_percentiles_usec_ping:" in text
    # Several names: each section once, in the server's order whatever the request's order.
    assert _headers(_raw_info(observed, "commandstats", "server", "SERVER")) == ["# Server", "# Commandstats"]
    assert _headers(_raw_info(observed, "default", "latencystats"))[-2:] == ["# Latencystats", "# Keyspace"]
    assert _raw_info(observed, "nosuchsection") == ""
    assert set(client.info("commandstats")) == {k for k in client.info("all") if k.startswith("cmdstat_")}


def test_commandstats_counts_exact_with_rejected_and_failed_as_redis_defines_them(observed: ServerProcess) -> None:
    """rejected: refused before running (arity), not a call; failed: ran and answered an error, a call."""
    client = _client(observed)
    client.config_resetstat()
    key = f"cmdstats:{observed.mode}"
    for _ in range(3):
        client.set(key, "v")
    client.get(key)
    client.get(key)
    for bad in (("GET",), ("GET", key, "extra"), ("INCR", key), ("PRIMES", "-1"), ("CONFIG", "GET"), ("NOPE", "x")):
        with pytest.raises(redis.ResponseError):
            client.execute_command(*bad)
    assert client.execute_command("PRIMES", "100") == 25
    assert client.execute_command("PRIMES", "1000") == 168
    stats = client.info("commandstats")
    assert stats["cmdstat_set"] == {"calls": 3, "usec": stats["cmdstat_set"]["usec"],
                                    "usec_per_call": stats["cmdstat_set"]["usec_per_call"],
                                    "rejected_calls": 0, "failed_calls": 0}  # fmt: skip
    assert (stats["cmdstat_get"]["calls"], stats["cmdstat_get"]["rejected_calls"]) == (2, 2)
    assert stats["cmdstat_get"]["failed_calls"] == 0
    assert (stats["cmdstat_incr"]["calls"], stats["cmdstat_incr"]["failed_calls"]) == (1, 1)
    # A cpu command's argument check fails on the front end: it ran (failed), as Redis's own argument checks do.
    assert (stats["cmdstat_primes"]["calls"], stats["cmdstat_primes"]["failed_calls"]) == (3, 1)
    # Subcommands are counted under Redis's full name; a subcommand's own arity error is a rejection.
    assert stats["cmdstat_config|get"]["rejected_calls"] == 1 and stats["cmdstat_config|get"]["calls"] == 0
    assert stats["cmdstat_config|resetstat"]["calls"] == 1
    assert not any("nope" in name for name in stats)  # unknown commands have no statistics, as in Redis
    text = _raw_info(observed, "commandstats")
    line = next(line for line in text.split("\r\n") if line.startswith("cmdstat_set:"))
    assert re.fullmatch(r"cmdstat_set:calls=3,usec=\d+,usec_per_call=\d+\.\d\d,rejected_calls=0,failed_calls=0", line)
    usec = stats["cmdstat_set"]["usec"]
    assert stats["cmdstat_set"]["usec_per_call"] == pytest.approx(usec / 3, abs=0.006)


def test_latencystats_per_command_in_redis_format(observed: ServerProcess) -> None:
    client = _client(observed)
    client.config_resetstat()
    for _ in range(20):
        client.ping()
    client.execute_command("PRIMES", "10000")
    text = _raw_info(observed, "latencystats")
    assert _headers(text) == ["# Latencystats"]
    number = r"\d+\.\d{3}"
    for name in ("ping", "primes", "config|resetstat"):
        line = next(line for line in text.split("\r\n") if line.startswith(f"latency_percentiles_usec_{name}:"))
        assert re.fullmatch(rf"latency_percentiles_usec_{re.escape(name)}:p50={number},p99={number},p99\.9={number}",
                            line), line  # fmt: skip
    ping = client.info("latencystats")["latency_percentiles_usec_ping"]
    assert 0 < ping["p50"] <= ping["p99"] <= ping["p99.9"]


def test_config_resetstat_zeroes_stats_commandstats_and_latencystats(observed: ServerProcess) -> None:
    client = _client(observed)
    client.set(f"reset:{observed.mode}", 1)
    client.ping()
    assert client.config_resetstat()
    stats = client.info("commandstats")
    # Only the RESETSTAT itself, counted after it ran, as Redis counts it.
    assert list(stats) == ["cmdstat_config|resetstat"] and stats["cmdstat_config|resetstat"]["calls"] == 1
    # ... and the INFO commandstats that has run since.
    assert sorted(client.info("latencystats")) == [
        "latency_percentiles_usec_config|resetstat", "latency_percentiles_usec_info",
    ]  # fmt: skip
    # The two INFOs above and this one (counted as it starts); the RESETSTAT itself was counted before it reset.
    assert client.info("stats")["total_commands_processed"] == 3
    assert client.slowlog_len() > 0  # the slow log is not statistics: RESETSTAT leaves it alone, as in Redis


# ---------------------------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------------------------
def test_metrics_scrape_reads_the_same_counters(observed: ServerProcess) -> None:
    client = _client(observed)
    client.config_resetstat()
    key = f"metrics:{observed.mode}"
    client.set(key, "x")
    client.get(key)
    client.get(key)
    with pytest.raises(redis.ResponseError):
        client.execute_command("GET")
    with pytest.raises(redis.ResponseError):
        client.execute_command("INCR", key)
    for n in ("100", "1000", "10000"):
        client.execute_command("PRIMES", n)
    with observed.connect() as first, observed.connect() as second:
        assert first.call("PING") == second.call("PING") == "PONG"
        samples = _scrape(observed)
    assert samples[("crossdock_connections_received_total", ())] == 2  # since RESETSTAT, as INFO counts them
    assert samples[("crossdock_connected_clients", ())] >= 3  # these two and the redis-py client

    def requests(command: str, outcome: str) -> float:
        return samples[("crossdock_requests_total", (("command", command), ("outcome", outcome)))]

    assert (requests("get", "ok"), requests("get", "failed"), requests("get", "rejected")) == (2, 0, 1)
    assert requests("ping", "ok") == 2
    assert (requests("incr", "ok"), requests("incr", "failed")) == (0, 1)
    assert requests("primes", "ok") == 3
    cpu = (("kind", "cpu"),)
    assert samples[("crossdock_request_duration_seconds_count", cpu)] == 3
    assert samples[("crossdock_request_duration_seconds_bucket", (*cpu, ("le", "+Inf")))] == 3
    assert samples[("crossdock_request_duration_seconds_sum", cpu)] > 0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "crossdock_request_duration_seconds_bucket" and dict(labels)["kind"] == "inline"
    )
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)  # cumulative
    inline_count = samples[("crossdock_request_duration_seconds_count", (("kind", "inline"),))]
    assert buckets[-1] == (float("inf"), inline_count) and inline_count >= 5  # RESETSTAT, SET, GET x2, INCR
    assert samples[("crossdock_pool_workers", ())] == 2
    assert samples[("crossdock_pool_queue_depth", ())] == 0
    assert samples[("crossdock_pool_busy_workers", ())] == 0
    assert ("crossdock_pool_restarts_total", ()) in samples
    assert ("crossdock_connections_rejected_total", ()) in samples
    assert samples[("crossdock_net_input_bytes_total", ())] > 0
    assert samples[("crossdock_net_output_bytes_total", ())] > 0
    assert samples[("crossdock_info", (("cpu", "pool"), ("mode", observed.mode), ("version", "0.1.0")))] == 1


def test_metrics_endpoint_is_off_by_default(front_end: ServerProcess) -> None:
    assert front_end.events("metrics_listening") == []


# ---------------------------------------------------------------------------------------------------------------
# SLOWLOG
# ---------------------------------------------------------------------------------------------------------------
def test_slowlog_get_entries_newest_first_with_client_and_args(observed: ServerProcess) -> None:
    client = _client(observed)
    client.client_setname("observer")
    assert client.slowlog_reset()
    client.set("slow:key", "v")
    client.execute_command("PRIMES", "1000")
    entries = client.slowlog_get(3)
    assert [entry["command"] for entry in entries] == [b"PRIMES 1000", b"SET slow:key v", b"SLOWLOG RESET"]
    assert entries[0]["id"] == entries[1]["id"] + 1 == entries[2]["id"] + 2
    address = client.client_info()["addr"]
    assert {entry["client_address"] for entry in entries} == {address.encode()}
    assert {entry["client_name"] for entry in entries} == {b"observer"}
    assert all(entry["duration"] >= 0 and entry["start_time"] > 1_600_000_000 for entry in entries)
    assert client.slowlog_len() == 5  # the three, then SLOWLOG GET and CLIENT INFO, which have run since


def test_slowlog_truncates_args_as_redis_and_redacts_passwords(observed: ServerProcess) -> None:
    with observed.connect() as sock:
        assert sock.call("SLOWLOG", "RESET") == "OK"
        pairs: list[object] = []
        for index in range(20):
            pairs += [f"slowtrunc:{index}", "x" * 200 if index == 0 else "v"]
        assert sock.call("MSET", *pairs) == "OK"
        sock.call("HELLO", "2", "AUTH", "default", "secret")
        hello, mset = sock.call("SLOWLOG", "GET", "2")  # type: ignore[misc]
    args = mset[3]
    assert len(args) == 32 and args[:2] == [b"MSET", b"slowtrunc:0"]
    assert args[2] == b"x" * 128 + b"... (72 more bytes)"
    assert args[-1] == b"... (10 more arguments)"  # 41 arguments: 31 kept, the 32nd says how many were left
    assert hello[3] == [b"HELLO", b"2", b"AUTH", b"(redacted)", b"(redacted)"]


def test_slowlog_len_reset_count_errors_and_max_len(observed: ServerProcess) -> None:
    with observed.connect() as sock:
        sock.call("SLOWLOG", "RESET")
        assert sock.call("SLOWLOG", "LEN") == 1  # the RESET itself is slower than 0 ms once it has run
        assert sock.call("SLOWLOG", "GET", "0") == []
        for bad, message in [
            (("GET", "-2"), "ERR count should be greater than or equal to -1"),
            (("GET", "x"), "ERR count should be greater than or equal to -1"),
            (("LEN", "1"), "ERR wrong number of arguments for 'slowlog|len' command"),
            (("GET", "1", "2"), "ERR unknown subcommand or wrong number of arguments for 'GET'. Try SLOWLOG HELP."),
            (("NOPE",), "ERR unknown subcommand 'NOPE'. Try SLOWLOG HELP."),
        ]:
            assert sock.call("SLOWLOG", *bad) == message
        sock.send_raw(b"PING\r\n" * (SLOWLOG_MAX_LEN + 50))
        for _ in range(SLOWLOG_MAX_LEN + 50):
            assert sock.read_reply() == "PONG"
        assert sock.call("SLOWLOG", "LEN") == SLOWLOG_MAX_LEN
        assert len(sock.call("SLOWLOG", "GET", "-1")) == SLOWLOG_MAX_LEN  # type: ignore[arg-type]
        assert len(sock.call("SLOWLOG", "GET")) == 10  # type: ignore[arg-type]
        help_lines = sock.call("SLOWLOG", "HELP")
        assert isinstance(help_lines, list) and help_lines[0].startswith(b"SLOWLOG <subcommand>")


def test_slowlog_with_redis_cli(observed: ServerProcess) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(observed.port), *args], capture_output=True, timeout=CLIENT_TIMEOUT, check=True
        )
        return done.stdout.decode()

    cli("SLOWLOG", "RESET")
    cli("ECHO", "from-redis-cli")
    out = cli("SLOWLOG", "GET", "1").splitlines()
    assert out[3:5] == ["ECHO", "from-redis-cli"]
    assert out[5].startswith("127.0.0.1:")


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_slowlog_fed_by_the_threshold(fresh_server_factory: object, mode: str) -> None:
    """Default threshold (10 ms): entries only for commands at or over it, matching INFO's slow_commands."""
    server = fresh_server_factory(mode, "pool")  # type: ignore[operator]
    client = _client(server)
    client.ping()
    client.execute_command("PRIMES", "3000000")  # far over 10 ms in a worker, on any machine
    entries = client.slowlog_get(-1)
    assert [e["command"] for e in entries if e["command"].startswith(b"PRIMES")] == [b"PRIMES 3000000"]
    assert all(entry["duration"] >= 10_000 for entry in entries)
    assert client.info("stats")["slow_commands"] == len(entries)


# ---------------------------------------------------------------------------------------------------------------
# In-process: the histogram layout, and the dispatcher's entry points for other features
# ---------------------------------------------------------------------------------------------------------------
def test_histogram_slots_contain_their_values_and_are_at_most_1_32_wide() -> None:
    values = [*range(0, 5000), *(int(1.37**k) for k in range(20, 130))]
    for ns in values:
        low, high = slot_bounds(histogram_slot(ns))
        assert low <= ns <= high
        assert ns < 64 or (high - low + 1) / low <= 1 / 32
    assert histogram_slot(2**63 - 1) < HISTOGRAM_SLOTS
    stats = CommandStats("get", "inline")
    for us in range(1, 1001):  # 1..1000 us, once each
        stats.record(us * 1000)
    p50, p99, p999 = stats.percentiles_us()
    assert 500 <= p50 <= 500 * (1 + 1 / 32) and 990 <= p99 <= 990 * (1 + 1 / 32) and 999 <= p999 <= 1000 * 1.04
    assert stats.calls == 1000 and stats.ns == sum(range(1, 1001)) * 1000


def _dispatcher(threshold_ms: float) -> tuple[Dispatcher, CommandContext]:
    state = ServerState(Config(slowlog_threshold_ms=threshold_ms), thread_safe=False)
    client = state.register_client("127.0.0.1:5000", "127.0.0.1:7379", -1)
    return Dispatcher(default_registry(), state), CommandContext(state, client, default_registry())


def test_negative_slowlog_threshold_turns_the_slow_log_off_and_zero_logs_everything() -> None:
    for threshold, expected in ((-1.0, 0), (0.0, 1)):
        dispatcher, ctx = _dispatcher(threshold)
        assert dispatcher.execute(ctx, [b"PING"]) == b"+PONG\r\n"
        assert len(ctx.server.slowlog) == expected


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_busy_shedding_counts_rejected_calls_not_failed_ones(fresh_server_factory: object, mode: str) -> None:
    """-BUSY from the cpu backlog bound is Redis's rejected call (it never ran); the admitted ones are calls."""
    server = fresh_server_factory(  # type: ignore[operator]
        mode, "pool", "--workers", "1", "--cpu-queue-limit", "1", "--modules", "tests.fault_commands"
    )
    connections = [server.connect() for _ in range(6)]
    try:
        for conn in connections:
            conn.send("BURN", 300)
        replies = [conn.read_reply() for conn in connections]
    finally:
        for conn in connections:
            conn.close()
    shed = [reply for reply in replies if isinstance(reply, ErrorReply)]
    assert shed and all(str(reply).startswith("BUSY ") for reply in shed)
    stats = _client(server).info("commandstats")["cmdstat_burn"]
    assert (stats["calls"], stats["rejected_calls"], stats["failed_calls"]) == (len(replies) - len(shed), len(shed), 0)
    assert _client(server).info("pool")["cpu_rejected_busy"] == len(shed)


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_noauth_is_a_rejected_call_and_auth_is_redacted_in_the_slow_log(
    fresh_server_factory: object, mode: str
) -> None:
    server = fresh_server_factory(mode, "pool", "--requirepass", "s3cret", "--slowlog-threshold-ms", "0")  # type: ignore[operator]
    with server.connect() as sock:
        assert str(sock.call("GET", "k")).startswith("NOAUTH")
        assert sock.call("AUTH", "s3cret") == "OK"
        stats = _client_with_password(server).info("commandstats")
        entries = sock.call("SLOWLOG", "GET", "-1")
    assert (stats["cmdstat_get"]["calls"], stats["cmdstat_get"]["rejected_calls"]) == (0, 1)
    assert [b"AUTH", b"(redacted)"] in [entry[3] for entry in entries]  # type: ignore[union-attr, index]
    assert not any(b"s3cret" in arg for entry in entries for arg in entry[3])  # type: ignore[union-attr, index]


def _client_with_password(server: ServerProcess) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, protocol=2, password="s3cret", socket_timeout=CLIENT_TIMEOUT)


@pytest.mark.parametrize("core", list(cores.AVAILABLE))
def test_info_server_names_the_parser_core(core: str) -> None:
    """INFO server says which parser core runs; CROSSDOCK_CORE picks it, and the server answers with it."""
    process = ServerProcess("async", "inline", env={cores.CORE_ENV: core})
    try:
        client = _client(process)
        assert client.info("server")["crossdock_core"] == core
        with client.pipeline(transaction=False) as pipe:
            for i in range(50):
                pipe.set(f"k{i}", b"v" * i)
                pipe.get(f"k{i}")
            assert pipe.execute()[1::2] == [b"v" * i for i in range(50)]
    finally:
        process.stop()
