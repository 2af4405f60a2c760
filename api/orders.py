"""Orders: registration, current state, and the full audit history.

An order is (mchid, sub_mchid, out_trade_no) ([protocol: Service providers]): a service provider's
(WECHATPAY_MODE=partner) orders each name their sub-merchant (`sub_mchid` in the body of
`POST /orders`, `?sub_mchid=` on the routes of one order); a direct merchant's never do.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from api.bills import bill_figures
from api.params import (
    combine_out_trade_no_param,
    json_object_body,
    mchid_param,
    order_merchant,
    out_trade_no_param,
    sub_mchid_param,
    sub_mchid_value,
)
from api.responses import LedgerJSONResponse
from api.state import app_state
from ledger.domain import ALL_EVENTS, FINAL_TRADE_STATES, OPEN_TRADE_STATES
from ledger.errors import InvalidRequest, OrderNotFound, ReadModelOutdated
from projections.read_model.current import current_copy
from projections.read_model.view import cursor_decode, cursor_encode

__all__ = [
    "EVENT_TYPES",
    "get_order",
    "list_orders",
    "order_events",
    "orders",
    "query_order",
    "register_order",
]

CURRENCY = re.compile(r"[A-Z]{3}")
_REGISTER_FIELDS = {
    "out_trade_no",
    "amount_total",
    "currency",
    "mchid",
    "sub_mchid",
    "combine_out_trade_no",
    "description",
}
MAX_REGISTER_BODY = 16 * 1024
TRADE_STATES = OPEN_TRADE_STATES | FINAL_TRADE_STATES


# Every event a PaymentOrder stream can hold, by the name the events API shows.
EVENT_TYPES = frozenset(cls.__name__ for cls in ALL_EVENTS)


def _version_param(request: Request, name: str, *, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) < minimum:
        raise InvalidRequest(f"{name} must be an integer of at least {minimum}")
    return int(raw)


def _types_param(request: Request) -> list[str] | None:
    raw = request.query_params.get("type")
    if raw is None:
        return None
    types = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = sorted(set(types) - EVENT_TYPES)
    if not types or unknown:
        known = ", ".join(sorted(EVENT_TYPES))
        raise InvalidRequest(f"type must be comma-separated event types ({known})")
    return types


async def register_order(request: Request) -> Response:
    state = app_state(request)
    body = await json_object_body(request, MAX_REGISTER_BODY, _REGISTER_FIELDS)
    out_trade_no = out_trade_no_param(body.get("out_trade_no"))
    amount = body.get("amount_total")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidRequest("amount_total must be a positive integer in fen")
    currency = body.get("currency", "CNY")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        raise InvalidRequest("currency must be a 3-letter code such as CNY")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 127:
        raise InvalidRequest("description must be a string of at most 127 characters")
    if "mchid" in body and not isinstance(body["mchid"], str):
        raise InvalidRequest("mchid must be a string")
    mchid = mchid_param(state, body.get("mchid"))
    sub_mchid = sub_mchid_param(state, mchid, body.get("sub_mchid"), registering=True)
    combine_out_trade_no = combine_out_trade_no_param(body.get("combine_out_trade_no"))
    order, created = await anyio.to_thread.run_sync(
        lambda: state.ledger.register_order(
            mchid,
            out_trade_no,
            amount,
            currency,
            description,
            sub_mchid=sub_mchid,
            combine_out_trade_no=combine_out_trade_no,
        ),
        limiter=state.limiter,
    )
    return LedgerJSONResponse(order.summary(), status_code=201 if created else 200)


async def orders(request: Request) -> Response:
    """`/orders`: one route for both methods, so a 405 there lists both in `Allow`."""
    if request.method == "POST":
        return await register_order(request)
    return await list_orders(request)


async def get_order(request: Request) -> Response:
    """Read-your-writes: from the read model when its copy of the order has every event of the
    order's stream, else from the stream.

    `?as_of_version=N` replays the stream up to event N instead (404 beyond the current version).
    Either way the order carries its bill fee and net amount as the bills kept today say them.
    """
    state = app_state(request)
    out_trade_no = request.path_params["out_trade_no"]
    mchid, sub_mchid = order_merchant(state, request.query_params)
    as_of = _version_param(request, "as_of_version", minimum=1)

    def read() -> dict[str, Any]:
        if as_of is not None:
            return state.ledger.order_as_of(mchid, out_trade_no, as_of, sub_mchid).summary()
        # The view's copy when it has every event of the order's stream, else the stream replayed.
        newest, document = current_copy(state.orders_view, state.ledger, mchid, out_trade_no, sub_mchid)
        if newest is None:
            raise OrderNotFound(out_trade_no)
        if document is not None:
            return document
        return state.ledger.get_order(mchid, out_trade_no, sub_mchid).summary()

    def read_with_fees() -> dict[str, Any]:
        order = read()
        return {**order, **bill_figures(state.services.bill_lines, mchid, order)}

    return LedgerJSONResponse(await anyio.to_thread.run_sync(read_with_fees, limiter=state.limiter))


def _time_param(request: Request, name: str) -> float | None:
    """An ISO 8601 time (a trailing Z allowed), as a POSIX timestamp."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidRequest(f"{name} must be an ISO 8601 time") from None


