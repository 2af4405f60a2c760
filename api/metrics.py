"""`GET /metrics` (Prometheus text format).

Two kinds of figures. What only the replica that answered can know (notification outcomes,
answer latency, query outcomes) is counted in process, with every labelled child bound at
start so a request pays one increment and one observation. What any process may have done
(decisions, anomalies, projection lag, outbound attempts, dead letters) is read from the
store at scrape time, so every replica reports the same truth. The registry is per app (no
module-level global), built by `create_app`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from eventsourcing.persistence import PersistenceError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from api.callback_minutes import CallbackMinutes
from ledger.application import Ledger
from ledger.bill_matching import DiscrepancyKind
from ledger.status_query import OrderQuery
from ledger.wechatpay.bills import BEIJING
from projections.bills.reports import REPORT_STATUSES, BillReports
from projections.log_counts import DecisionTally, unprocessed
from projections.webhooks.outbox import Outbox
from projections.webhooks.stats import AttemptTally, backlog

__all__ = [
    "NOTIFICATION_OUTCOMES",
    "BillMetrics",
    "Guarded",
    "NotifyMetrics",
    "OutboxMetrics",
    "ProjectionLag",
    "QueryOutcomes",
    "StoreBreaker",
    "metrics",
    "new_registry",
]

log = logging.getLogger("api.metrics")

NOTIFICATION_OUTCOMES = (
    "accepted",
    "duplicate",
    "probe",
    "bad_signature",
    "stale",
    "unknown_serial",
    "malformed",
    "decrypt_failure",
    "store_unavailable",
    "too_large",
    "body_timeout",
    "disconnected",
    "unknown_merchant",
    "error",
)
# WeChat counts an answer after 5 s as a failure; the fine buckets are where a healthy replica lives.
ANSWER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 4.0, 5.0)


class NotifyMetrics:
    """Notification outcomes and answer latency of this replica."""

    def __init__(self, registry: CollectorRegistry, minutes: CallbackMinutes | None = None) -> None:
        self.minutes = minutes  # the same outcomes per minute, for the overview's chart
        total = Counter(
            "payledger_notifications",
            "Notifications answered by this replica, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.outcomes = {outcome: total.labels(outcome) for outcome in NOTIFICATION_OUTCOMES}
        self.answer_seconds = Histogram(
            "payledger_notification_answer_seconds",
            "Time from the start of a notification request to its answer",
            buckets=ANSWER_BUCKETS,
            registry=registry,
        )

    def answered(self, outcome: str, started: float) -> float:
        """Count one answer given `started` (a perf_counter reading); returns the seconds it took."""
        elapsed = time.perf_counter() - started
        self.outcomes[outcome].inc()
        self.answer_seconds.observe(elapsed)
        if self.minutes is not None:
            self.minutes.count(outcome)
        return elapsed


class QueryOutcomes(Collector):
    """Status queries to WeChat Pay made by this replica, by outcome (and WeChat's code when rejected)."""

    def __init__(self, query: OrderQuery) -> None:
        self._query = query

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "payledger_queries",
            "Status queries by outcome; code is WeChat Pay's for rejected ones",
            labels=["outcome", "code"],
        )
        counts = {"recorded": 0, "unavailable": 0, "untrusted": 0, "not_configured": 0} | self._query.counts()
        for key, n in sorted(counts.items()):
            outcome, _, code = key.partition(":")
            family.add_metric([outcome, code], n)
        yield family


class ProjectionLag(Collector):
    """Position of the log and, per projection, the events of its kinds it has not processed yet."""

    def __init__(
        self,
        ledger: Ledger,
        positions: Callable[[], dict[str, int]],
        topics: dict[str, Sequence[str]],
        exact_up_to: int = 100_000,
    ) -> None:
        self._ledger = ledger
        self._positions = positions
        self._topics = topics
        self._cap = exact_up_to

    def lags(self) -> tuple[int, dict[str, int]]:
        head = self._ledger.recorder.max_notification_id() or 0
        lags = {
            name: unprocessed(self._ledger, position, head, self._topics[name], self._cap)
            for name, position in self._positions().items()
        }
        return head, lags

    def collect(self) -> Iterator[Metric]:
        head, lags = self.lags()
        log_position = GaugeMetricFamily("payledger_log_position", "Notification id of the newest event in the log")
        log_position.add_metric([], head)
        yield log_position
        lag = GaugeMetricFamily(
            "payledger_projection_lag_events",
            "Events in the log that a projection has still to process",
            labels=["projection"],
        )
        for name, n in lags.items():
            lag.add_metric([name], n)
        yield lag


