"""`GET /metrics` (Prometheus text format). So far: how far each projection is behind the log.

Gauges are read at scrape time from the store, so every API replica reports the same truth.
The registry is per app (no module-level global), built by `create_app`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ProjectionLag", "metrics", "new_registry"]


class ProjectionLag(Collector):
    def __init__(self, log_position: Callable[[], int], positions: Callable[[], dict[str, int]]) -> None:
        self._log_position = log_position
        self._positions = positions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        head = self._log_position()
        log = GaugeMetricFamily("payledger_log_position", "Notification id of the newest event in the log")
        log.add_metric([], head)
        yield log
        lag = GaugeMetricFamily(
            "payledger_projection_lag_events",
            "Events in the log that a projection has not processed",
            labels=["projection"],
        )
        for name, position in self._positions().items():
            lag.add_metric([name], max(0, head - position))
        yield lag


def new_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


async def metrics(request: Request) -> Response:
    import anyio

    registry: CollectorRegistry = request.app.state.metrics
    body = await anyio.to_thread.run_sync(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
