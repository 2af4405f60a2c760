"""`create_app(settings)`: the composition root of the HTTP service."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.auth import AdminTokenMiddleware
from api.bills import get_bill, reconcile_bill
from api.bootstrap import bootstrap
from api.callback_minutes import CallbackMinutes
from api.errors import EXCEPTION_HANDLERS
from api.metrics import (
    BillMetrics,
    DecisionMetrics,
    Guarded,
    NotifyMetrics,
    OutboxMetrics,
    ProjectionLag,
    QueryOutcomes,
    StoreBreaker,
    metrics,
    new_registry,
)
from api.notifications import list_notifications, notification_events
from api.notify import notify
from api.notify_v2 import notify_v2
from api.openapi import OPENAPI_PATH, openapi
from api.orders import get_order, order_events, orders, query_order
from api.refunds import close_order, refund_order
from api.request_id import RequestIdMiddleware
from api.responses import LedgerJSONResponse, fail
from api.state import AppState, app_state
from api.ui.pages import ui_mount
from ledger.application import Ledger
from ledger.settings import Settings
from projections.log_counts import DecisionTally
from projections.read_model.activity import ACTIVITY_VIEW, ActivityProjection
from projections.read_model.notifications import NOTIFICATIONS_VIEW, NotificationsProjection
from projections.read_model.view import ORDERS_VIEW, OrdersProjection
from projections.webhooks.projection import OUTBOX_PROJECTION, OutboxProjection

__all__ = ["create_app"]

log = logging.getLogger("api")


async def healthz(request: Request) -> Response:
    return LedgerJSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the event store answers and no projection is further behind than the bound."""
    state = app_state(request)
    lag: ProjectionLag = request.app.state.projection_lag
    breaker: StoreBreaker = request.app.state.store_breaker
    if breaker.is_open:
        return fail(503, "store unavailable", "NOT_READY")
    try:
        _, lags = await anyio.to_thread.run_sync(lag.lags, limiter=state.limiter)
    except Exception as exc:
        breaker.trip()
        log.warning("readiness check: event store unreachable (%s)", type(exc).__name__)
        return fail(503, "store unavailable", "NOT_READY")
    for name, behind in lags.items():
        if behind > state.settings.ready_max_lag:
            log.warning("readiness check: projection %s lagging %d events", name, behind)
            return fail(503, f"projection {name} is lagging", "NOT_READY")
    # Open to load balancers, so it says ready or not and nothing else: positions and lags are
    # data (the business's volume), at /metrics behind the token.
    return LedgerJSONResponse({"status": "ready"})


def _notification_routes(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> list[Route]:
    """A notification endpoint: for the only merchant configured, and for each by its mchid."""
    return [Route(path, endpoint, methods=["POST"]), Route(f"{path}/{{mchid}}", endpoint, methods=["POST"])]


def create_app(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.time,
    transport: httpx.BaseTransport | None = None,
    background: bool = True,
) -> Starlette:
    """Build the service; the ledger is built from `settings` unless one is given (tests)."""
    services = bootstrap(settings, ledger=ledger, clock=clock, transport=transport)
    services.ledger  # noqa: B018 - built now: a store that cannot be opened stops start-up, not the first callback

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        committer = services.committer
        views = services.orders_view
        outbox_view = services.outbox_view
        notifications_view = services.notifications_view
        activity_view = services.activity_view
        outbox = services.outbox
        # Built here, not by the first request: two first requests at once would race to create its tables.
        bill_reports = services.bill_reports
        callbacks = CallbackMinutes(services.database, clock)
        registry = new_registry()
        app.state.app_state = AppState(
            services,
            committer,
            anyio.CapacityLimiter(settings.worker_threads),
            views,
            NotifyMetrics(registry, callbacks),
        )
        app.state.projection_lag = ProjectionLag(
            services.ledger,
            lambda: {
                ORDERS_VIEW: views.current().position(),
                OUTBOX_PROJECTION: outbox_view.max_tracking_id(Ledger.name) or 0,
                NOTIFICATIONS_VIEW: notifications_view.current().position(),
                ACTIVITY_VIEW: activity_view.current().position(),
            },
            {
                ORDERS_VIEW: OrdersProjection.topics,
                OUTBOX_PROJECTION: OutboxProjection.topics,
                NOTIFICATIONS_VIEW: NotificationsProjection.topics,
                ACTIVITY_VIEW: ActivityProjection.topics,
            },
            exact_up_to=max(100_000, settings.ready_max_lag + 1),
        )
        breaker = app.state.store_breaker = StoreBreaker()
        registry.register(QueryOutcomes(services.query))
        for name, collector in (
            ("projection lag", app.state.projection_lag),
            ("decisions", DecisionMetrics(DecisionTally(services.ledger))),
            ("outbox", OutboxMetrics(outbox)),
            ("bills", BillMetrics(bill_reports, sorted(services.merchants))),
        ):
            registry.register(Guarded(name, collector, breaker))  # read from the store: skipped while it is down
        app.state.metrics = registry
        if background:
            services.start_background()
        stop_flushing = threading.Event()
        flusher = threading.Thread(target=callbacks.run, args=(stop_flushing,), name="callback-minutes", daemon=True)
        flusher.start()
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise rescan it on every one of them.
        gc.collect()
        gc.freeze()
        yield
        stop_flushing.set()
        flusher.join(timeout=30)
        services.close()

    middleware = [Middleware(RequestIdMiddleware)]
    if settings.admin_token is not None:
        middleware.append(Middleware(AdminTokenMiddleware, token=settings.admin_token.value))
    # The notification routes first: they take nearly all the traffic.
    routes = [
        *_notification_routes("/wechatpay/notify", notify),
        *_notification_routes("/wechatpay/v2/notify", notify_v2),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/orders", orders, methods=["GET", "POST"]),
        Route("/orders/{out_trade_no}", get_order, methods=["GET"]),
        Route("/orders/{out_trade_no}/events", order_events, methods=["GET"]),
        Route("/orders/{out_trade_no}/query", query_order, methods=["POST"]),
        Route("/orders/{out_trade_no}/refunds", refund_order, methods=["POST"]),
        Route("/orders/{out_trade_no}/close", close_order, methods=["POST"]),
        Route("/notifications", list_notifications, methods=["GET"]),
        Route("/notifications/{notification_id}/events", notification_events, methods=["GET"]),
        Route("/bills/{bill_date}", get_bill, methods=["GET"]),
        Route("/bills/{bill_date}/reconcile", reconcile_bill, methods=["POST"]),
        Route(OPENAPI_PATH, openapi, methods=["GET"]),
        ui_mount(settings, clock=clock),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )
