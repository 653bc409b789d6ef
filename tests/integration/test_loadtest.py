"""The load generator against real servers, at toy scale: complete, consistent reports, no thresholds.

Every run here is a few connections for about a second. The assertions are
about bookkeeping (every request sent got exactly one reply, counts agree
with the histograms, the special figures are present), never about speed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import histogram
from loadtest.config import LoadConfig, check_host, ensure_open_files, parse_cpus
from loadtest.engine import split
from loadtest.runner import plan_workers, run_loadtest
from loadtest.scenarios import DECK_SIZE, parse_scenario
from loadtest.servers import RunningServer, redis_available, start_crossdock, start_redis
from tests.support import RespSocket

ROOT = Path(__file__).resolve().parents[2]

#: Seconds each small run lasts: long enough for a few progress intervals' worth of traffic.
RUN_SECONDS = 1.0


@pytest.fixture(scope="module")
def pool_server() -> Iterator[RunningServer]:
    with start_crossdock("async", "pool", 1) as server:
        yield server


def run(server: RunningServer, scenario: str, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"connections": 4, "processes": 2, "duration": RUN_SECONDS, "interval": 0.25}
    options.update(kwargs)
    work = options.pop("work", None)
    config = LoadConfig(scenario=parse_scenario(scenario, work=work), port=server.port, **options)
    return run_loadtest(config)


def assert_consistent(report: dict[str, Any]) -> None:
    """Clean run: no problems, sent == received, and the histograms counted every reply."""
    assert report["ok"], report["problems"]
    requests = report["requests"]
    assert requests["sent"] == requests["received"] > 0
    assert requests["lost"] == requests["unsent"] == requests["errors"] == 0
    assert report["connections"]["failed"] == 0
    assert report["latency_ms"]["count"] == requests["received"] - report.get("probe", {}).get("count", 0)
    assert sum(stats["count"] for stats in report["by_command"].values()) == report["latency_ms"]["count"]
    latency = report["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["throughput_rps"] > 0
    assert report["timeline"], "no progress snapshots were produced"


# -- scenarios against a real server -------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    ["ping", "echo", "set", "get", "setget", "primes", "factor", "pbkdf2", "mix:ping=90,primes=10"],
)
def test_closed_loop_scenarios_are_consistent(pool_server: RunningServer, scenario: str) -> None:
    report = run(pool_server, scenario, work=2000 if scenario in ("primes", "pbkdf2") else None)
    assert_consistent(report)
    assert report["load"]["model"] == "closed"
    assert report["load"]["processes"] == 2
    assert report["connections"]["opened"] == 4


def test_mix_reports_each_command(pool_server: RunningServer) -> None:
    report = run(pool_server, "mix:ping=90,primes=10", work=1000)
    assert_consistent(report)
    counts = {name: stats["count"] for name, stats in report["by_command"].items()}
    assert set(counts) == {"ping", "primes"}
    assert counts["ping"] > counts["primes"] > 0


def test_pipeline_and_request_budget(pool_server: RunningServer) -> None:
    report = run(pool_server, "ping", pipeline=8, requests=1000, duration=30.0)
    assert_consistent(report)
    assert report["requests"]["sent"] == 1000


def test_open_loop_keeps_the_rate(pool_server: RunningServer) -> None:
    rate = 400.0
    report = run(pool_server, "ping", rate=rate, requests=int(rate), duration=30.0)
    assert_consistent(report)
    assert report["requests"]["sent"] == int(rate)
    assert report["open_loop"]["target_rate"] == rate
    # The budget of 400 at 400/s is spread over one second of timetable (no pacing thresholds:
    # only that the run took about the scheduled time rather than being sent in one burst).
    assert report["elapsed_s"] >= 0.9


def test_open_loop_latency_counts_from_the_schedule() -> None:
    """A stalled server: the open loop keeps its timetable and the stall shows in the latencies.

    The async+inline server runs PRIMES on its event loop, so one big PRIMES
    freezes every connection. Requests due during the freeze are still sent
    on time, and their latency, measured from the schedule, includes the wait.
    """
    with start_crossdock("async", "inline", 1) as server:
        stall = threading.Thread(target=_stall_server, args=(server.port,), daemon=True)
        timer = threading.Timer(0.3, stall.start)
        timer.start()
        report = run(server, "ping", rate=500.0, connections=2, processes=1, duration=1.5)
        timer.cancel()
        stall.join(30)
    assert_consistent(report)
    assert report["requests"]["sent"] >= 700  # ~750 scheduled in 1.5 s, none skipped by the stall
    assert report["latency_ms"]["max"] >= 50.0  # the freeze (several hundred ms) is visible


def _stall_server(port: int) -> None:
    with RespSocket("127.0.0.1", port) as sock:
        sock.call("PRIMES", 3_000_000)


def test_responsiveness_reports_the_probe(pool_server: RunningServer) -> None:
    report = run(pool_server, "responsiveness", work=20_000, probe_rate=50.0)
    assert_consistent(report)
    probe = report["probe"]
    assert probe["count"] >= 25  # 50/s for a second, on a timetable
    assert probe["p50"] <= probe["p99"] <= probe["max"]
    assert report["connections"]["requested"] == 5  # four load connections and the probe


def test_storm_counts_connections(pool_server: RunningServer) -> None:
    report = run(pool_server, "storm")
    assert_consistent(report)
    assert report["storm"]["cycles"] == report["requests"]["received"]
    assert report["storm"]["connections_per_s"] > 0


def test_hold_measures_server_memory(pool_server: RunningServer) -> None:
    report = run(pool_server, "hold", connections=50)
    assert_consistent(report)
    hold = report["hold"]
    assert hold["connections_held"] == 50
    assert hold["rss_source"].startswith("/proc/")
    assert hold["rss_before_bytes"] > 0 and hold["rss_with_connections_bytes"] > 0
    # A reused server may reuse freed memory: then no figure, and a note saying why (never a negative growth).
    if hold["rss_growth_bytes"] is None:
        assert "RSS fell" in hold["rss_note"] and hold["bytes_per_connection"] is None
    else:
        assert hold["rss_growth_bytes"] >= 0 and hold["bytes_per_connection"] is not None


#: maxclients for the hold-at-the-limit test: small, so filling it is cheap.
SMALL_MAXCLIENTS = 20


def test_hold_fills_maxclients_and_still_measures() -> None:
    """The INFO probe is opened before the held connections: at maxclients it is not the one refused (issue 16)."""
    with start_crossdock("async", "inline", 1, extra=["--maxclients", str(SMALL_MAXCLIENTS)]) as server:
        report = run(server, "hold", connections=SMALL_MAXCLIENTS - 1)  # the probe takes the last slot
        assert_consistent(report)
        hold = report["hold"]
        assert hold["connections_held"] == SMALL_MAXCLIENTS - 1
        assert hold["rss_before_bytes"] > 0 and hold["rss_with_connections_bytes"] > 0
        with pytest.raises(ValueError, match=r"--connections 20: the server allows 20 clients .* --maxclients 21"):
            run(server, "hold", connections=SMALL_MAXCLIENTS)


def test_error_replies_fail_the_run(pool_server: RunningServer) -> None:
    report = run(pool_server, "primes", work=10**9)  # past PRIMES_MAX_N: every reply is -ERR
    assert not report["ok"]
    assert report["requests"]["errors"] == report["requests"]["received"] > 0
    assert "ERR" in report["requests"]["errors_by_kind"]


def test_connection_failures_fail_the_run() -> None:
    # A bound socket that never listens holds the port, so connecting is refused and no other
    # process can start listening there during the test.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        config = LoadConfig(scenario=parse_scenario("ping"), port=port, connections=3, processes=1, duration=0.5)
        report = run_loadtest(config)
    assert not report["ok"]
    assert report["connections"]["failures"] == {"ECONNREFUSED": 3}


# -- the command line ------------------------------------------------------------------------------


def test_cli_json_and_exit_status(pool_server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    command = [
        sys.executable, "-m", "server", "loadtest", "-p", str(pool_server.port), "-c", "2", "-P", "1",
        "-d", "0.5", "--scenario", "echo", "--size", "64", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["scenario"]["name"] == "echo" and report["scenario"]["size"] == 64
    assert "sent=" in done.stderr  # one progress line per interval when not on a TTY
    assert "latency (ms)" in done.stdout

    failing = [*command[:-2], "--scenario", "primes", "--work", str(10**9), "--json", "-"]
    done = subprocess.run(failing, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False


def test_cli_refuses_a_remote_host() -> None:
    command = [sys.executable, "-m", "server", "loadtest", "-H", "192.0.2.1", "-d", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not loopback" in done.stderr


def test_compare_writes_a_report(tmp_path: Path) -> None:
    baseline = ["--baseline", "redis"] if redis_available() else []
    command = [
        sys.executable, "-m", "server", "compare", "--scenario", "ping", "-c", "2", "-d", "0.5",
        "--modes", "async+pool,threaded+inline", "--out", str(tmp_path), *baseline,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "compare.json").read_text())
    targets = [row["target"] for row in document["rows"]]
    assert targets == ["async+pool", "threaded+inline", *(["redis"] if baseline else [])]
    assert all(row["ok"] and row["throughput_rps"] > 0 for row in document["rows"])
    assert "pinned" in document["pinning"]
    assert (tmp_path / "compare.md").read_text().count("| async+pool |") == 1
    assert (tmp_path / "throughput.png").stat().st_size > 0
    assert (tmp_path / "p99.png").stat().st_size > 0


@pytest.mark.skipif(not redis_available(), reason="redis-server not installed")
def test_against_redis_server() -> None:
    with start_redis() as server:
        report = run(server, "setget", connections=3, processes=1)
    assert_consistent(report)
    assert report["target"]["server"].get("redis_version")


# -- pieces ------------------------------------------------------------------------------------------


def test_histogram_merge_equals_recording_everything_in_one() -> None:
    first, second, together = (histogram.new_histogram() for _ in range(3))
    tally_a: histogram.Tally = {}
    tally_b: histogram.Tally = {}
    for value in range(1, 5000, 7):
        tally_a[value] = tally_a.get(value, 0) + 1
        together.record_value(value)
    for value in range(100, 200_000, 301):
        tally_b[value] = tally_b.get(value, 0) + 2
        together.record_value(value, 2)
    assert histogram.pour(tally_a, first) == 715 and not tally_a
    histogram.pour(tally_b, second)
    merged = histogram.merge_encoded([histogram.encode(first), histogram.encode(second), b""])
    assert merged.get_total_count() == together.get_total_count()
    assert histogram.summarize(merged) == histogram.summarize(together)


def test_histogram_clamps_instead_of_dropping() -> None:
    hist = histogram.new_histogram()
    histogram.pour({0: 3, histogram.HIGHEST_US * 2: 1}, hist)
    assert hist.get_total_count() == 4


def test_open_loop_timetables_interleave_across_processes() -> None:
    """Each process's timetable is rate/P with a phase of index/rate: together, exactly the full rate."""
    scenario = parse_scenario("ping")
    rate, processes = 1000.0, 4
    plans = plan_workers(LoadConfig(scenario=scenario, connections=8, processes=processes, rate=rate, requests=400))
    assert [plan.requests for plan in plans] == [100] * 4
    times = sorted(
        plan.phase_ns + int(k * 1e9 / plan.rate)  # the same arithmetic as OpenLoop.due_at
        for plan in plans
        if plan.rate is not None
        for k in range(100)
    )
    assert times == [round(j * 1e9 / rate) for j in range(400)]


