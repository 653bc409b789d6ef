"""The modules compiled with mypyc, and how they are grouped: ``setup.py`` builds them, :mod:`.cores` selects them.

A file of its own, with no imports, so ``setup.py`` can read it before the
package's dependencies are installed (it runs it with :func:`runpy.run_path`).
Each group is one mypyc compilation: modules in one group see each other's
classes as native (C struct fields, direct calls); across groups they are
ordinary Python objects. A group of one module keeps mypyc's runtime library
beside it (``request_parser__mypyc``); a larger group names its library
(``server/commands/_dispatch_core__mypyc``), so nothing is written at the top
of site-packages.
"""

#: (group name for mypyc's library or None for a module alone, the modules it compiles).
GROUPS = (
    (None, ("server.protocol.request_parser",)),
    (None, ("server.protocol.reply_parser",)),
    # The dispatcher and the per-command counters it bumps on every request: one group, so the counters are
    # native objects to the compiled dispatcher.
    ("server.commands._dispatch_core", ("server.commands.dispatch", "server.store.commandstats")),
)

#: Every compiled module, in build order. A core is all of them compiled, or none (server.protocol.cores).
MODULES = tuple(module for _, modules in GROUPS for module in modules)
