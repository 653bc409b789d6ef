"""cpu executors chosen by name, imported lazily (uvicorn's habit for loops and protocols).

``--executor process`` (the default) is the local ProcessPoolExecutor;
``--executor dask://HOST:PORT`` imports ``server.cpu.dask`` (and
``distributed``) only then, so the default server starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import Config
    from server.cpu.backend import CpuBackend

#: Executor kind -> "module:function" that starts it from a Config.
EXECUTORS = {
    "process": "server.cpu.pool:start_process_pool",
    "dask": "server.cpu.dask:start_dask_pool",
}


def executor_kind(config: Config) -> str:
    """``process``, or ``dask`` for a ``dask://`` address."""
    return "process" if config.executor == "process" else "dask"


def start_pool(config: Config) -> CpuBackend:
    """Start the executor the configuration names.

    Error handling: a backend that cannot start raises
    :class:`~server.cpu.backend.PoolStartError` (the CLI logs it and exits 1).
    """
    module_name, _, attr = EXECUTORS[executor_kind(config)].partition(":")
    start = getattr(importlib.import_module(module_name), attr)
    backend: CpuBackend = start(config)
    return backend
