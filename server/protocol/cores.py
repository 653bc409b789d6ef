"""Which implementation of the per-request parsers runs: the mypyc-compiled one or the pure-Python one.

Both are the same source. Where a C compiler exists, ``setup.py`` compiles
``request_parser.py`` and ``reply_parser.py`` in place with mypyc, so
``server.protocol.request_parser`` is then the compiled module; the pure core
is the very same files loaded from their source text as
``server.protocol._pure_request_parser`` / ``_pure_reply_parser``. The core is
chosen once, at import (as redis-py chooses hiredis or its pure parser): the
compiled one when it was built from the source beside it, unless the
environment variable :data:`CORE_ENV` says ``pure``. Tests run every
protocol case on each core in :data:`AVAILABLE`, so the two stay byte for
byte the same.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Final, NamedTuple

#: Environment variable that forces a core: ``pure`` or ``mypyc`` (default: the compiled one when built).
CORE_ENV: Final = "CROSSDOCK_CORE"
PURE: Final = "pure"
MYPYC: Final = "mypyc"

#: The modules of a core (setup.py compiles exactly these).
SOURCES: Final = ("request_parser", "reply_parser")

_HERE: Final = Path(__file__).resolve().parent


class Core(NamedTuple):
    """One implementation of the parsers: its name and its two modules."""

    name: str
    request_parser: ModuleType
    reply_parser: ModuleType


def _is_compiled(module: ModuleType) -> bool:
    return (module.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _compiled() -> Core | None:
    """The mypyc core, if it was built here from the source text now beside it."""
    modules = [importlib.import_module(f"server.protocol.{source}") for source in SOURCES]
    if not all(map(_is_compiled, modules)) or _stale():
        return None  # not built (no C compiler, or CROSSDOCK_NO_EXTENSIONS at install), or out of date
    return Core(MYPYC, *modules)


def _pure() -> Core:
    """The pure core: the modules themselves when not compiled, else their source loaded under another name."""
    modules = []
    for source in SOURCES:
        module = importlib.import_module(f"server.protocol.{source}")
        if _is_compiled(module):
            name = f"server.protocol._pure_{source}"
            module = sys.modules.get(name) or _load_source(name, _HERE / f"{source}.py")
        modules.append(module)
    return Core(PURE, *modules)


def _load_source(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stale() -> bool:
    """Whether the compiled core was built from other source text than the pure core beside it.

    ``setup.py`` records the sha256 of each source it compiled (``_core_build.py``). An edited or
    merged parser is then run pure, with a warning, until ``make install`` rebuilds it: a compiled
    core must never run yesterday's grammar.
    """
    try:
        from server.protocol._core_build import SOURCE_SHA256 as built_from
    except ImportError:
        built_from = {}  # built without a record: treat as stale
    for source in SOURCES:
        digest = hashlib.sha256((_HERE / f"{source}.py").read_bytes()).hexdigest()
        if built_from.get(source) != digest:
            warnings.warn(
                f"the compiled {source} was built from another {source}.py: running the pure core "
                "(make install rebuilds it)",
                RuntimeWarning,
                stacklevel=2,
            )
            return True
    return False


def _available() -> dict[str, Core]:
    compiled = _compiled()
    pure = _pure()
    return {MYPYC: compiled, PURE: pure} if compiled is not None else {PURE: pure}


#: Every core importable here, by name, the compiled one first; ``pure`` always is.
AVAILABLE: Final[dict[str, Core]] = _available()


def select(requested: str | None) -> Core:
    """The core to run: ``requested`` (``pure`` / ``mypyc``), or the compiled one when built.

    Error handling: an unknown name, or ``mypyc`` where it was not built, raises
    :class:`RuntimeError` at import: a server asked for a core must not silently run another.
    """
    if not requested:
        return next(iter(AVAILABLE.values()))
    if requested not in (PURE, MYPYC):
        raise RuntimeError(f"{CORE_ENV}={requested!r}: expected {PURE!r} or {MYPYC!r}")
    if requested not in AVAILABLE:
        raise RuntimeError(f"{CORE_ENV}={requested!r} but the compiled core is not built (see README: make install)")
    return AVAILABLE[requested]


#: The core this process runs.
SELECTED: Final = select(os.environ.get(CORE_ENV))
