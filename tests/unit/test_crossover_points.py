"""The crossover sweep's arithmetic, in-process: where a candidate starts to win, and the calibration ladder."""

from __future__ import annotations

import math

import pytest

from loadtest.calibrate import COMMANDS, calibrate, size_for
from loadtest.crossover import crossing, crossovers, parse_crossover, statements


def test_crossing_finds_the_last_switch_and_interpolates_on_log_scales() -> None:
    xs = [1.0, 10.0, 100.0, 1000.0]
    # the candidate loses, wins once (noise), loses, then wins for good from 1000
    result = crossing(xs, [-1.0, 0.2, -1.0, 1.0])
    assert result["wins_from_us"] == 1000.0 and result["last_loss_us"] == 100.0
    assert result["at_us"] == pytest.approx(math.sqrt(100.0 * 1000.0), rel=1e-3)  # halfway in log terms
    assert result["wins_at_us"] == [10.0, 1000.0]


def test_crossing_when_one_side_wins_everywhere_or_at_the_end_not_at_all() -> None:
    everywhere = crossing([1.0, 10.0], [0.5, 0.5])
    assert everywhere["wins_from_us"] == 1.0 and everywhere["last_loss_us"] is None and everywhere["at_us"] is None
    never = crossing([1.0, 10.0], [0.5, -0.5])
    assert never["wins_from_us"] is None and never["wins_at_us"] == [1.0]


def _row(target: str, work: int, us: float, rps: float, p99: float) -> dict[str, object]:
    return {"command": "primes", "target": target, "work": work, "work_us": us, "throughput_rps": rps,
            "probe_p99_ms": p99}  # fmt: skip


def test_crossovers_and_statements_name_the_winner_per_size() -> None:
    rows = [
        _row("async+inline", 10, 1.0, 40_000, 1.0), _row("async+pool", 10, 1.0, 5_000, 4.0),
        _row("threaded+inline", 10, 1.0, 20_000, 1.5),
        _row("async+inline", 1000, 1000.0, 900, 20.0), _row("async+pool", 1000, 1000.0, 1_700, 4.0),
        _row("threaded+inline", 1000, 1000.0, 950, 10.0),
    ]  # fmt: skip
    found = crossovers(rows, "primes")
    assert found["pool_over_inline_throughput"]["wins_from_us"] == 1000.0
    assert found["pool_over_inline_throughput"]["last_loss_us"] == 1.0
    assert found["fastest_at_us"] == {"async+inline": [1.0], "async+pool": [1000.0]}
    text = "\n".join(statements(found, "primes"))
    assert "async+inline wins up to 1.0 us of work, async+pool from 1,000 us on" in text
    assert "threaded+inline does not beat async+pool" in text


def test_scenario_names() -> None:
    assert parse_crossover("crossover") == ("primes", "pbkdf2")
    assert parse_crossover("crossover:pbkdf2") == ("pbkdf2",)
    with pytest.raises(ValueError, match="crossover:NAME"):
        parse_crossover("crossover:factor")


def test_size_for_interpolates_between_rungs_and_stays_in_bounds() -> None:
    command = COMMANDS["primes"]
    rungs = [(2, 0.5), (8, 1.0), (32, 4.0), (128, 16.0)]
    assert size_for(rungs, 0.1, command) == 2  # below the smallest size: the smallest
    assert size_for(rungs, 4.0, command) == 32
    assert 8 < size_for(rungs, 2.0, command) < 32
    assert size_for(rungs, 1e12, command) == command.largest  # extrapolated, then clamped


def test_calibration_times_the_real_function_and_sizes_grow_with_the_asked_time() -> None:
    steps = calibrate("primes", (10.0, 1000.0), min_seconds=0.002)
    assert [step.asked_us for step in steps] == [10.0, 1000.0]
    assert steps[0].work < steps[1].work
    assert 0 < steps[0].measured_us < steps[1].measured_us


def test_a_dask_target_gets_its_own_crossing_against_the_local_pool() -> None:
    rows = [
        _row("async+pool", 10, 1.0, 5_000, 4.0), _row("async+dask", 10, 1.0, 200, 4.0),
        _row("async+pool", 1000, 100_000.0, 19, 4.0), _row("async+dask", 1000, 100_000.0, 40, 4.0),
    ]  # fmt: skip
    found = crossovers(rows, "primes")
    assert found["dask_over_pool_throughput"]["wins_from_us"] == 100_000.0
    assert any("Dask vs local pool" in line for line in statements(found, "primes"))