def test_split_and_plans() -> None:
    assert split(10, 3) == [4, 3, 3]
    plans = plan_workers(LoadConfig(scenario=parse_scenario("responsiveness"), connections=3, processes=8))
    assert len(plans) == 3  # never more processes than connections
    assert [plan.probe for plan in plans] == [True, False, False]


def test_scenario_parsing() -> None:
    mix = parse_scenario("mix:ping=90,primes=10", work=123)
    assert mix.weights == (("ping", 90), ("primes", 10)) and mix.work["primes"] == 123
    deck = mix.deck()
    assert len(deck) == DECK_SIZE
    assert sum(1 for label, _ in deck if label == 1) == round(DECK_SIZE * 0.1)
    assert parse_scenario("cpu:pbkdf2").weights == (("pbkdf2", 1),)
    assert parse_scenario("responsiveness").labels == ["primes", "probe"]
    for bad in (
        "nope",
        "mix:",
        "mix:ping=0",
        "mix:ping=1,ping=2",
        "mix:quit=1",
        "cpu:ping",
        "responsiveness:ping",
    ):
        with pytest.raises(ValueError):
            parse_scenario(bad)


def test_safety_checks() -> None:
    check_host("127.0.0.1", allow_remote=False)
    check_host("::1", allow_remote=False)
    with pytest.raises(ValueError, match="not loopback"):
        check_host("192.0.2.1", allow_remote=False)
    check_host("192.0.2.1", allow_remote=True)
    with pytest.raises(ValueError):
        LoadConfig(scenario=parse_scenario("ping"), duration=10_000).validate()
    with pytest.raises(ValueError):
        LoadConfig(scenario=parse_scenario("ping"), connections=0).validate()
    assert ensure_open_files(16) >= 16
    with pytest.raises(ValueError, match="hard limit"):
        ensure_open_files(10**12)
    assert parse_cpus("0,2-3") == (0, 2, 3)


