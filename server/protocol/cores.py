"""Which implementation of the per-request parsers runs: the Cython-compiled one or the pure-Python one.

Both are the same source: ``request_parser.py`` and ``reply_parser.py`` are
the pure core, and ``setup.py`` compiles those very files with Cython into
``_c_request_parser`` / ``_c_reply_parser`` where a C compiler exists. The
core is chosen once, at import (as redis-py chooses hiredis or its pure
parser): the compiled one when it was built, unless the environment variable
:data:`CORE_ENV` says ``pure``. Tests run every protocol case on each core in
:data:`AVAILABLE`, so the two stay byte for byte the same.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Final, NamedTuple

#: Environment variable that forces a core: ``pure`` or ``cython`` (default: the fastest one built).
CORE_ENV: Final = "CROSSDOCK_CORE"
PURE: Final = "pure"
CYTHON: Final = "cython"


class Core(NamedTuple):
    """One implementation of the parsers: its name and its two classes."""

    name: str
    request_parser: ModuleType
    reply_parser: ModuleType


#: The pure modules the compiled core is built from (setup.py's CORE_MODULES).
SOURCES: Final = ("request_parser", "reply_parser")


def _load(name: str) -> Core | None:
    prefix = "server.protocol._c_" if name == CYTHON else "server.protocol."
    try:
        modules = [importlib.import_module(prefix + module) for module in SOURCES]
    except ImportError:
        return None  # not built here (no C compiler, or CROSSDOCK_NO_EXTENSIONS at install)
    if name == CYTHON and _stale(modules):
        return None
    return Core(name, *modules)


def _stale(compiled: list[ModuleType]) -> bool:
    """Whether the compiled core was built from other source text than the pure core beside it.

    ``setup.py`` records the sha256 of each source it compiled (``_core_build.py``). An edited or
    merged parser is then run pure, with a warning, until ``make install`` rebuilds it: a compiled
    core must never run yesterday's grammar.
    """
    try:
        from server.protocol._core_build import SOURCE_SHA256 as built_from
    except ImportError:
        built_from = {}  # built without a record: treat as stale
    here = Path(__file__).parent
    for source in SOURCES:
        digest = hashlib.sha256((here / f"{source}.py").read_bytes()).hexdigest()
        if built_from.get(source) != digest:
            warnings.warn(
                f"the compiled {source} was built from another {source}.py: running the pure core "
                "(make install rebuilds it)",
                RuntimeWarning,
                stacklevel=2,
            )
            return True
    return False


#: Every core importable here, by name; ``pure`` always is.
AVAILABLE: Final[dict[str, Core]] = {core.name: core for core in (_load(CYTHON), _load(PURE)) if core is not None}


def select(requested: str | None) -> Core:
    """The core to run: ``requested`` (``pure`` / ``cython``), or the compiled one when built.

    Error handling: an unknown name, or ``cython`` where it was not built, raises
    :class:`RuntimeError` at import: a server asked for a core must not silently run another.
    """
    if not requested:
        return next(iter(AVAILABLE.values()))
    if requested not in (PURE, CYTHON):
        raise RuntimeError(f"{CORE_ENV}={requested!r}: expected {PURE!r} or {CYTHON!r}")
    if requested not in AVAILABLE:
        raise RuntimeError(f"{CORE_ENV}={requested!r} but the compiled core is not built (see README: make install)")
    return AVAILABLE[requested]


#: The core this process runs.
SELECTED: Final = select(os.environ.get(CORE_ENV))
