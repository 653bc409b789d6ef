"""``make bench``: measure every figure of docs/benchmarks.md again on the current code, and re-render the page.

    .venv/bin/python bench/make_bench.py                       # everything (about 35 min on 2 idle cores)
    .venv/bin/python bench/make_bench.py --steps crossover,targets
    .venv/bin/python bench/make_bench.py --render-only          # the page again from the reports on disk
    .venv/bin/python bench/make_bench.py --steps crossover --dask dask://127.0.0.1:8786   # Dask in the sweep
    .venv/bin/python bench/make_bench.py --quick --reports /tmp/b   # smoke test of the harness (the test suite)

Each step runs one benchmark tool (``bench/targets.py``, ``crossdock compare``,
``bench/generator_vs_redis_benchmark.py``, ``bench/reuseport_bench.py``) into
``<reports>/<step>/`` (raw JSON, markdown, PNGs) and records beside it, in
``step.json``, when it ran, the machine, the commit and the exact commands.

The page is hand-written prose around generated blocks: everything between
``<!-- bench:STEP -->`` and ``<!-- /bench:STEP -->`` is replaced by the step's
figures with its date, machine, commit and commands. A step that has never
been run on this layout renders as "not measured", never as old figures.
Prose outside the blocks must not quote figures.

--quick shrinks every step to seconds and writes the page to
``<reports>/benchmarks.md`` unless ``--doc`` says otherwise, so the test
suite can run the whole harness without touching docs/. Its figures mean
nothing.

Exit status: 0 if every step ran cleanly, 1 if any step failed (the others
still run and the page is still rendered), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loadtest.machine import describe_machine, machine_line

ROOT: Final = Path(__file__).resolve().parent.parent
PY: Final = sys.executable

#: Seconds one step may take before it is stopped: the longest (the targets) takes ~12 minutes.
STEP_TIMEOUT: Final = 3600

#: Seconds one --quick step may take.
QUICK_STEP_TIMEOUT: Final = 300


@dataclass(frozen=True)
class Step:
    """One benchmark of the page: the commands to run (full and --quick) and how to render its block."""

    name: str
    commands: Callable[[Path, bool], list[list[str]]]
    render: Callable[[Path], str]
    #: A file name pattern (``{index}``: the command's index) that each command's stdout is saved to;
    #: empty: stdout goes to the step's log only.
    stdout_file: str = ""


def _compare(args: list[str], quick_args: list[str]) -> Callable[[Path, bool], list[list[str]]]:
    return lambda out, quick: [[PY, "-m", "server", "compare", *(quick_args if quick else args), "--out", str(out)]]


def _targets(out: Path, quick: bool) -> list[list[str]]:
    runs = ["--quick", "--runs", "1"] if quick else ["--runs", "5"]
    return [[PY, "bench/targets.py", *runs, "--json", str(out / "targets.json"), "--markdown", str(out / "targets.md")]]


#: (connections, pipeline, requests, rounds) of the generator check, full and quick.
GENERATOR_RUNS: Final = ((50, 1, 300_000, 5), (500, 1, 300_000, 3), (50, 16, 2_000_000, 3))
GENERATOR_QUICK: Final = ((5, 1, 2_000, 1),)


def _generator(out: Path, quick: bool) -> list[list[str]]:
    return [
        [PY, "bench/generator_vs_redis_benchmark.py", "--connections", str(c), "--pipeline", str(p),
         "--requests", str(n), "--rounds", str(r)]
        for c, p, n, r in (GENERATOR_QUICK if quick else GENERATOR_RUNS)
    ]  # fmt: skip


def _reuseport(out: Path, quick: bool) -> list[list[str]]:
    sizes = ["--rounds", "1", "--duration", "0.5", "--connections", "10", "--benchmark-requests", "5000"]
    full = ["--rounds", "3", "--duration", "4"]
    return [[PY, "bench/reuseport_bench.py", *(sizes if quick else full), "--json", str(out / "reuseport.json")]]


# -- rendering the blocks ------------------------------------------------------------------------------


def _links(text: str, folder: Path, doc_dir: Path) -> str:
    """Image and file links of a report, made relative to the page."""
    prefix = os.path.relpath(folder, doc_dir)
    return re.sub(r"\]\(([^)/:]+\.(?:png|json|md))\)", lambda m: f"]({prefix}/{m.group(1)})", text)


def render_compare(folder: Path) -> str:
    text = (folder / "compare.md").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("# ") or line.startswith("**--quick") or line.startswith("- machine:"):
            continue  # the block's header says these
        lines.append("#### " + line[3:] if line.startswith("## ") else line)  # below the page's own sections
    return "\n".join(lines).strip() + "\n"


def render_targets(folder: Path) -> str:
    text = (folder / "targets.md").read_text()
    return text.replace("### Run of", "#### Run of", 1)


def render_generator(folder: Path) -> str:
    lines = [
        "| connections | pipeline | rounds | redis-benchmark (median) | crossdock loadtest (median) | ratio "
        "(median of per-round ratios) | CPU per request: redis-benchmark / crossdock |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("generator_*.json")):
        doc = json.loads(path.read_text())
        lines.append(
            f"| {doc['connections']} | {doc.get('pipeline', 1)} | {len(doc['rounds'])} | "
            f"{doc['median_redis_benchmark_rps']:,.0f}/s | {doc['median_crossdock_loadtest_rps']:,.0f}/s | "
            f"**{doc['median_ratio']:.2f}** | {doc['median_redis_benchmark_cpu_us_per_request']:.2f} us / "
            f"{doc['median_crossdock_loadtest_cpu_us_per_request']:.2f} us |"
        )
    return "\n".join(lines) + "\n"


def render_reuseport(folder: Path) -> str:
    doc = json.loads((folder / "reuseport.json").read_text())
    n = doc["args"]["instances"]
    lines = [
        f"| workload | `--reuseport 1`: median (min-max) | `--reuseport {n}`: median (min-max) | ratio of medians "
        "| median of per-round ratios | shed (-BUSY) per run, 1 / N |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload, figures in doc["summary"].items():
        ones, manys = figures["runs"]["1"], figures["runs"][str(n)]
        shed = figures.get("shed", {})
        shed_text = " / ".join(", ".join(f"{count:,}" for count in shed.get(side, [])) or "-" for side in ("1", str(n)))
        lines.append(
            f"| {workload} | {figures['one']:,.0f}/s ({min(ones):,.0f}-{max(ones):,.0f}) | {figures['many']:,.0f}/s "
            f"({min(manys):,.0f}-{max(manys):,.0f}) | {figures['ratio']:.2f} | {figures['paired_ratio']:.2f} "
            f"| {shed_text} |"
        )
    return "\n".join(lines) + "\n"


STEPS: Final = (
    Step(
        "crossover",
        _compare(["--scenario", "crossover", "--repeat", "2"], ["--scenario", "crossover", "--quick"]),
        render_compare,
    ),
    Step("targets", _targets, render_targets),
    Step(
        "ping",
        _compare(
            ["-s", "ping", "-c", "10,100,1000", "-d", "2", "--repeat", "3", "--baseline", "redis"],
            ["-s", "ping", "-c", "2", "-d", "0.3", "--baseline", "redis"],
        ),
        render_compare,
    ),
    Step(
        "responsiveness",
        _compare(
            ["-s", "responsiveness", "-c", "2,8,32", "-d", "3", "--repeat", "3"],
            ["-s", "responsiveness", "-c", "2", "-d", "0.3", "--work", "1000"],
        ),
        render_compare,
    ),
    Step(
        "hold",
        _compare(
            ["-s", "hold", "-c", "100,1000,5000", "-d", "2", "--baseline", "redis"],
            ["-s", "hold", "-c", "20", "-d", "0.3", "--baseline", "redis"],
        ),
        render_compare,
    ),
    Step(
        "storm",
        _compare(
            ["-s", "storm", "-c", "10,100", "-d", "3", "--repeat", "3", "--baseline", "redis"],
            ["-s", "storm", "-c", "2", "-d", "0.3", "--baseline", "redis"],
        ),
        render_compare,
    ),
    Step("reuseport", _reuseport, render_reuseport),
    Step("generator", _generator, render_generator, stdout_file="generator_{index}.json"),
)

STEP_NAMES: Final = tuple(step.name for step in STEPS)


def with_dask(step: Step, address: str | None) -> Step:
    """The crossover step with ``--executor address`` added (every other step, and no address: unchanged)."""
    if step.name != "crossover" or not address:
        return step
    plain = step.commands
    return Step(
        step.name,
        lambda out, quick: [[*c, "--executor", address] for c in plain(out, quick)],
        step.render,
        step.stdout_file,
    )


def header(meta: dict[str, Any]) -> str:
    """The date, machine, commit and commands of one step's figures."""
    commands = "\n".join(meta["commands"])
    quick = "**--quick: a smoke test of the harness; these figures mean nothing.**\n\n" if meta["quick"] else ""
    failed = "" if meta["exit_status"] == 0 else f"**This step exited with status {meta['exit_status']}.**\n\n"
    return (
        f"{quick}{failed}_Measured {meta['finished']} (UTC) by `make bench` on commit `{meta['machine']['commit']}`; "
        f"{machine_line(meta['machine'])}._\n\n```\n{commands}\n```\n\n"
    )


