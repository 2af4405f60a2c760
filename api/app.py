"""`create_app(settings)`: the composition root of the HTTP service."""

from __future__ import annotations

import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from api.metrics import (
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
from api.notify import notify
from api.openapi import OPENAPI_PATH, openapi
from api.orders import get_order, order_events, orders, query_order
from api.request_id import RequestIdMiddleware
from api.responses import LedgerJSONResponse, fail
from api.state import AppState, LiveView
from api.ui.pages import ui_mount
from ledger.application import Ledger
from ledger.bootstrap import bootstrap
from ledger.errors import InvalidRequest, LedgerError, WeChatPayRejected
from ledger.groupcommit import GroupCommitter
from ledger.settings import Settings
from ledger.store.sql import Database
from projections.log_counts import DecisionTally
from projections.read_model.view import NAME as ORDERS_VIEW
from projections.read_model.view import OrdersProjection
from projections.webhooks.outbox import Outbox
from projections.webhooks.projection import NAME as OUTBOX
from projections.webhooks.projection import OutboxProjection, open_outbox_view
from projections.webhooks.schema import outbox_url

__all__ = ["create_app"]

log = logging.getLogger("api")

_ERROR_CODES = {400: "INVALID_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 409: "CONFLICT"}
_ROUTING_ERRORS = {404: ("NOT_FOUND", "not found"), 405: ("METHOD_NOT_ALLOWED", "method not allowed")}


async def healthz(request: Request) -> Response:
    return LedgerJSONResponse({"status": "ok"})


def _is_open(path: str) -> bool:
    return path in ("/healthz", "/readyz", "/wechatpay/notify", OPENAPI_PATH) or path.startswith("/wechatpay/notify/")


def _is_ui(path: str) -> bool:
    """The operator pages check the token or a login session themselves (api/ui/auth.py)."""
    return path == "/ui" or path.startswith("/ui/")


async def readyz(request: Request) -> Response:
    """Ready when the event store answers and no projection is further behind than the bound."""
    state: AppState = request.app.state.ledger
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


class AdminTokenMiddleware:
    """With `LEDGER_ADMIN_TOKEN` set, everything but notifications and /healthz needs it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_open(scope["path"]) and not _is_ui(scope["path"]):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                answer = fail(401, "missing or wrong admin token", "UNAUTHORIZED")
                answer.headers["www-authenticate"] = "Bearer"
                await answer(scope, receive, send)
                return
        await self._app(scope, receive, send)


async def _ledger_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LedgerError)
    code = "FAIL" if request.url.path.startswith("/wechatpay/") else _ERROR_CODES.get(exc.status_code, "FAIL")
    # Our own API explains what was wrong with the request; everything else gets the fixed reason.
    message = str(exc) if isinstance(exc, InvalidRequest) else exc.reason
    if isinstance(exc, WeChatPayRejected) and exc.code:
        message = f"{exc.reason}: {exc.code}"
    return fail(exc.status_code, message, code)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing failures (no such path, method not allowed) in the same JSON shape as every other answer."""
    assert isinstance(exc, HTTPException)
    code, message = _ROUTING_ERRORS.get(exc.status_code, ("FAIL", "invalid request"))
    answer = fail(exc.status_code, message, code)
    answer.headers.update(exc.headers or {})
    return answer


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return fail(500, "internal error")


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

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        committer = GroupCommitter(services.ledger)
        views = LiveView(settings.database_url.value)
        outbox_view = open_outbox_view(settings.database_url.value)
        outbox_database = Database(outbox_url(settings.database_url.value))
        outbox = Outbox(outbox_database)
        registry = new_registry()
        app.state.ledger = AppState(
            services, committer, anyio.CapacityLimiter(settings.worker_threads), views, NotifyMetrics(registry)
        )
        app.state.projection_lag = ProjectionLag(
            services.ledger,
            lambda: {
                ORDERS_VIEW: views.current().position(),
                OUTBOX: outbox_view.max_tracking_id(Ledger.name) or 0,
            },
            {ORDERS_VIEW: OrdersProjection.topics, OUTBOX: OutboxProjection.topics},
            exact_up_to=max(100_000, settings.ready_max_lag + 1),
        )
        breaker = app.state.store_breaker = StoreBreaker()
        registry.register(QueryOutcomes(services.query))
        registry.register(Guarded("projection lag", app.state.projection_lag, breaker))
        registry.register(Guarded("decisions", DecisionMetrics(DecisionTally(services.ledger)), breaker))
        registry.register(Guarded("outbox", OutboxMetrics(outbox), breaker))
        app.state.metrics = registry
        if background:
            services.start_background()
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise rescan it on every one of them.
        gc.collect()
        gc.freeze()
        yield
        committer.close()
        services.close()
        views.close()
        outbox_database.close()
        outbox_view.datastore.close()

    middleware = [Middleware(RequestIdMiddleware)]
    if settings.admin_token is not None:
        middleware.append(Middleware(AdminTokenMiddleware, token=settings.admin_token.value))
    # The notification routes first: they take nearly all the traffic.
    routes = [
        Route("/wechatpay/notify", notify, methods=["POST"]),
        Route("/wechatpay/notify/{mchid}", notify, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/orders", orders, methods=["GET", "POST"]),
        Route("/orders/{out_trade_no}", get_order, methods=["GET"]),
        Route("/orders/{out_trade_no}/events", order_events, methods=["GET"]),
        Route("/orders/{out_trade_no}/query", query_order, methods=["POST"]),
        Route(OPENAPI_PATH, openapi, methods=["GET"]),
        ui_mount(settings),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={LedgerError: _ledger_error, HTTPException: _http_error, Exception: _unexpected},
    )
