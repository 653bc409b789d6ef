"""Which implementation of the per-request path runs: the mypyc-compiled one or the pure-Python one.

Both are the same source. Where a C compiler exists, ``setup.py`` compiles the
modules of :data:`~server.protocol.core_modules.MODULES` (the request and reply
parsers, the dispatcher and its per-command counters, the cpu-job policy) in place with mypyc, so
``server.protocol.request_parser`` or ``server.commands.dispatch`` is then the
compiled module. The core is chosen once, when the ``server`` package is
imported (as redis-py chooses hiredis or its pure parser), and always runs
under the modules' own names:

* ``mypyc`` when every module was compiled from the source text now beside
  it, unless the environment variable :data:`CORE_ENV` says ``pure``;
* ``pure`` otherwise. Where extensions exist on disk but must not run (forced
  pure, an edited or merged source not yet rebuilt, a group that failed to
  build), an import hook loads each module from its ``.py`` source instead, so
  a stale or half-built core never runs and the pure core is pure throughout.

Where the compiled core runs, the pure one can still be loaded beside it under
other names (``server.protocol._pure_request_parser``, ...) for the tests, which
run every protocol and dispatch case on each core in :data:`AVAILABLE`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

from server.protocol.core_modules import MODULES

#: Environment variable that forces a core: ``pure`` or ``mypyc`` (default: the compiled one when built).
CORE_ENV: Final = "CROSSDOCK_CORE"
PURE: Final = "pure"
MYPYC: Final = "mypyc"

#: The modules of a core (setup.py compiles exactly these).
SOURCES: Final = MODULES

#: The directory that holds the ``server`` package.
_ROOT: Final = Path(__file__).resolve().parent.parent.parent


def _source(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extensions(module: str) -> list[Path]:
    """The compiled files of ``module`` on disk, beside its source."""
    source = _source(module)
    return [path for suffix in importlib.machinery.EXTENSION_SUFFIXES if (path := source.with_suffix(suffix)).exists()]


def _pure_alias(module: str) -> str:
    package, _, leaf = module.rpartition(".")
    return f"{package}._pure_{leaf}"


class Core:
    """One implementation of the per-request path: its name and its modules, imported on first use."""

    def __init__(self, name: str, names: dict[str, str]) -> None:
        self.name = name
        #: Module name -> the name it is loaded under in this core (itself, or its ``_pure_`` alias).
        self._names = names

    def module(self, name: str) -> ModuleType:
        """This core's version of ``name`` (one of :data:`SOURCES`)."""
        loaded = self._names[name]
        if loaded == name:
            return importlib.import_module(name)
        return sys.modules.get(loaded) or _load_source(loaded, _source(name))

    @property
    def request_parser(self) -> ModuleType:
        return self.module("server.protocol.request_parser")

    @property
    def reply_parser(self) -> ModuleType:
        return self.module("server.protocol.reply_parser")

    @property
    def dispatch(self) -> ModuleType:
        return self.module("server.commands.dispatch")

    def __repr__(self) -> str:
        return f"Core({self.name!r})"


def _load_source(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Import hook for the pure core where compiled files exist: the listed modules load from their ``.py``."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def _stale() -> bool:
    """Whether the compiled core was built from other source text than the pure core beside it.

    ``setup.py`` records the sha256 of each source it compiled (``_core_build.py``). An edited or
    merged module is then run pure, with a warning, until ``make install`` rebuilds it: a compiled
    core must never run yesterday's code.
    """
    try:
        from server.protocol._core_build import SOURCE_SHA256 as built_from
    except ImportError:
        built_from = {}  # built without a record: treat as stale
    for module in SOURCES:
        digest = hashlib.sha256(_source(module).read_bytes()).hexdigest()
        if built_from.get(module) != digest:
            warnings.warn(
                f"the compiled {module} was built from another source: running the pure core "
                "(make install rebuilds it)",
                RuntimeWarning,
                stacklevel=2,
            )
            return True
    return False


def _choose(requested: str | None) -> tuple[str, dict[str, Core]]:
    """The core this process runs and every core it can load, decided from the files on disk.

    Error handling: an unknown name, or ``mypyc`` where it was not built, raises
    :class:`RuntimeError` at import: a server asked for a core must not silently run another.
    """
    if requested and requested not in (PURE, MYPYC):
        raise RuntimeError(f"{CORE_ENV}={requested!r}: expected {PURE!r} or {MYPYC!r}")
    on_disk = {module: bool(_extensions(module)) for module in SOURCES}
    built = all(on_disk.values()) and not _stale() if any(on_disk.values()) else False
    if requested == MYPYC and not built:
        raise RuntimeError(f"{CORE_ENV}={requested!r} but the compiled core is not built (see README: make install)")
    own_names = {module: module for module in SOURCES}
    if built and requested != PURE:
        aliases = {module: _pure_alias(module) for module in SOURCES}
        return MYPYC, {MYPYC: Core(MYPYC, own_names), PURE: Core(PURE, aliases)}
    if any(on_disk.values()):
        already = [module for module in SOURCES if module in sys.modules]
        if already:  # imported before this module chose: cannot be swapped any more
            raise RuntimeError(f"{', '.join(already)} imported before server.protocol.cores chose the core")
        sys.meta_path.insert(0, _SourceFirst(SOURCES))
    return PURE, {PURE: Core(PURE, own_names)}


_SELECTED_NAME, _AVAILABLE = _choose(os.environ.get(CORE_ENV))

#: Every core importable here, by name, the one running first; ``pure`` always is.
AVAILABLE: Final[dict[str, Core]] = _AVAILABLE


def select(requested: str | None) -> Core:
    """The core called ``requested`` (``pure`` / ``mypyc``), or the one running when None.

    Error handling: an unknown name, or one not available here, raises :class:`RuntimeError`.
    """
    if not requested:
        return AVAILABLE[_SELECTED_NAME]
    if requested not in (PURE, MYPYC):
        raise RuntimeError(f"{CORE_ENV}={requested!r}: expected {PURE!r} or {MYPYC!r}")
    if requested not in AVAILABLE:
        raise RuntimeError(f"{requested!r} core not available here (not built, stale, or {CORE_ENV}=pure)")
    return AVAILABLE[requested]


#: The core this process runs.
SELECTED: Final = select(None)
