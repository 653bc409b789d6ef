"""bench/targets.py, the issue 7 benchmark harness: it runs end to end and reports every run, never timing.

The script's smallest mode (``--quick --runs 1`` on the start-up and memory
rows, a few hundred connections) runs as a real subprocess against real
servers; the assertions are about the shape of what it reports. The
redis-benchmark runner it uses is checked on real output and a real failure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from loadtest import redisbench
from loadtest.servers import free_port, redis_available

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "targets.py"

#: Seconds the smallest run may take: it takes about ten (two crossdock start-ups, two hold runs).
SMOKE_TIMEOUT = 50


def load_targets() -> ModuleType:
    """bench/targets.py as a module (bench/ is a directory of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_targets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not redis_available(), reason="redis-server is the baseline")
def test_smallest_run_reports_every_run_as_json_and_markdown(tmp_path: Path) -> None:
    out, md = tmp_path / "targets.json", tmp_path / "targets.md"
    smallest = ["--quick", "--runs", "1", "--rows", "startup,memory"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *smallest, "--json", str(out), "--markdown", str(md)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["ok"] is True
    assert document["quick"] is True and document["runs"] == 1
    for key in ("cpu_model", "cpus", "kernel", "python", "uvloop", "redis_server"):
        assert document["machine"][key]
    assert "pinned" in document["pinning"] or "not pinned" in document["pinning"]

    figures = {figure["key"]: figure for figure in document["figures"]}
    assert list(figures) == ["startup", "memory"]
    for figure in figures.values():
        assert figure["problems"] == []
        assert [run["side"] for run in figure["runs"]] == ["crossdock", "baseline"]  # round 1: crossdock first
        for side in ("crossdock", "baseline"):
            stats = figure[side]
            assert len(stats["values"]) == 1 and stats["values"][0] > 0
            assert stats["min"] <= stats["median"] <= stats["max"]
        assert figure["ratio"] == pytest.approx(figure["crossdock"]["median"] / figure["baseline"]["median"])
        assert isinstance(figure["met"], bool)
        assert figure["target"]["value_at_most"] is not None

    startup = figures["startup"]["runs"][0]["raw"]
    assert startup["workers"] >= 1 and startup["started_line_s"] <= figures["startup"]["crossdock"]["median"]
    hold = figures["memory"]["runs"][0]["raw"]["hold"]
    assert hold["connections_held"] == document["scale"]["idle_connections"]
    assert hold["rss_source"].startswith("/proc/")

    text = md.read_text()
    assert "smoke test" in text
    assert "| figure | command | crossdock median (min-max) |" in text
    assert "`crossdock serve --port 0`" in text and "crossdock loadtest -s hold" in text
    assert "start-up" in done.stdout and "idle connection memory" in done.stdout  # the plain table


def test_bad_arguments_exit_2() -> None:
    for args in (["--rows", "nope"], ["--runs", "0"]):
        done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr


def test_scaling_target_is_computed_from_the_cpus() -> None:
    targets = load_targets()
    for usable, expected in (((0, 1), 2), ((0,), 1), ((0, 1, 2, 3), 4)):
        ctx = targets.Context(targets.QUICK, 1, usable[:1], usable[1:2], usable, "test")
        workers, placement, free = targets.scaling_plan(ctx)
        assert workers == free == expected
        assert sorted(placement.values()) == list(usable)
        row = targets.scaling_row(ctx)
        assert row.figures[0].target.ratio_at_least == pytest.approx(0.9 * expected)


def test_a_missed_target_is_not_a_failure_but_a_failed_run_is() -> None:
    targets = load_targets()
    figure = targets.Figure("k", "inline", "t", "cmd", "/s", "a", "b", targets.Target(">= 0.8x", ratio_at_least=0.8))
    figure.add(0, 1, targets.Sample("k", 50.0, {}))
    figure.add(1, 1, targets.Sample("k", 100.0, {}))
    assert figure.ratio == pytest.approx(0.5) and figure.met is False and figure.verdict() == "**no**"
    assert figure.problems == []
    figure.add(0, 2, targets.Sample("k", None, {}, ["redis-benchmark exited with status 1"]))
    assert figure.problems and figure.verdict() == "no (failed runs)"
    assert figure.stats(0)["values"] == [50.0]  # the failed run is not a figure


def test_redis_benchmark_output_is_parsed_past_progress_lines() -> None:
    text = (
        "PING_MBULK: rps=0.0 (overall: -nan) avg_msec=-nan (overall: -nan)\r"
        "PING_MBULK: rps=170000.0 (overall: 170000.0) avg_msec=0.2\r"
        "PING_MBULK: 178253.00 requests per second, p50=0.143 msec\n"
        "SET: 54054.05 requests per second, p50=0.023 msec\n"
        "\rGET: 117647.05 requests per second\n\n"
    )
    rps, p50 = redisbench.parse_output(text)
    assert rps == {"PING_MBULK": 178253.0, "SET": 54054.05, "GET": 117647.05}
    assert p50 == {"PING_MBULK": 0.143, "SET": 0.023}
    assert redisbench.find_problems(text, 0, ["PING_MBULK", "SET", "GET"], rps) == []
    error = "Error from server: ERR unknown command 'FOO'\n"
    problems = redisbench.find_problems(error, 1, ["PING_MBULK"], {})
    assert any("status 1" in p for p in problems) and any("Error from server" in p for p in problems)
    assert any("no final figure" in p for p in problems)


@pytest.mark.skipif(not redisbench.available(), reason="needs redis-benchmark")
def test_redis_benchmark_against_a_closed_port_fails_within_its_time_limit() -> None:
    # redis-benchmark 7 keeps retrying a refused connection forever: the time limit must end it.
    run = redisbench.run_redis_benchmark(free_port(), ["ping_mbulk"], 1, 10, timeout=2.0)
    assert not run.ok
    assert any("Could not connect" in p or "did not finish" in p for p in run.problems)


def test_roundtrip_row_states_crossdock_beside_the_bare_executor_and_the_pipe(tmp_path: Path) -> None:
    out = tmp_path / "targets.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--runs", "1", "--rows", "roundtrip", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = {figure["key"]: figure for figure in json.loads(out.read_text())["figures"]}
    assert list(figures) == ["roundtrip.executor", "roundtrip.hop", "roundtrip.pipe"]
    for figure in figures.values():
        assert figure["problems"] == [] and figure["unit"] == "us"
        assert figure["crossdock"]["median"] > 0 and figure["baseline"]["median"] > 0
    stdlib = next(run for run in figures["roundtrip.executor"]["runs"] if run["side"] == "baseline")["raw"]
    assert stdlib["function"] == "count_primes(10)" and stdlib["start_method"] == "forkserver"
    assert stdlib["executor"]["calls"] == stdlib["pipe"]["calls"] > 0
    hop = next(run for run in figures["roundtrip.hop"]["runs"] if run["side"] == "crossdock")
    pool = hop["raw"]["pool"]["latency_ms"]["p50"] * 1000.0
    inline = hop["raw"]["inline"]["latency_ms"]["p50"] * 1000.0
    assert hop["value"] == pytest.approx(pool - inline)  # the hop is the same run's difference
    assert figures["roundtrip.executor"]["target"]["ratio_at_most"] == pytest.approx(1.1)


def test_generator_row_drives_one_redis_server_with_both_generators(tmp_path: Path) -> None:
    """Issue 14's generator row: crossdock loadtest and redis-benchmark, same depth and count, same server."""
    out = tmp_path / "targets.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--runs", "2", "--rows", "generator-pipelined", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (figure,) = json.loads(out.read_text())["figures"]
    assert figure["key"] == "generator-pipelined" and figure["problems"] == []
    assert (figure["crossdock_side"], figure["baseline_side"]) == ("crossdock loadtest", "redis-benchmark")
    assert figure["target"]["ratio_at_least"] == 0.8
    ours = [run["raw"] for run in figure["runs"] if run["side"] == "crossdock"]
    theirs = [run["raw"] for run in figure["runs"] if run["side"] == "baseline"]
    assert len(ours) == len(theirs) == 2
    ports = {raw["target"]["port"] for raw in ours}
    assert len(ports) == 1  # one redis-server for every round of both sides
    (port,) = ports
    for raw in ours:
        assert raw["target"]["server"]["redis_version"]  # the generator drove redis-server, not crossdock
        assert raw["load"]["pipeline"] == 16 and raw["load"]["connections"] == 50
        assert raw["requests"]["received"] == raw["load"]["requests_limit"]  # the same -n as redis-benchmark's
    for raw in theirs:
        assert f" -p {port} " in raw["command"] and " -P 16 " in raw["command"] and " -c 50 " in raw["command"]
        assert f" -n {ours[0]['load']['requests_limit']} " in raw["command"]
