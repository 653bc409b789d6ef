"""The ``crossdock`` command: ``serve`` (and ``cli``, ``loadtest``, ``compare`` as their packages land).

Subcommands are looked up lazily so ``crossdock serve`` does not import the
load generator, and a missing optional part fails with a clear message.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from server import __version__

#: Subcommands provided by other packages: name -> (module, help). Each module
#: offers ``add_arguments(parser)`` and ``run(args) -> int``.
EXTERNAL_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "cli": ("clients.cli", "interactive RESP client, like redis-cli"),
    "loadtest": ("loadtest.cli", "drive load at a server and measure it"),
    "compare": ("loadtest.compare", "run a scenario against every mode and write a report"),
}


class UserModuleError(Exception):
    """A ``--modules`` entry did not import; ``str()`` is the one-line message for the user."""


def import_user_modules(modules: Sequence[str]) -> None:
    """Import ``--modules`` as ``python -m`` would find them: the working directory first on ``sys.path``.

    The console script's ``sys.path`` starts with its own bin directory, not
    the working directory, so without this ``crossdock serve --modules
    mycommands`` could not import ``mycommands.py`` from the folder it is run
    in. The pool's workers inherit ``sys.path`` (forkserver and spawn both
    send it), so they import the module from the same place.

    Error handling: an ``ImportError`` becomes :class:`UserModuleError` naming the module and the folder.
    """
    cwd = os.getcwd()
    if modules and cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserModuleError(
                f"crossdock serve: --modules {module}: cannot import it ({exc}); run from the folder that holds "
                f"{module.split('.')[0]} (now {cwd}) or add that folder to PYTHONPATH"
            ) from exc


def _serve(args: argparse.Namespace) -> int:
    from server.config import load_config
    from server.logging import configure_logging

    try:
        config = load_config(args)
    except ValueError as exc:
        print(f"crossdock serve: {exc}", file=sys.stderr)
        return 2
    from server.frontends import supervisor

    supervised = supervisor.supervised_instance()
    if supervised is not None:
        role = f"instance-{supervised[0]}"
    else:
        role = "supervisor" if config.reuseport >= 1 else "server"
    configure_logging(config.log_format, config.log_level, process_role=role)
    importlib.import_module("server.commands")
    try:
        import_user_modules(config.modules)
    except UserModuleError as exc:
        print(exc, file=sys.stderr)
        return 2
    if supervised is None:  # a --reuseport child's port is held by its supervisor, which checked it
        from server.preflight import PreflightError, check

        try:
            check(config)
        except PreflightError as exc:
            print(exc, file=sys.stderr)
            return 1
    if config.reuseport >= 1 and supervised is None:
        return supervisor.run(config)  # the parent starts --reuseport children and does not serve
    supervisor.prepare_child()
    from server.cpu.backend import PoolStartError

    try:
        if config.mode == "async":
            from server.frontends import aio

            return aio.run(config)
        from server.frontends import threaded

        return threaded.run(config)
    except PoolStartError as exc:  # e.g. --executor dask://... and the scheduler does not answer
        import structlog

        structlog.get_logger("crossdock").error("cpu_executor_failed", executor=config.executor, detail=str(exc))
        return 1


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; only the subcommand being run (``command``) has its module imported.

    The other external subcommands are listed with their help text but not
    imported, so ``crossdock serve`` starts without loading the client, the
    load generator and their dependencies (rich, matplotlib).
    """
    from server.config import add_arguments

    parser = argparse.ArgumentParser(prog="crossdock", description="A RESP2 server: asyncio, processes and threads.")
    parser.add_argument("--version", action="version", version=f"crossdock {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser("serve", help="run the server")
    add_arguments(serve)
    serve.set_defaults(handler=_serve)
    for name, (module_name, help_text) in EXTERNAL_SUBCOMMANDS.items():
        if name != command:
            commands.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            print(f"crossdock {name}: cannot load {module_name}: {exc}", file=sys.stderr)
            continue
        sub = commands.add_parser(name, help=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