def test_compare_crossover_quick_writes_the_sweep_and_its_crossover_points(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "server", "compare", "--scenario", "crossover", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((tmp_path / "compare.json").read_text())
    assert document["scenario"] == "crossover" and document["quick"] is True
    assert document["targets"] == ["async+pool", "async+inline", "threaded+inline", "threaded+pool"]
    assert document["machine"]["commit"] and document["date"]
    for name in ("primes", "pbkdf2"):
        steps = document["calibration"][name]
        assert len(steps) == 2 and steps[0]["work"] < steps[1]["work"]
        rows = [row for row in document["rows"] if row["command"] == name]
        assert len(rows) == 2 * 4  # every size against every mode
        assert all(row["ok"] and row["throughput_rps"] > 0 and row["probe_p99_ms"] > 0 for row in rows)
        points = document["crossovers"][name]
        assert points["work_us"] == sorted(points["work_us"])
        assert {"pool_over_inline_throughput", "pool_over_inline_probe_p99", "fastest_at_us"} <= set(points)
        assert (tmp_path / f"crossover_{name}.png").stat().st_size > 0
    assert any(line.startswith("PRIMES: throughput:") for line in document["statements"])
    text = (tmp_path / "compare.md").read_text()
    assert "Crossover points:" in text and "smoke test" in text and "![crossover_pbkdf2.png]" in text


def test_progress_line_without_a_rate_for_a_tiny_tail() -> None:
    from loadtest.display import progress_line

    snapshot = {
        "t": 1.0, "sent": 5, "received": 5, "rps": None, "p50_ms": 0.1, "p99_ms": 0.2, "max_ms": 0.3,
        "opened": 1, "errors": 0, "failures": 0,
    }  # fmt: skip
    assert " rate=-/s " in progress_line(snapshot)


def test_compare_table_prints_rates_as_whole_numbers() -> None:
    from loadtest.compare import markdown_table

    table = markdown_table([{"target": "async+pool", "throughput_rps": 127.1, "p50_ms": 0.25}], "load")
    assert "| 127 |" in table and "0.250" in table and "127.100" not in table
