"""Refunds and closes asked through the ledger ([protocol: Creating a refund], [protocol: Closing an order]).

`POST /orders/{out_trade_no}/refunds` decides against the order's replayed state, records the request
before anything is sent, sends it once and records WeChat's answer (`ledger.refunding`):

* 201 — WeChat accepted it (the refund as recorded; its outcome comes by notification or query);
* 202 — the outcome is unknown (timeout, connection lost, 5xx): recorded, reconciliation asks WeChat;
* 409 — refused before any call (not paid, more than is left, the number asked with another body);
* 502 — WeChat refused it with a code (``NOT_ENOUGH``, ...): recorded as `RefundRejected`.

The same body again answers what was recorded, without a second call. `POST /orders/{no}/close`
closes an unpaid order (409 once it is paid).
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from api.params import json_object_body, mchid_param, out_trade_no_param, sub_mchid_param
from api.responses import LedgerJSONResponse
from api.state import app_state
from ledger.errors import InvalidRequest
from ledger.identity import OrderKey

__all__ = ["MAX_REFUND_BODY", "close_order", "refund_order"]

MAX_REFUND_BODY = 4 * 1024
_REFUND_FIELDS = {"out_refund_no", "amount", "reason", "mchid", "sub_mchid"}
_STATUS = {"accepted": 201, "unknown": 202, "rejected": 502}
API_CALLER = "api"  # who asked, in the order's history, when the admin token's holder asked


def _order_key(request: Request, body: dict[str, Any]) -> OrderKey:
    state = app_state(request)
    out_trade_no = out_trade_no_param(request.path_params["out_trade_no"])
    mchid = mchid_param(state, body.get("mchid", request.query_params.get("mchid")))
    sub_mchid = sub_mchid_param(state, mchid, body.get("sub_mchid", request.query_params.get("sub_mchid")))
    return OrderKey(mchid, out_trade_no, sub_mchid)


async def refund_order(request: Request) -> Response:
    state = app_state(request)
    body = await json_object_body(request, MAX_REFUND_BODY, _REFUND_FIELDS, empty_is_none=True)
    out_refund_no, amount, reason = body.get("out_refund_no"), body.get("amount"), body.get("reason", "")
    if not isinstance(out_refund_no, str):
        raise InvalidRequest("out_refund_no is required: your refund number")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidRequest("amount must be a positive integer in fen")
    if not isinstance(reason, str):
        raise InvalidRequest("reason must be a string")
    key = _order_key(request, body)
    asked = await anyio.to_thread.run_sync(
        lambda: state.services.requester.refund(
            key, out_refund_no=out_refund_no, amount=amount, reason=reason, requested_by=API_CALLER
        ),
        limiter=state.limiter,
    )
    answer: dict[str, Any] = {"refund": asked.record, "order": asked.order.summary()}
    if asked.outcome == "rejected":
        code = asked.record["code"]
        answer = {"code": "FAIL", "message": f"WeChat Pay refused the refund ({code})", "wechat_code": code, **answer}
    return LedgerJSONResponse(answer, status_code=_STATUS[asked.outcome])


async def close_order(request: Request) -> Response:
    state = app_state(request)
    body = await json_object_body(request, MAX_REFUND_BODY, None, empty_is_none=True)
    key = _order_key(request, body)
    order, _ = await anyio.to_thread.run_sync(
        lambda: state.services.requester.close(key, requested_by=API_CALLER), limiter=state.limiter
    )
    return LedgerJSONResponse(order.summary())
