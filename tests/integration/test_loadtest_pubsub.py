"""The load generator's pubsub scenario, small, against both front ends and redis-server: nothing is lost."""

from __future__ import annotations

import pytest

from loadtest.pubsub import PubSubConfig, run_pubsub
from tests.client_fixtures import RedisServer
from tests.support import ServerProcess


@pytest.mark.parametrize("target", ["crossdock", "redis"])
def test_pubsub_scenario_delivers_every_message(
    target: str, front_end: ServerProcess, redis_server: RedisServer
) -> None:
    server = front_end if target == "crossdock" else redis_server
    config = PubSubConfig(
        host=server.host, port=server.port, subscribers=40, publishers=2, rate=100, duration=1.0, processes=2,
        channel=f"loadtest:{target}:{getattr(server, 'mode', 'redis')}",
    )  # fmt: skip
    report = run_pubsub(config)
    assert "error" not in report, report
    assert report["subscribers"] == 40 and report["published"] == 100
    assert report["server_deliveries"] == report["received"] == 100 * 40
    assert report["lost"] == 0 and report["lost_connections"] == 0 and report["ok"]
    assert report["latency_ms"]["count"] == 100 * 40


def test_pubsub_config_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PubSubConfig(subscribers=0).validate()
