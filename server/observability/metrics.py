"""Prometheus metrics: ``--metrics-port`` serves ``/metrics`` from the server's own counters.

Nothing is counted for Prometheus on the hot path. A custom collector reads,
at scrape time, the counters the server keeps anyway for INFO: the
:class:`~server.store.state.Stats` integers, the per-command
:class:`~server.store.commandstats.CommandStats` (calls, failed and rejected calls,
latency histograms) and the pool's figures. The request duration histogram
is folded out of the per-command log-linear histograms into fixed buckets
(:data:`DURATION_BUCKETS`), so one recording per request serves INFO
commandstats, latencystats and Prometheus alike.

The endpoint is prometheus_client's own HTTP server, in a daemon thread, so
it works the same under both front ends; the collector only reads integers,
lists and dicts the front end writes, taking copies where it iterates. A
scrape costs about a millisecond of the GIL per few dozen commands used.

Metric names carry the ``crossdock_`` prefix and their unit. Counters restart
from zero after ``CONFIG RESETSTAT``, which Prometheus's ``rate()`` treats as
a counter reset.

Error handling: a port that cannot be bound raises :class:`OSError` at
start-up (the server does not start half-observable); a collector error is
answered by prometheus_client with HTTP 500 and never reaches the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from server import __version__
from server.observability.info import memory_figures, pool_figures
from server.store.commandstats import bucket_cutoffs

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from server.store.state import ServerState

log = structlog.get_logger("crossdock.metrics")

#: Upper bounds of crossdock_request_duration_seconds, in seconds: from 10 us (a PING answered inline) to 30 s (the
#: default cpu timeout), about three per decade, so p50/p99 of both inline and cpu requests fall between bounds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

#: Histogram slot cut-offs for each bucket bound (a slot counts as "<= bound" when its middle is).
_CUTOFFS = bucket_cutoffs([bound * 1e9 for bound in DURATION_BUCKETS])

#: Outcomes of crossdock_requests_total: answered normally, answered with an error, refused before running.
OUTCOMES = ("ok", "failed", "rejected")

KINDS = ("inline", "cpu")


class CrossdockCollector(Collector):
    """Reads one server's counters at scrape time."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        stats = state.stats
        config = state.config
        info = GaugeMetricFamily(
            "crossdock_info", "Constant 1, labelled with the version and mode.", labels=["version", "mode", "cpu"]
        )
        info.add_metric([__version__, config.mode, config.cpu], 1)
        yield info
        yield GaugeMetricFamily("crossdock_connected_clients", "Connections open now.", value=len(state.clients))
        yield CounterMetricFamily(
            "crossdock_connections_received", "Connections accepted.", value=stats.total_connections_received
        )
        yield CounterMetricFamily(
            "crossdock_connections_rejected",
            "Connections refused (maxclients, protected mode).",
            value=stats.rejected_connections,
        )
        yield CounterMetricFamily(
            "crossdock_commands_processed", "Requests read, unknown commands included.",
            value=stats.total_commands_processed,
        )  # fmt: skip
        yield CounterMetricFamily("crossdock_error_replies", "Error replies sent.", value=stats.total_error_replies)
        yield CounterMetricFamily(
            "crossdock_slow_commands", "Commands at or over the slow threshold.", value=stats.slow_commands
        )
        yield CounterMetricFamily(
            "crossdock_net_input_bytes", "Bytes read from clients.", value=stats.total_net_input_bytes
        )
        yield CounterMetricFamily(
            "crossdock_net_output_bytes", "Bytes written to clients.", value=stats.total_net_output_bytes
        )
        yield GaugeMetricFamily("crossdock_keys", "Keys in the keyspace.", value=state.keyspace.size())
        yield from self._pubsub()
        yield from self._memory()
        yield from self._requests()
        yield from self._pool()

    def _pubsub(self) -> Iterator[Metric]:
        state = self.state
        hub = state.pubsub
        yield GaugeMetricFamily(
            "crossdock_pubsub_channels", "Channels with at least one subscriber.", value=hub.channel_count
        )
        yield GaugeMetricFamily(
            "crossdock_pubsub_patterns", "Patterns with at least one subscriber.", value=hub.pattern_count
        )
        yield CounterMetricFamily(
            "crossdock_pubsub_messages_published", "PUBLISH commands run.", value=hub.stats.messages_published
        )
        yield CounterMetricFamily(
            "crossdock_pubsub_messages_delivered",
            "Messages handed to subscribers (one PUBLISH to N subscribers counts N).",
            value=hub.stats.messages_delivered,
        )
        yield CounterMetricFamily(
            "crossdock_pubsub_subscribers_cut_off",
            "Subscribers disconnected by the pub/sub output limit (32 MiB, or 8 MiB for 60 s).",
            value=state.stats.pubsub_output_buffer_limit_disconnections,
        )

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "crossdock_requests",
            "Requests per command (config|get style for subcommands) and outcome, as INFO commandstats counts them.",
            labels=["command", "outcome"],
        )
        duration = HistogramMetricFamily(
            "crossdock_request_duration_seconds",
            "Time from dispatch to reply per request kind (cpu includes the wait for a worker).",
            labels=["kind"],
        )
        per_kind = {kind: ([0] * len(DURATION_BUCKETS), [0, 0]) for kind in KINDS}  # bucket counts, [count, ns]
        for command in self.state.command_stats:
            histogram = list(command.histogram)
            calls = sum(histogram)
            requests.add_metric([command.name, "ok"], calls - command.failed)
            requests.add_metric([command.name, "failed"], command.failed)
            requests.add_metric([command.name, "rejected"], command.rejected)
            buckets, totals = per_kind.setdefault(command.kind, ([0] * len(DURATION_BUCKETS), [0, 0]))
            start = 0
            for index, cut in enumerate(_CUTOFFS):
                buckets[index] += sum(histogram[start:cut])
                start = cut
            totals[0] += calls
            totals[1] += command.ns
        for kind, (buckets, (count, ns)) in per_kind.items():
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, in_bucket in zip(DURATION_BUCKETS, buckets, strict=True):
                cumulative += in_bucket
                points.append((floatToGoString(bound), cumulative))
            points.append(("+Inf", count))
            duration.add_metric([kind], points, sum_value=ns / 1e9)
        yield requests
        yield duration

    def _memory(self) -> Iterator[Metric]:
        """INFO memory's figures and evicted_keys (used_memory counts data and client output buffers)."""
        figures = memory_figures(self.state)
        yield GaugeMetricFamily(
            "crossdock_used_memory_bytes", "Bytes held for clients: the keyspace and client output buffers.",
            value=figures["used_memory"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "crossdock_used_memory_rss_bytes", "Resident set size of the server process.",
            value=figures["used_memory_rss"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "crossdock_maxmemory_bytes", "The maxmemory bound (0 = none).", value=figures["maxmemory"]
        )
        yield GaugeMetricFamily(
            "crossdock_mem_fragmentation_ratio", "RSS / used_memory.", value=figures["mem_fragmentation_ratio"]
        )
        yield CounterMetricFamily(
            "crossdock_evicted_keys", "Keys evicted by the maxmemory-policy.", value=self.state.keyspace.evicted_keys
        )

    def _pool(self) -> Iterator[Metric]:
        figures = pool_figures(self.state)
        yield GaugeMetricFamily("crossdock_pool_workers", "Worker processes in the cpu pool.", value=figures["workers"])
        yield GaugeMetricFamily(
            "crossdock_pool_queue_depth", "cpu requests waiting for a free worker.", value=figures["cpu_jobs_queued"]
        )
        yield GaugeMetricFamily(
            "crossdock_pool_busy_workers", "Workers running a request now.", value=figures["cpu_jobs_running"]
        )
        yield CounterMetricFamily(
            "crossdock_pool_restarts", "Times the pool's executor was replaced.", value=figures["restarts"]
        )
        yield CounterMetricFamily(
            "crossdock_pool_rejected",
            "cpu requests shed with -BUSY (backlog full).",
            value=figures["cpu_rejected_busy"],
        )
        yield CounterMetricFamily(
            "crossdock_pool_timeouts", "cpu requests that ran past --cpu-timeout.", value=figures["cpu_timeouts"]
        )
        yield CounterMetricFamily(
            "crossdock_pool_worker_failures",
            "cpu requests answered with an error because their worker died.",
            value=figures["cpu_worker_failures"],
        )


@dataclass
class MetricsServer:
    """The running ``/metrics`` endpoint: its bound port, and how to stop it."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port (waits for the serving thread's poll to notice, about 0.5 s)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5.0)


def start_metrics(state: ServerState) -> MetricsServer | None:
    """Serve Prometheus metrics on ``config.host:config.metrics_port`` (0 = any free port); None when it is -1.

    Logs ``metrics_listening`` with the bound port, before the server's own
    ``started`` line.
    """
    config = state.config
    if config.metrics_port < 0:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CrossdockCollector(state))
    ProcessCollector(registry=registry)
    httpd, thread = start_http_server(config.metrics_port, addr=config.host, registry=registry)
    server = MetricsServer(httpd, thread)
    log.info("metrics_listening", host=config.host, port=server.port, path="/metrics")
    return server
