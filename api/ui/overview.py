"""The console's home, `GET /ui/`: what an operator asks every morning, on one page.

Today's and yesterday's payments and refunds (Beijing days, from the orders view's day indexes),
callbacks per minute over 24 hours by outcome (`api.callback_minutes`), open anomalies, dead
letters and failing endpoints (the outbox), the reconciliation worklist, projection lag (as
/readyz and /metrics count it) and each merchant's last bill reconciliation. Every figure is an
indexed read or a small table, so the page answers fast whatever the number of orders.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.callback_minutes import CallbackMinutes
from api.metrics import ProjectionLag
from api.state import AppState, app_state
from api.ui.anomalies import AnomalyEntry, anomaly_entries
from api.ui.auth import Access
from api.ui.chart import HEIGHT, MINUTES, CallbackChart, callback_chart
from api.ui.formatting import beijing_day
from projections.bills.reports import BillReport
from projections.webhooks.records import Endpoint
from projections.webhooks.stats import backlog

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["Day", "Overview", "OverviewPages", "read_overview"]

LATEST_ANOMALIES = 5
LAG_FRESH_SECONDS = 30.0
CHART_FRESH_SECONDS = 10.0  # as often as replicas add their counts (api.callback_minutes.FLUSH_SECONDS)


@dataclass(frozen=True)
class Day:
    day: dt.date
    payments: int
    paid: int  # fen
    refunds: int
    refunded: int  # fen


@dataclass
class Overview:
    days: list[Day] = field(default_factory=list)  # today, then yesterday; empty without an orders view
    chart: CallbackChart | None = None
    open_anomalies: int = 0
    latest_anomalies: list[AnomalyEntry] = field(default_factory=list)
    backlog: dict[str, int] = field(default_factory=dict)
    failing_endpoints: list[Endpoint] = field(default_factory=list)
    worklist: tuple[int, int] = (0, 0)
    log_head: int = 0
    lags: dict[str, int] = field(default_factory=dict)
    bills: list[tuple[str, BillReport | None]] = field(default_factory=list)
    view_missing: bool = False


def _day_bounds(day: dt.date) -> tuple[str, str]:
    """The Beijing day as `success_time` texts bound it (see `OrdersView.day_totals`)."""
    return f"{day.isoformat()}T00:00:00+08:00", f"{(day + dt.timedelta(days=1)).isoformat()}T00:00:00+08:00"


class LagCache:
    """Projection lag as /readyz counts it, counted at most every `LAG_FRESH_SECONDS` and never while a
    page waits once it has been counted: a projection far behind (or one whose kinds of event are rare,
    so that everything since its last one is scanned) costs a count of up to 100,000 events, which
    belongs in the background, not in an operator's request."""

    def __init__(self, lag: ProjectionLag, clock: Callable[[], float]) -> None:
        self._lag = lag
        self._clock = clock
        self._lock = threading.Lock()
        self._counting = False
        self._found: tuple[float, int, dict[str, int]] | None = None

    def read(self) -> tuple[float, int, dict[str, int]]:
        """(when counted, log head, lag per projection): counted now the first time, else the last count,
        a new one started in the background when it is older than `LAG_FRESH_SECONDS`."""
        with self._lock:
            found = self._found
            stale = found is None or self._clock() - found[0] > LAG_FRESH_SECONDS
            start = stale and found is not None and not self._counting
            if start:
                self._counting = True
        if found is None:
            return self._count()
        if start:
            threading.Thread(target=self._count, name="overview-lag", daemon=True).start()
        return found

    def _count(self) -> tuple[float, int, dict[str, int]]:
        try:
            at = self._clock()
            head, lags = self._lag.lags()
            found = (at, head, lags)
            with self._lock:
                self._found = found
            return found
        finally:
            with self._lock:
                self._counting = False


class ChartCache:
    """The callbacks chart, drawn again when it is older than `CHART_FRESH_SECONDS`: its counts change
    only as often as the replicas add theirs, and drawing 1,440 minutes of each outcome is most of
    the overview's work."""

    def __init__(self, minutes: CallbackMinutes) -> None:
        self._minutes = minutes
        self._lock = threading.Lock()
        self._drawn: tuple[float, CallbackChart] | None = None

    def read(self, now: float) -> CallbackChart:
        with self._lock:
            drawn = self._drawn
            if drawn is not None and 0 <= now - drawn[0] <= CHART_FRESH_SECONDS:
                return drawn[1]
            self._minutes.flush()  # this replica's latest counts too
            chart = callback_chart(self._minutes.since(int(now // 60) - MINUTES + 1), now)
            self._drawn = (now, chart)
            return chart


def read_overview(state: AppState, lag: LagCache, now: float, chart: ChartCache | None = None) -> Overview:
    """Every figure of the overview at `now` (Unix time); blocking reads, run in a worker thread."""
    services = state.services
    found = Overview()
    view = state.orders_view
    if view is None or view.outdated:
        found.view_missing = True
    else:
        today = beijing_day(now)
        for day in (today, today - dt.timedelta(days=1)):
            found.days.append(Day(day, **view.day_totals(*_day_bounds(day))))
        found.open_anomalies, _ = view.anomaly_totals()
        latest = anomaly_entries(view.with_anomalies(LATEST_ANOMALIES))
        found.latest_anomalies = [e for e in latest if e.open][:LATEST_ANOMALIES]
    minutes = state.notify_metrics.minutes
    if chart is not None:
        found.chart = chart.read(now)
    elif minutes is not None:
        found.chart = ChartCache(minutes).read(now)
    outbox = services.outbox
    found.backlog = backlog(outbox)
    found.failing_endpoints = [e for e in outbox.endpoints.all() if not e.enabled or e.failing_since is not None]
    found.worklist = services.worklist.open_sizes()
    _, found.log_head, found.lags = lag.read()
    last = services.bill_reports.last_reconciled()
    found.bills = [(mchid, last.get(mchid)) for mchid in sorted({*state.merchants, *last})]
    return found


class OverviewPages:
    def __init__(self, pages: OperatorPages, clock: Callable[[], float] = time.time) -> None:
        self._pages = pages
        self._clock = clock
        # Built on the first request: what they read is made by the app's start.
        self._lag: LagCache | None = None
        self._chart: ChartCache | None = None

    def routes(self) -> list[Route]:
        return [Route("/", self._pages.guarded(self.overview), methods=["GET"])]

    async def overview(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        if self._lag is None:
            self._lag = LagCache(request.app.state.projection_lag, self._clock)
        if self._chart is None and state.notify_metrics.minutes is not None:
            self._chart = ChartCache(state.notify_metrics.minutes)
        lag, chart = self._lag, self._chart
        now = self._clock()
        found = await anyio.to_thread.run_sync(lambda: read_overview(state, lag, now, chart), limiter=state.limiter)
        context: dict[str, Any] = {"o": found, "chart_height": HEIGHT, "chart_width": MINUTES}
        return self._pages.page(request, "overview.html", access=access, **context)
