"""``make bench`` (bench/make_bench.py) end to end in its --quick mode: every step runs, the page is re-rendered.

The assertions are about the shape of what it writes (every block dated, with
the machine, the commit and the commands; raw JSON beside it), never about the
figures, which mean nothing at --quick sizes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.servers import redis_available

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "make_bench.py"

#: Seconds the whole --quick harness may take: about 70 s on an idle 2-core machine.
QUICK_TIMEOUT = 400

STEPS = ("crossover", "targets", "ping", "responsiveness", "hold", "storm", "reuseport", "generator")


def blocks(text: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", text, re.S))


def test_the_page_has_one_block_per_step_and_quotes_no_unmeasured_figures() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert tuple(blocks(page)) == STEPS


@pytest.mark.timeout(QUICK_TIMEOUT + 30)
@pytest.mark.skipif(not redis_available(), reason="redis-server is the baseline of several steps")
def test_quick_make_bench_runs_every_step_and_renders_every_block(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--reports", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "benchmarks.md").read_text()
    rendered = blocks(page)
    assert tuple(rendered) == STEPS
    for step, block in rendered.items():
        meta = json.loads((tmp_path / step / "step.json").read_text())
        assert meta["exit_status"] == 0 and meta["quick"] is True
        assert meta["machine"]["commit"] != "unknown" and meta["machine"]["cpu_model"]
        assert f"_Measured {meta['finished']} (UTC) by `make bench` on commit `{meta['machine']['commit']}`" in block
        assert all(command in block for command in meta["commands"])
        assert "smoke test" in block and re.search(r"\|\s*---", block)  # a table of figures under the header
    assert list((tmp_path / "crossover").glob("crossover_*.png"))
    assert "](crossover/crossover_primes.png)" in rendered["crossover"]  # links relative to the page
    assert "Crossover points:" in rendered["crossover"]
    assert json.loads((tmp_path / "targets" / "targets.json").read_text())["quick"] is True
    assert json.loads((tmp_path / "generator" / "generator_0.json").read_text())["rounds"]


def test_render_only_marks_a_block_never_measured_instead_of_showing_old_figures(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- bench:ping -->\nold figures 123,456/s\n<!-- /bench:ping -->\nend\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--render-only", "--reports", str(tmp_path / "none"), "--doc", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1  # the page lacks the other blocks: said, and a failure
    text = page.read_text()
    assert "old figures" not in text and "Not measured on the current code yet" in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    assert "has no block for crossover" in done.stderr


def test_bad_step_names_exit_2() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "nope"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown step" in done.stderr


def test_make_bench_target_runs_the_script() -> None:
    done = subprocess.run(["make", "-n", "bench", "BENCH_ARGS=--quick"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "bench/make_bench.py --quick" in done.stdout
