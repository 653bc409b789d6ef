"""INFO in Redis's format (``# Section`` headers, ``field:value`` lines, CRLF) and the CONFIG GET view.

Section selection follows Redis 7: no argument or ``default`` prints the
default sections; ``all`` adds commandstats and latencystats; ``everything``
is ``all`` (there are no module sections); several names may be given
(``INFO server commandstats``) and sections always print in the fixed order
below, each once. Unknown names print nothing, as in Redis.
"""

from __future__ import annotations

import platform
import resource
import sys
from collections.abc import Callable

from server import REDIS_COMPAT_VERSION, __version__
from server.memory import human_bytes, memory_available, rss_bytes
from server.observability.instance import info_fields
from server.protocol import CORE
from server.store.commandstats import LATENCY_PERCENTILES
from server.store.slowlog import SLOWLOG_MAX_LEN
from server.store.state import ServerState

#: Sections printed by a bare INFO / INFO default, in this order (as Redis orders its own). commandstats and
#: latencystats are left out, as Redis leaves them out: they grow with the number of commands used.
DEFAULT_SECTIONS = ("server", "clients", "memory", "stats", "cpu", "crossdock", "limits", "pool", "keyspace")

#: Section headers that are not the capitalised name (Redis prints ``# CPU``).
_HEADERS = {"cpu": "CPU"}


def _server(state: ServerState) -> dict[str, object]:
    config = state.config
    return {
        "redis_version": REDIS_COMPAT_VERSION,
        "crossdock_version": __version__,
        "redis_mode": "standalone",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "arch_bits": 64 if sys.maxsize > 2**32 else 32,
        "multiplexing_api": "uvloop" if config.mode == "async" else "threads",
        "python_version": platform.python_version(),
        "crossdock_core": CORE,  # the request/reply parser core: "mypyc" (compiled) or "pure"
        "process_id": state.process_id,
        "run_id": state.run_id,
        "tcp_port": state.bound_port,
        "uptime_in_seconds": state.uptime_seconds,
        "uptime_in_days": state.uptime_seconds // 86400,
        "executable": sys.executable,
    }


def _clients(state: ServerState) -> dict[str, object]:
    return {
        "connected_clients": len(state.clients),
        "maxclients": state.config.maxclients,
        "blocked_clients": 0,
        "tracking_clients": 0,
    }


def memory_figures(state: ServerState) -> dict[str, int | float]:
    """used_memory (data + client output buffers), RSS, maxmemory and their ratio: INFO memory and Prometheus."""
    memory = state.memory
    used = memory.used_memory()
    rss = rss_bytes()
    return {
        "used_memory": used,
        "used_memory_rss": rss,
        "used_memory_dataset": memory.dataset.used_bytes,
        "used_memory_clients": memory.client_output_bytes,
        "maxmemory": memory.maxmemory,
        # Redis's definition, RSS / used; with used_memory counting data only (server.memory), a nearly empty
        # server shows the interpreter's fixed cost as a large ratio, as Redis does with its own start-up cost.
        "mem_fragmentation_ratio": rss / used if used else 0.0,
    }


def _memory(state: ServerState) -> dict[str, object]:
    figures = memory_figures(state)
    used, rss, maxmemory = figures["used_memory"], figures["used_memory_rss"], figures["maxmemory"]
    return {
        "used_memory": used,
        "used_memory_human": human_bytes(int(used)),
        "used_memory_rss": rss,
        "used_memory_rss_human": human_bytes(int(rss)),
        "used_memory_startup": state.startup_rss,
        "used_memory_dataset": figures["used_memory_dataset"],
        "used_memory_clients": figures["used_memory_clients"],
        "total_system_memory": memory_available(),
        "maxmemory": maxmemory,
        "maxmemory_human": human_bytes(int(maxmemory)),
        "maxmemory_policy": state.memory.policy,
        "maxmemory_samples": state.config.maxmemory_samples,
        "mem_fragmentation_ratio": f"{figures['mem_fragmentation_ratio']:.2f}",
        "mem_allocator": "libc",
        "heap_trims": state.memory.trims,
        # Redis's name for the output buffers of normal clients: what --output-budget bounds.
        "mem_clients_normal": figures["used_memory_clients"],
    }


