"""Builds the optional compiled core; all other package metadata is in pyproject.toml.

mypyc compiles the modules that ``server/protocol/core_modules.py`` lists (the
request and reply parsers, the dispatcher and its per-command counters), in
place and unchanged: mypyc takes its C types from the annotations that
``make lint`` already checks. :mod:`server.protocol.cores` picks the compiled
or the pure core at import and can still load the pure source. The
extensions are optional: without a C compiler, or with
``CROSSDOCK_NO_EXTENSIONS=1``, the install succeeds with the pure core only.
"""

from __future__ import annotations

import hashlib
import os
import runpy
from pathlib import Path

from setuptools import Extension, setup

#: The groups compiled, each module from its own pure-Python source (see server/protocol/core_modules.py).
GROUPS = runpy.run_path("server/protocol/core_modules.py")["GROUPS"]
CORE_MODULES = tuple(module for _, modules in GROUPS for module in modules)

#: Written beside the sources at build time: which source text each compiled module was built from,
#: so server.protocol.cores never runs a compiled core built from other source than the one beside it.
BUILD_RECORD = Path("server/protocol/_core_build.py")


def source_of(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def record_sources() -> None:
    digests = {module: hashlib.sha256(source_of(module).read_bytes()).hexdigest() for module in CORE_MODULES}
    lines = "".join(f'    "{module}": "{digest}",\n' for module, digest in digests.items())
    BUILD_RECORD.write_text(
        '"""Written by setup.py: the sha256 of each pure source the compiled core was built from."""\n\n'
        f"SOURCE_SHA256 = {{\n{lines}}}\n"
    )


def extensions() -> list[Extension]:
    if os.environ.get("CROSSDOCK_NO_EXTENSIONS"):
        return []
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    record_sources()
    modules: list[Extension] = []
    try:
        for group_name, group in GROUPS:
            paths = [str(source_of(module)) for module in group]
            modules += mypycify(paths, opt_level="3", group_name=group_name)
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error: install the pure core, loudly
        print(f"setup.py: mypyc could not compile the core ({exc!r}); installing the pure core only")
        return []
    for module in modules:
        module.optional = True  # no C compiler: install the pure core rather than fail
    return modules


setup(ext_modules=extensions())