class DecisionMetrics(Collector):
    def __init__(self, tally: DecisionTally) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        decisions, anomalies = self._tally.read()
        family = CounterMetricFamily("payledger_decisions", "Decision events in the log, by type", labels=["type"])
        for name, n in sorted(decisions.items()):
            family.add_metric([name], n)
        yield family
        family = CounterMetricFamily("payledger_anomalies", "Anomalies detected in the log, by kind", labels=["kind"])
        for kind, n in sorted(anomalies.items()):
            family.add_metric([kind], n)
        yield family


class OutboxMetrics(Collector):
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._attempts = AttemptTally(outbox)

    def collect(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "payledger_webhook_attempts", "Outbound notification attempts by result", labels=["result"]
        )
        for result, n in self._attempts.read().items():
            attempts.add_metric([result], n)
        yield attempts
        states = backlog(self._outbox)
        messages = GaugeMetricFamily(
            "payledger_outbox_messages", "Outbound messages not delivered yet, by state", labels=["state"]
        )
        for state, n in states.items():
            messages.add_metric([state], n)
        yield messages
        dead = GaugeMetricFamily(
            "payledger_webhook_dead_letters", "Outbound messages whose retries are exhausted (until resent)"
        )
        dead.add_metric([], states["dead"])
        yield dead


class BillMetrics(Collector):
    """What the kept bill reports say: differences by kind, and how far each merchant's books are checked."""

    def __init__(self, reports: BillReports, merchants: Sequence[str] = ()) -> None:
        self._reports = reports
        self._merchants = merchants

    def collect(self) -> Iterator[Metric]:
        counts = self._reports.discrepancy_counts()
        family = GaugeMetricFamily(
            "payledger_bill_discrepancies",
            "Differences between WeChat's daily bills and the ledger in the kept reports, by kind and resolved",
            labels=["kind", "resolved"],
        )
        kinds = sorted({str(kind) for kind in DiscrepancyKind} | {kind for kind, _ in counts})
        for kind in kinds:
            for resolved in (False, True):
                family.add_metric([kind, str(resolved).lower()], counts.get((kind, resolved), 0))
        yield family
        last = self._reports.last_reconciled()
        day = GaugeMetricFamily(
            "payledger_bill_last_reconciled_day",
            "The latest bill day reconciled with its bill had, per merchant: Unix time of its 00:00 Beijing time",
            labels=["mchid"],
        )
        for mchid, report in sorted(last.items()):
            midnight = dt.datetime.combine(report.bill_date, dt.time(), tzinfo=BEIJING)
            day.add_metric([mchid], midnight.timestamp())
        yield day
        status = GaugeMetricFamily(
            "payledger_bill_latest_status",
            "Per merchant, 1 for the status of the report of its latest bill day reconciled (0 for the others)",
            labels=["mchid", "status"],
        )
        for mchid in sorted({*self._merchants, *last}):
            latest = self._reports.recent(mchid=mchid, limit=1)
            if latest:
                for name in REPORT_STATUSES:
                    status.add_metric([mchid, name], 1 if latest[0].status == name else 0)
        yield status


class StoreBreaker:
    """After a store read fails, store reads are skipped for `pause` seconds.

    While the store is away each read can spend seconds in connection retries; a scrape or a
    readiness probe in that window answers at once instead (and tells the same story).
    """

    def __init__(self, pause: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._pause = pause
        self._clock = clock
        self._until = 0.0

    @property
    def is_open(self) -> bool:
        return self._clock() < self._until

    def trip(self) -> None:
        self._until = self._clock() + self._pause


class Guarded(Collector):
    """A store-backed collector that yields nothing while the store is away, so the in-process
    figures (which count exactly those failures) are still served."""

    def __init__(self, name: str, collector: Collector, breaker: StoreBreaker) -> None:
        self._name = name
        self._collector = collector
        self._breaker = breaker

    def collect(self) -> Iterable[Metric]:
        if self._breaker.is_open:
            return []
        try:
            return list(self._collector.collect())
        except PersistenceError as exc:
            # Only the store being away pauses the store-backed figures (and /readyz with them).
            self._breaker.trip()
            log.warning("metrics: %s not read, store unavailable (%s)", self._name, type(exc).__name__)
            return []
        except Exception as exc:
            # Anything else (an event this replica cannot decrypt, a missing table) is this
            # collector's problem: it is left out of this scrape, and readiness is untouched.
            log.warning("metrics: %s not read (%s)", self._name, type(exc).__name__)
            return []


def new_registry(*collectors: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


async def metrics(request: Request) -> Response:
    import anyio

    registry: CollectorRegistry = request.app.state.metrics
    body = await anyio.to_thread.run_sync(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