def render_block(step: Step, folder: Path, doc_dir: Path) -> str:
    meta_path = folder / "step.json"
    if not meta_path.exists():
        return f'_Not measured on the current code yet: `make bench BENCH_ARGS="--steps {step.name}"`._\n'
    meta = json.loads(meta_path.read_text())
    try:
        body = step.render(folder)
    except (OSError, ValueError, KeyError) as exc:
        body = f"_No figures: the step's output could not be read ({type(exc).__name__}: {exc})._\n"
    return header(meta) + _links(body, folder, doc_dir)


def render_page(doc: Path, reports: Path) -> list[str]:
    """Replace every generated block of ``doc``; returns the names of blocks the page lacks."""
    text = doc.read_text()
    missing = []
    for step in STEPS:
        pattern = re.compile(rf"(<!-- bench:{step.name} -->\n).*?(<!-- /bench:{step.name} -->)", re.S)
        if not pattern.search(text):
            missing.append(step.name)
            continue
        block = render_block(step, reports / step.name, doc.parent)
        match = pattern.search(text)
        assert match is not None
        text = text[: match.start()] + match.group(1) + "\n" + block + "\n" + match.group(2) + text[match.end() :]
    doc.write_text(text)
    return missing


# -- running ------------------------------------------------------------------------------------------


