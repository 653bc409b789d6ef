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

import importlib
import os
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


def _load(name: str) -> Core | None:
    prefix = "server.protocol._c_" if name == CYTHON else "server.protocol."
    try:
        return Core(
            name,
            importlib.import_module(prefix + "request_parser"),
            importlib.import_module(prefix + "reply_parser"),
        )
    except ImportError:
        return None  # not built here (no C compiler, or CROSSDOCK_NO_EXTENSIONS at install)


#: Every core importable here, by name; ``pure`` always is.
AVAILABLE: Final[dict[str, Core]] = {
    core.name: core for core in (_load(CYTHON), _load(PURE)) if core is not None
}


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