async def list_orders(request: Request) -> Response:
    """`GET /orders?trade_state=&mchid=&sub_mchid=&since=&until=&limit=&cursor=` from the read model."""
    state = app_state(request)
    view = state.orders_view
    if view is None:
        raise InvalidRequest("the read model is not configured")
    if view.outdated:
        raise ReadModelOutdated(view.table_prefix)
    params = request.query_params
    try:
        limit = int(params.get("limit", "50"))
    except ValueError:
        raise InvalidRequest("limit must be an integer") from None
    if not 1 <= limit <= 500:
        raise InvalidRequest("limit must be between 1 and 500")
    trade_state = params.get("trade_state") or None
    if trade_state is not None and trade_state not in TRADE_STATES:
        raise InvalidRequest("unknown trade_state")
    after = None
    if params.get("cursor"):
        try:
            after = cursor_decode(params["cursor"])
        except ValueError:
            raise InvalidRequest("bad cursor") from None
    since, until = _time_param(request, "since"), _time_param(request, "until")
    mchid = params.get("mchid") or None
    sub_mchid = sub_mchid_value(params.get("sub_mchid"))

    def read() -> dict[str, Any]:
        log_position = state.ledger.recorder.max_notification_id() or 0
        position = view.position()
        rows = view.list_orders(
            mchid=mchid,
            sub_mchid=sub_mchid,
            trade_state=trade_state,
            since=since,
            until=until,
            after=after,
            limit=limit,
        )
        return {
            "orders": [row["document"] for row in rows],
            "next_cursor": cursor_encode(rows[-1]) if len(rows) == limit else None,
            "view": {"position": position, "log_position": log_position, "behind": max(0, log_position - position)},
        }

    return LedgerJSONResponse(await anyio.to_thread.run_sync(read, limiter=state.limiter))


async def order_events(request: Request) -> Response:
    """`?type=A,B` keeps those event types; `?since_version=N` keeps versions above N (exclusive)."""
    state = app_state(request)
    out_trade_no = request.path_params["out_trade_no"]
    mchid, sub_mchid = order_merchant(state, request.query_params)
    since = _version_param(request, "since_version", minimum=0) or 0
    types = _types_param(request)
    events = await anyio.to_thread.run_sync(
        lambda: state.ledger.order_events(mchid, out_trade_no, since_version=since, types=types, sub_mchid=sub_mchid),
        limiter=state.limiter,
    )
    return LedgerJSONResponse(
        {
            "out_trade_no": out_trade_no,
            "mchid": mchid,
            "sp_mchid": mchid if sub_mchid is not None else None,
            "sub_mchid": sub_mchid,
            "events": events,
        }
    )


async def query_order(request: Request) -> Response:
    """Ask WeChat Pay now; 200 with the updated order, 502 when its answer failed or is untrusted."""
    state = app_state(request)
    out_trade_no = out_trade_no_param(request.path_params["out_trade_no"])
    mchid, sub_mchid = order_merchant(state, request.query_params)
    order = await anyio.to_thread.run_sync(
        lambda: state.services.query_order(mchid, out_trade_no, sub_mchid), limiter=state.limiter
    )
    return LedgerJSONResponse(order.summary())