def shown(argv: list[str]) -> str:
    """A command as a reader would type it in the repository."""
    words = [".venv/bin/python" if word == PY else word for word in argv]
    if words[:3] == [".venv/bin/python", "-m", "server"]:
        words = [".venv/bin/crossdock", *words[3:]]
    return " ".join(os.path.relpath(w, ROOT) if w.startswith(str(ROOT)) else w for w in words)


def run_step(step: Step, folder: Path, quick: bool) -> int:
    """Run a step's commands into ``folder``; write ``step.json``; return the worst exit status."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "step.json").unlink(missing_ok=True)
    commands = step.commands(folder, quick)
    machine = describe_machine()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    status = 0
    log = (folder / "log.txt").open("w")
    for index, argv in enumerate(commands):
        print(f"make bench: {step.name}: {shown(argv)}", file=sys.stderr, flush=True)
        began = time.monotonic()
        target = step.stdout_file.format(index=index) if step.stdout_file else None
        try:
            done = subprocess.run(
                argv, cwd=ROOT, capture_output=True, text=True, timeout=QUICK_STEP_TIMEOUT if quick else STEP_TIMEOUT
            )
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = 124, str(exc.stdout or ""), f"timed out: {exc}"
        log.write(f"$ {shown(argv)}\n{err}\n{out if target is None else ''}\n")
        if target is not None:
            (folder / target).write_text(out)
        if code != 0:
            print(f"make bench: {step.name}: exit status {code}: {err[-2000:]}", file=sys.stderr)
        print(f"make bench: {step.name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        status = max(status, code)
    log.close()
    meta = {
        "step": step.name,
        "quick": quick,
        "started": started,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "commands": [shown(argv) for argv in commands],
        "exit_status": status,
    }
    (folder / "step.json").write_text(json.dumps(meta, indent=2) + "\n")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", default="all", help=f"comma-separated steps ({', '.join(STEP_NAMES)}) or all")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the harness")
    parser.add_argument("--reports", type=Path, default=None, help="output folder (default docs/reports)")
    parser.add_argument("--doc", type=Path, default=None, help="page to render (default docs/benchmarks.md)")
    parser.add_argument("--render-only", action="store_true", help="run nothing: re-render the page")
    parser.add_argument("--dask", metavar="dask://HOST:PORT", help="also sweep a Dask executor in the crossover")
    args = parser.parse_args(argv)
    names = list(STEP_NAMES) if args.steps == "all" else [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [name for name in names if name not in STEP_NAMES]
    if unknown or not names:
        print(f"make bench: unknown step(s) {unknown}: use {', '.join(STEP_NAMES)} or all", file=sys.stderr)
        return 2
    reports = (args.reports or ROOT / "docs" / "reports").resolve()
    doc = args.doc or (reports / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    if args.quick and not doc.exists():  # a copy of the page to render into
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text((ROOT / "docs" / "benchmarks.md").read_text())
    status = 0
    if not args.render_only:
        for step in STEPS:
            if step.name in names:
                status = max(status, min(1, run_step(with_dask(step, args.dask), reports / step.name, args.quick)))
    missing = render_page(doc, reports)
    if missing:
        print(f"make bench: {doc} has no block for {', '.join(missing)}", file=sys.stderr)
        status = max(status, 1)
    print(f"make bench: rendered {doc}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