def _stats(state: ServerState) -> dict[str, object]:
    stats = state.stats
    return {
        "total_connections_received": stats.total_connections_received,
        "total_commands_processed": stats.total_commands_processed,
        "total_net_input_bytes": stats.total_net_input_bytes,
        "total_net_output_bytes": stats.total_net_output_bytes,
        "rejected_connections": stats.rejected_connections,
        "client_query_buffer_limit_disconnections": stats.client_query_buffer_limit_disconnections,
        "client_output_buffer_limit_disconnections": stats.client_output_buffer_limit_disconnections,
        "client_idle_timeout_disconnections": stats.client_idle_timeout_disconnections,
        "client_request_timeout_disconnections": stats.client_request_timeout_disconnections,
        "client_write_timeout_disconnections": stats.client_write_timeout_disconnections,
        "pubsub_channels": state.pubsub.channel_count,
        "pubsub_patterns": state.pubsub.pattern_count,
        # crossdock's own, beside Redis's two above: fan-out volume and subscribers cut off by the pub/sub limit.
        "pubsub_messages_published": state.pubsub.stats.messages_published,
        "pubsub_messages_delivered": state.pubsub.stats.messages_delivered,
        "pubsub_output_buffer_limit_disconnections": stats.pubsub_output_buffer_limit_disconnections,
        "accept_resource_errors": stats.accept_resource_errors,
        "expired_keys": state.keyspace.expired_keys,
        "evicted_keys": state.keyspace.evicted_keys,
        "total_error_replies": stats.total_error_replies,
        "total_cpu_commands": stats.total_cpu_commands,
        "slow_commands": stats.slow_commands,
    }


def _cpu(state: ServerState) -> dict[str, object]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "used_cpu_sys": f"{usage.ru_stime:.6f}",
        "used_cpu_user": f"{usage.ru_utime:.6f}",
        "used_cpu_sys_children": f"{children.ru_stime:.6f}",
        "used_cpu_user_children": f"{children.ru_utime:.6f}",
    }


def _crossdock(state: ServerState) -> dict[str, object]:
    config = state.config
    pool = state.pool
    return {
        "mode": config.mode,
        "cpu": config.cpu,
        "cpu_queue_limit": config.effective_cpu_queue_limit,
        "cpu_timeout": f"{config.cpu_timeout:g}",
        "executor": pool.kind if pool is not None else "inline",
        "executor_address": pool.address if pool is not None else "",
        "executor_workers": pool.worker_count() if pool is not None else 0,
        "keyspace_scope": "per-instance",
        **info_fields(config),
    }


def pool_figures(state: ServerState) -> dict[str, int]:
    """The pool's numbers as plain integers (all zero without a pool): INFO pool and the Prometheus gauges.

    Workers and restarts come from the pool; jobs in flight, running, queued,
    BUSY rejections, timeouts, resubmissions and worker failures from the
    cpu-job policy (:class:`server.cpu.jobs.CpuJobs`).
    """
    pool = state.pool
    figures = {"workers": state.pool_size if pool is not None else 0, "restarts": pool.restarts if pool else 0}
    jobs = state.cpu_jobs
    figures.update(
        {key: int(value) for key, value in jobs.info().items()}
        if jobs is not None
        else dict.fromkeys(_CPU_JOB_FIELDS, 0)
    )
    return figures


#: The fields :meth:`server.cpu.jobs.CpuJobs.info` reports (zeros when there is no pool).
_CPU_JOB_FIELDS = (
    "cpu_jobs_in_flight", "cpu_jobs_running", "cpu_jobs_queued", "cpu_rejected_busy", "cpu_rejected_over_share",
    "cpu_timeouts", "cpu_jobs_resubmitted", "cpu_worker_failures", "cpu_batches", "cpu_jobs_batched", "cpu_args_shared",
)  # fmt: skip


def _pool(state: ServerState) -> dict[str, object]:
    """The cpu pool: executor, workers and their pids, restarts, and the jobs' queue, running, shed, timed out."""
    config = state.config
    pool = state.pool
    figures = pool_figures(state)
    fields: dict[str, object] = {
        "pool_executor": getattr(pool, "kind", config.executor) if pool is not None else "none",
        "pool_start_method": config.start_method if pool is not None else "none",
        "pool_workers": figures["workers"],
        "pool_worker_pids": ",".join(map(str, sorted(pool.worker_pids()))) if pool is not None else "",
        "pool_restarts": figures["restarts"],
    }
    fields.update((key, figures[key]) for key in _CPU_JOB_FIELDS)
    return fields


def _commandstats(state: ServerState) -> dict[str, object]:
    """Redis's ``cmdstat_<name>:calls=,usec=,usec_per_call=,rejected_calls=,failed_calls=`` lines."""
    lines: dict[str, object] = {}
    for stats in state.command_stats:
        calls = stats.calls
        if not (calls or stats.rejected or stats.failed):
            continue  # e.g. the INFO being answered right now: counted once it has run, as in Redis
        usec = stats.ns // 1000
        per_call = usec / calls if calls else 0.0
        lines[f"cmdstat_{stats.name}"] = (
            f"calls={calls},usec={usec},usec_per_call={per_call:.2f},"
            f"rejected_calls={stats.rejected},failed_calls={stats.failed}"
        )
    return lines


