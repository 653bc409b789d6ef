"""Builds the optional compiled core; all other package metadata is in pyproject.toml.

Cython compiles ``server/protocol/request_parser.py`` and ``reply_parser.py``
(the pure core, unchanged) into ``server.protocol._c_request_parser`` and
``_c_reply_parser``, with C types for buffer positions from the "augmenting"
declarations ``server/protocol/_c_*.pxd``; :mod:`server.protocol.cores`
picks one core at import.
The extensions are optional: without a C compiler, or with
``CROSSDOCK_NO_EXTENSIONS=1``, the install succeeds with the pure core only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup

#: The modules compiled, each from its own pure-Python source.
CORE_MODULES = ("request_parser", "reply_parser")

#: Cython directives: ``annotation_typing`` off so the compiled code accepts exactly what the
#: pure code accepts (an annotation ``bytes`` would otherwise refuse a bytearray), and
#: Python semantics everywhere else (no wraparound/bounds shortcuts), so both cores behave the same.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "embedsignature": True}


#: Written beside the sources at build time: which source text each compiled module was built from,
#: so server.protocol.cores never runs a compiled core older than the pure source next to it.
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
    from Cython.Build import cythonize  # a build requirement (pyproject.toml)

    record_sources()

    modules = [
        Extension(f"server.protocol._c_{name}", [f"server/protocol/{name}.py"], optional=True) for name in CORE_MODULES
    ]
    return cythonize(modules, compiler_directives=DIRECTIVES, quiet=True)


setup(ext_modules=extensions())
