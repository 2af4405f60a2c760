"""Orders: registration, current state, and the full audit history."""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from api.responses import LedgerJSONResponse
from api.state import AppState
from ledger.domain import PaymentOrder
from ledger.errors import InvalidRequest

__all__ = ["get_order", "order_events", "order_to_dict", "query_order", "register_order"]

OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*@]{6,32}")
CURRENCY = re.compile(r"[A-Z]{3}")
_REGISTER_FIELDS = {"out_trade_no", "amount_total", "currency", "mchid", "description"}
MAX_REGISTER_BODY = 16 * 1024


def order_to_dict(order: PaymentOrder) -> dict[str, Any]:
    return {
        "out_trade_no": order.out_trade_no,
        "mchid": order.mchid,
        "registered": order.registered,
        "trade_state": order.trade_state,
        "amount_total": order.amount_total,
        "currency": order.currency,
        "description": order.description,
        "transaction_id": order.transaction_id,
        "success_time": order.success_time,
        "paid_total": order.paid_total,
        "payer_total": order.payer_total,
        "refunded_total": order.refunded_total,
        "refunds": sorted(order.refunds.values(), key=lambda r: r["out_refund_no"]),
        "anomalies": order.anomalies,
        "deliveries": order.deliveries,
        "version": order.version,
    }


def _mchid(state: AppState, given: Any) -> str:
    if given is None or given == "":
        if len(state.merchants) != 1 or state.default_mchid is None:
            raise InvalidRequest("mchid is required when several merchants are configured")
        return state.default_mchid
    if not isinstance(given, str) or given not in state.merchants:
        raise InvalidRequest("unknown mchid")
    return given


def _out_trade_no(value: Any) -> str:
    if not isinstance(value, str) or not OUT_TRADE_NO.fullmatch(value):
        raise InvalidRequest("out_trade_no must be 6-32 characters of letters, digits, _-|*@")
    return value


async def register_order(request: Request) -> Response:
    state: AppState = request.app.state.ledger
    raw = await request.body()
    if len(raw) > MAX_REGISTER_BODY:
        raise InvalidRequest("body too large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    unknown = sorted(set(body) - _REGISTER_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:40]!r}")
    out_trade_no = _out_trade_no(body.get("out_trade_no"))
    amount = body.get("amount_total")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidRequest("amount_total must be a positive integer in fen")
    currency = body.get("currency", "CNY")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        raise InvalidRequest("currency must be a 3-letter code such as CNY")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 127:
        raise InvalidRequest("description must be a string of at most 127 characters")
    mchid = _mchid(state, body.get("mchid"))
    order, created = await anyio.to_thread.run_sync(
        lambda: state.ledger.register_order(mchid, out_trade_no, amount, currency, description),
        limiter=state.limiter,
    )
    return LedgerJSONResponse(order_to_dict(order), status_code=201 if created else 200)


async def get_order(request: Request) -> Response:
    state: AppState = request.app.state.ledger
    out_trade_no = request.path_params["out_trade_no"]
    mchid = _mchid(state, request.query_params.get("mchid"))
    order = await anyio.to_thread.run_sync(lambda: state.ledger.get_order(mchid, out_trade_no), limiter=state.limiter)
    return LedgerJSONResponse(order_to_dict(order))


async def order_events(request: Request) -> Response:
    state: AppState = request.app.state.ledger
    out_trade_no = request.path_params["out_trade_no"]
    mchid = _mchid(state, request.query_params.get("mchid"))
    events = await anyio.to_thread.run_sync(
        lambda: state.ledger.order_history(mchid, out_trade_no), limiter=state.limiter
    )
    return LedgerJSONResponse({"out_trade_no": out_trade_no, "mchid": mchid, "events": events})


async def query_order(request: Request) -> Response:
    """Ask WeChat Pay now; 200 with the updated order, 502 when its answer failed or is untrusted."""
    state: AppState = request.app.state.ledger
    out_trade_no = _out_trade_no(request.path_params["out_trade_no"])
    mchid = _mchid(state, request.query_params.get("mchid"))
    order = await anyio.to_thread.run_sync(lambda: state.services.query(mchid, out_trade_no), limiter=state.limiter)
    return LedgerJSONResponse(order_to_dict(order))
