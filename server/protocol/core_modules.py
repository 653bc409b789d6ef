"""The modules compiled with mypyc, and how they are grouped: ``setup.py`` builds them, :mod:`.cores` selects them.

A file of its own, with no imports, so ``setup.py`` can read it before the
package's dependencies are installed (it runs it with :func:`runpy.run_path`).
Each group is one mypyc compilation: modules in one group see each other's
classes as native (C struct fields, direct calls); across groups they are
ordinary Python objects. A group of one module keeps mypyc's runtime library
beside it (``request_parser__mypyc``); a larger group names its library
(``server/_dispatch_core__mypyc``, in the ``server`` package, which is always
imported first: in a subpackage, importing one module of the group would
import that subpackage's ``__init__``), so nothing is written at the top of
site-packages.
"""

#: (group name for mypyc's library or None for a module alone, the modules it compiles).
GROUPS = (
    (None, ("server.protocol.request_parser",)),
    (None, ("server.protocol.reply_parser",)),
    # The per-request path past the parser: the dispatcher, the per-command counters it bumps, the keyspace its
    # hot commands read and write, the memory account it checks, the server and client state it counts into, and
    # the built-in handlers it calls (GET, SET, PING...), in one group, so that each is a native object (C struct
    # fields, direct calls) to the others.
    (
        "server._dispatch_core",
        (
            "server.commands.dispatch",
            "server.store.commandstats",
            "server.store.keyspace",
            "server.memory",
            "server.store.state",
            "server.commands.builtins",
        ),
    ),
    # The cpu-job policy: admission, hand-out and answers run on the loop for every cpu request, about a third of
    # what a trivial request offloaded to the pool costs the loop beyond running it inline (issue 12).
    (None, ("server.cpu.jobs",)),
)

#: Every compiled module, in build order. A core is all of them compiled, or none (server.protocol.cores).
MODULES = tuple(module for _, modules in GROUPS for module in modules)