def _latencystats(state: ServerState) -> dict[str, object]:
    """Redis's ``latency_percentiles_usec_<name>:p50=,p99=,p99.9=`` lines (commands that completed a call)."""
    lines: dict[str, object] = {}
    for stats in state.command_stats:
        if not stats.calls:
            continue
        values = stats.percentiles_us(LATENCY_PERCENTILES)
        lines[f"latency_percentiles_usec_{stats.name}"] = ",".join(
            f"p{_percentile_label(p)}={value:.3f}" for p, value in zip(LATENCY_PERCENTILES, values, strict=True)
        )
    return lines


def _percentile_label(percentile: float) -> str:
    """``50``, ``99``, ``99.9``: Redis prints the percentile with trailing zeros trimmed."""
    return f"{percentile:f}".rstrip("0").rstrip(".")


def _limits(state: ServerState) -> dict[str, object]:
    """The per-connection limits in force (0 = off for the timeouts); maxclients after start-up adjustment."""
    config = state.config
    return {
        "maxclients": config.maxclients,
        "idle_timeout": _seconds(config.idle_timeout),
        "request_timeout": _seconds(config.request_timeout),
        "write_timeout": _seconds(config.write_timeout),
        "query_buffer_limit": config.query_buffer_limit,
        "output_buffer_limit": config.output_buffer_limit,
        "output_budget": config.output_budget,
        "max_bulk_length": config.max_bulk_length,
        "open_files_limit": _open_files_limit(),
    }


def _seconds(value: float) -> str:
    return f"{value:g}"


def _open_files_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


def _keyspace(state: ServerState) -> dict[str, object]:
    keys = state.keyspace.size()
    if not keys:
        return {}
    return {"db0": f"keys={keys},expires={state.keyspace.expires_count()},avg_ttl=0"}


_SECTIONS: dict[str, Callable[[ServerState], dict[str, object]]] = {
    "server": _server,
    "clients": _clients,
    "memory": _memory,
    "stats": _stats,
    "cpu": _cpu,
    "crossdock": _crossdock,
    "limits": _limits,
    "pool": _pool,
    "commandstats": _commandstats,
    "latencystats": _latencystats,
    "keyspace": _keyspace,
}


def selected_sections(requested: list[str]) -> list[str]:
    """The sections ``INFO <requested...>`` prints, in print order."""
    wanted: set[str] = set()
    for name in requested or ["default"]:
        if name == "default":
            wanted.update(DEFAULT_SECTIONS)
        elif name in ("all", "everything"):
            wanted.update(_SECTIONS)
        else:
            wanted.add(name)
    return [name for name in _SECTIONS if name in wanted]


def render_info(state: ServerState, requested: list[str]) -> str:
    """The INFO text for the requested sections (lower-case names; see the module docstring)."""
    lines: list[str] = []
    for name in selected_sections(requested):
        if lines:
            lines.append("")
        lines.append(f"# {_HEADERS.get(name, name.capitalize())}")
        lines.extend(f"{key}:{value}" for key, value in _SECTIONS[name](state).items())
    return "\r\n".join(lines) + "\r\n" if lines else ""


def config_parameters(state: ServerState) -> dict[str, str]:
    """Parameters CONFIG GET can read. ``save``/``appendonly`` are what redis-benchmark asks for.

    ``requirepass`` shows the password, as Redis 7's CONFIG GET does: only a client that has already
    authenticated can run CONFIG (before AUTH it gets ``-NOAUTH``), and without a password it is empty.
    The TLS entries carry Redis's names; ``tls-auth-clients`` is ``yes`` when ``--tls-ca`` is set.
    """
    config = state.config
    return {
        "bind": config.host,
        "port": str(state.bound_port),
        "save": "",
        "appendonly": "no",
        "databases": "1",
        "timeout": _seconds(config.idle_timeout),
        "maxclients": str(config.maxclients),
        "client-query-buffer-limit": str(config.query_buffer_limit),
        "client-output-buffer-limit": f"normal {config.output_buffer_limit} 0 0",
        "crossdock-request-timeout": _seconds(config.request_timeout),
        "crossdock-write-timeout": _seconds(config.write_timeout),
        "maxmemory": str(state.memory.maxmemory),
        "maxmemory-policy": state.memory.policy,
        "maxmemory-samples": str(config.maxmemory_samples),
        "proto-max-bulk-len": str(config.max_bulk_length),
        "slowlog-log-slower-than": str(int(config.slowlog_threshold_ms * 1000)),
        "slowlog-max-len": str(SLOWLOG_MAX_LEN),
        "latency-tracking": "yes",
        "latency-tracking-info-percentiles": " ".join(_percentile_label(p) for p in LATENCY_PERCENTILES),
        "io-threads": "1",
        "requirepass": config.requirepass,
        "protected-mode": "yes" if config.protected_mode else "no",
        "tls-cert-file": config.tls_cert,
        "tls-key-file": config.tls_key,
        "tls-ca-cert-file": config.tls_ca,
        "tls-auth-clients": "yes" if config.tls_ca else "no",
        "crossdock-mode": config.mode,
        "crossdock-cpu": config.cpu,
        "crossdock-workers": str(state.pool_size),
    }
