"""Whether this process is a supervised ``--reuseport`` child, and which one: read from its environment.

The supervisor (server.frontends.supervisor) sets these variables for each
child it starts; INFO reports them. Apart from the supervisor so that INFO, low
in the layers, does not import a front-end module.
"""

from __future__ import annotations

import os

from server.config import Config

#: Set in a child's environment: its instance index, 0..N-1.
ENV_INSTANCE = "CROSSDOCK_SUPERVISED_INSTANCE"
#: Set in a child's environment: the supervisor's pid (INFO reports it).
ENV_SUPERVISOR = "CROSSDOCK_SUPERVISED_BY"


def supervised_instance() -> tuple[int, int] | None:
    """``(instance index, supervisor pid)`` when this process is a supervised child, else None."""
    raw_index, raw_pid = os.environ.get(ENV_INSTANCE), os.environ.get(ENV_SUPERVISOR)
    if raw_index is None or raw_pid is None:
        return None
    try:
        return int(raw_index), int(raw_pid)
    except ValueError:
        return None


def info_fields(config: Config) -> dict[str, object]:
    """INFO crossdock fields about reuseport: the group size, and this child's index and supervisor."""
    supervised = supervised_instance()
    if supervised is None:
        return {"reuseport": 0}
    index, parent = supervised
    return {"reuseport": config.reuseport, "reuseport_instance": index, "supervisor_pid": parent}
