"""Builds the optional compiled core; all other package metadata is in pyproject.toml.

mypyc compiles ``server/protocol/request_parser.py`` and ``reply_parser.py``
(the pure core, unchanged: mypyc takes its C types from the annotations that
``make lint`` already checks) in place, each as its own extension module;
:mod:`server.protocol.cores` picks one core at import and can still load the
pure source. The extensions are optional: without a C compiler, or with
``CROSSDOCK_NO_EXTENSIONS=1``, the install succeeds with the pure core only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup

#: The modules compiled, each from its own pure-Python source.
CORE_MODULES = ("request_parser", "reply_parser")

#: Written beside the sources at build time: which source text each compiled module was built from,
#: so server.protocol.cores never runs a compiled core built from other source than the one beside it.
BUILD_RECORD = Path("server/protocol/_core_build.py")


def record_sources() -> None:
    digests = {
        name: hashlib.sha256(Path(f"server/protocol/{name}.py").read_bytes()).hexdigest() for name in CORE_MODULES
    }
    lines = "".join(f'    "{name}": "{digest}",\n' for name, digest in digests.items())
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
        for name in CORE_MODULES:
            # One module per group: no shared runtime library is written at the top of site-packages.
            modules += mypycify([f"server/protocol/{name}.py"], opt_level="3")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error: install the pure core, loudly
        print(f"setup.py: mypyc could not compile the parser core ({exc!r}); installing the pure core only")
        return []
    for module in modules:
        module.optional = True  # no C compiler: install the pure core rather than fail
    return modules


setup(ext_modules=extensions())
