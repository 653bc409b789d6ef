"""Which core runs: every compiled module or none, never a stale one (server.protocol.cores).

Each case starts a fresh interpreter: the core is chosen once, when ``server`` is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server.protocol.core_modules import MODULES
from server.protocol.cores import AVAILABLE, CORE_ENV, MYPYC

#: Seconds a child interpreter may take to import the server and answer.
CHILD_TIMEOUT = 60

#: Imports every module of the core and reports which file each came from and which core was chosen.
PROBE = """
import importlib, json, sys, warnings
warnings.simplefilter("always")
{prelude}
with warnings.catch_warnings(record=True) as caught:
    import server.protocol
    files = {{name: importlib.import_module(name).__file__ for name in {modules!r}}}
print(json.dumps({{"core": server.protocol.CORE, "files": files, "warnings": [str(w.message) for w in caught]}}))
"""

#: Stands in for setup.py's build record, with one digest that matches no source.
STALE_RECORD = """
import hashlib, importlib.util, pathlib, types
# Found without importing server: importing it would choose the core before this record is in place.
root = pathlib.Path(importlib.util.find_spec("server").submodule_search_locations[0]).parent
record = types.ModuleType("server.protocol._core_build")
record.SOURCE_SHA256 = {{
    name: hashlib.sha256(root.joinpath(*name.split(".")).with_suffix(".py").read_bytes()).hexdigest()
    for name in {modules!r}
}}
record.SOURCE_SHA256[{stale!r}] = "0" * 64
sys.modules[record.__name__] = record
"""


def probe(prelude: str = "", **env: str) -> dict[str, object]:
    environment = {key: value for key, value in os.environ.items() if key != CORE_ENV} | env
    code = PROBE.format(prelude=prelude, modules=MODULES)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=CHILD_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def sources(answer: dict[str, object]) -> set[str]:
    files = answer["files"]
    assert isinstance(files, dict)
    return {name for name, path in files.items() if str(path).endswith(".py")}


def needs_compiled_core() -> None:
    if MYPYC not in AVAILABLE:
        pytest.skip("the compiled core is not built here (or CROSSDOCK_CORE=pure)")


def test_forced_pure_loads_every_module_from_its_source() -> None:
    answer = probe(**{CORE_ENV: "pure"})
    assert answer["core"] == "pure"
    assert sources(answer) == set(MODULES)


def test_compiled_core_runs_every_compiled_module() -> None:
    needs_compiled_core()
    answer = probe()
    assert answer["core"] == "mypyc"
    assert sources(answer) == set()


@pytest.mark.parametrize("stale", ["server.commands.dispatch", "server.store.commandstats"])
def test_a_module_built_from_other_source_makes_the_whole_core_pure(stale: str) -> None:
    """The source-digest check covers every compiled module: one stale one, and nothing compiled runs."""
    needs_compiled_core()
    answer = probe(STALE_RECORD.format(modules=MODULES, stale=stale))
    assert answer["core"] == "pure"
    assert sources(answer) == set(MODULES)
    assert any("built from another source" in str(message) for message in answer["warnings"])  # type: ignore[attr-defined]


def test_asking_for_the_compiled_core_where_it_is_not_loadable_fails() -> None:
    needs_compiled_core()
    environment = {**os.environ, CORE_ENV: "mypyc"}
    code = STALE_RECORD.format(modules=MODULES, stale="server.commands.dispatch") + "import server"
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code],
        capture_output=True,
        text=True,
        env=environment,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode != 0
    assert "compiled core is not built" in result.stderr
