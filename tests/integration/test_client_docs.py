"""The client examples in docs/clients.md and in the README's "Clients" section run as written.

Each ```python block runs in a fresh interpreter against a real crossdock
server (its port put in place of 7379); each ```sh line that calls
``crossdock cli`` runs through ``python -m server`` (the console script may
not be installed in a checkout), with stdin not a terminal.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client_fixtures import Endpoint
from tests.support import ROOT

pytest_plugins = ["tests.client_fixtures"]

#: Seconds one example may run: the slowest (PRIMES 1_000_000 in pure Python) takes about one.
EXAMPLE_TIMEOUT = 60
pytestmark = pytest.mark.timeout(180)

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _clients_section(path: Path) -> str:
    """The whole file for docs/clients.md; for the README only its "## Clients" section."""
    text = path.read_text()
    if path.name != "README.md":
        return text
    match = re.search(r"^## Clients\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def _blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for path in (ROOT / "docs" / "clients.md", ROOT / "README.md"):
        if path.exists():
            for lang, body in _FENCE.findall(_clients_section(path)):
                if lang == language:
                    found.append((path.name, body))
    return found


@pytest.mark.parametrize(("source", "code"), _blocks("python"))
def test_python_example_runs(source: str, code: str, crossdock_endpoint: Endpoint) -> None:
    code = code.replace("7379", str(crossdock_endpoint.port))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{source}:\n{code}\n{done.stderr}"


def _cli_lines() -> list[tuple[str, str]]:
    lines = []
    for source, body in _blocks("sh"):
        for line in body.splitlines():
            if "crossdock cli" in line:
                lines.append((source, line))
    return lines


@pytest.mark.parametrize(("source", "line"), _cli_lines())
def test_cli_example_runs(source: str, line: str, crossdock_endpoint: Endpoint) -> None:
    command = line.replace("crossdock cli", f"{shlex.quote(sys.executable)} -m server cli")
    command = command.replace("7379", str(crossdock_endpoint.port))
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{source}: {line}\n{done.stderr}"
