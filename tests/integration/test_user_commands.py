"""The README's "Adding a command" example, run as written: loaded with --modules, served by both front ends,
the cpu command computed in a pool worker (which must import the module too)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from server.protocol import ErrorReply
from tests.support import ROOT, ServerProcess


@pytest.mark.parametrize("mode", ["async", "threaded"])
def test_readme_example_command_module(mode: str, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n# mycommands.py\n(.*?)```", readme, re.S)
    assert match, "the README lost its command example"
    (tmp_path / "mycommands.py").write_text(match.group(1))
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    process = ServerProcess(mode, "pool", ["--modules", "mycommands"], env={"PYTHONPATH": python_path})
    try:
        with process.connect() as conn:
            assert conn.call("UPPER", "hello") == b"HELLO"
            assert conn.call("FIB", 90) == 2880067194370816120
            assert conn.call("FIB", 100_001) == ErrorReply("ERR n must be between 0 and 100000")
            assert b"fib" in conn.call("COMMAND", "LIST")  # type: ignore[operator]
    finally:
        assert process.stop() == 0
