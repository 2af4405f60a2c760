"""`POST /wechatpay/v2/notify[/{mchid}]`: legacy APIv2 XML notifications ([protocol: Legacy APIv2 XML]).

The raw body is read as an APIv3 one is (the same size limit and deadline); `parse_v2_notification`
checks it before anything else (size, hostile XML, `return_code`, then a payment's sign or a
refund's `req_info`). A notification that passes is recorded as a delivery in the order's stream,
the same stream an APIv3 notification of that order goes to, through the same group committer
([protocol: APIv2 as APIv3]); only after the commit is it answered HTTP 200 with exactly
`answer_xml(True)`. Every answer is XML: a refusal has the status an APIv3 one would have and
`answer_xml(False, <its fixed reason>)`, and is counted and logged like one.

A refund's `req_info` carries no signature, so its delivery decides nothing. Once the delivery is
stored and answered, the refund is confirmed by a refund query, in the background so that WeChat's
answer never waits for WeChat; the verified answer decides it. When that query fails, the refund
stays unconfirmed until the reconciler confirms it (`payledger reconcile`, docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ErrorAnswer, answer_for
from api.notify import commit_delivery, log_refusal, notified_mchid, receive
from api.state import AppState, app_state
from ledger.application import v2_evidence
from ledger.domain import PaymentOrder
from ledger.errors import (
    LedgerError,
    NotificationRejected,
    OrderNotFound,
    V2DecryptionFailed,
    V2SignInvalid,
    WeChatPayError,
)
from ledger.identity import orders_named
from ledger.wechatpay.v2 import answer_xml, parse_v2_notification

__all__ = ["confirm_refund", "notify_v2"]

log = logging.getLogger("api.notify")
XML = "text/xml"
SUCCESS = answer_xml(True)


def _xml(answer: ErrorAnswer, exc: BaseException) -> Response:
    """A failure as WeChat reads an APIv2 one: the class's fixed reason in a FAIL answer, never exception text."""
    response = Response(answer_xml(False, answer.message(exc)), status_code=answer.status, media_type=XML)
    if answer.closes:
        response.headers["connection"] = "close"
    return response


def _refused(exc: NotificationRejected, mchid: str | None, state: AppState, started: float) -> Response:
    """Log a refusal as APIv3's are logged (a req_info that does not decrypt: our APIv2 key), count it, answer it."""
    answer = answer_for(exc)
    if isinstance(exc, V2DecryptionFailed):
        log.error(
            "APIv2 REFUND NOTIFICATION DOES NOT DECRYPT for mchid=%s: WECHATPAY_V2_KEY is wrong or was reset; "
            "WeChat will retry, fix the key now",
            mchid,
            extra={"outcome": answer.outcome},
        )
    else:
        log_refusal(exc, answer, mchid, state)
    state.notify_metrics.answered(answer.outcome, started)
    return _xml(answer, exc)


async def notify_v2(request: Request) -> Response:
    state = app_state(request)
    started = time.perf_counter()
    mchid = notified_mchid(request, state)
    try:
        merchant, body = await receive(request, state, mchid)
        key = merchant.settings.v2_key
        if key is None:  # nothing can be verified: answered as a sign that does not verify
            unverifiable = V2SignInvalid("no APIv2 key configured for this merchant")
            answer = answer_for(unverifiable)
            log.error(
                "APIv2 notification for mchid=%s, which has no WECHATPAY_V2_KEY: it cannot be verified",
                mchid,
                extra={"outcome": answer.outcome},
            )
            state.notify_metrics.answered(answer.outcome, started)
            return _xml(answer, unverifiable)
        notification = parse_v2_notification(body, key.value, max_bytes=state.max_body_bytes)
    except NotificationRejected as exc:
        return _refused(exc, mchid, state, started)

    evidence = v2_evidence(notification)
    result = await commit_delivery(state, merchant, evidence, what="APIv2 notification", status=200, started=started)
    if isinstance(result, tuple):
        failure, why = result
        state.notify_metrics.answered(failure.outcome, started)
        return _xml(failure, why)
    confirm = None
    if notification.kind == "refund" and result.routed_to_order:
        confirm = BackgroundTask(_confirm_in_background, state, merchant.mchid, evidence.resource)
    return Response(SUCCESS, status_code=200, media_type=XML, background=confirm)


def confirm_refund(state: AppState, mchid: str, resource: dict[str, Any]) -> PaymentOrder | None:
    """Confirm the refund an APIv2 refund delivery of merchant `mchid` names by a refund query, unless its
    order already holds a final decision about it; None when there was nothing to ask. Raises
    `WeChatPayError` when the query fails or cannot be trusted (nothing is recorded then)."""
    keys = orders_named(mchid, resource)
    out_refund_no = resource.get("out_refund_no")
    if not keys or not isinstance(out_refund_no, str) or not out_refund_no:
        return None
    key = keys[0]
    try:
        order = state.ledger.get_order(key.mchid, key.out_trade_no, key.sub_mchid)
    except OrderNotFound:
        return None
    if order.refunds.get(out_refund_no, {}).get("status") in PaymentOrder.FINAL_REFUND_STATES:
        return order
    return state.services.query.refund(key.mchid, key.out_trade_no, out_refund_no, sub_mchid=key.sub_mchid)


async def _confirm_in_background(state: AppState, mchid: str, resource: dict[str, Any]) -> None:
    """After the answer: a failure here changes nothing stored, and the reconciler will ask again."""
    try:
        await anyio.to_thread.run_sync(confirm_refund, state, mchid, resource, limiter=state.limiter)
    except WeChatPayError as exc:
        log.warning(
            "APIv2 refund %s not confirmed now (%s); the reconciler will ask again",
            resource.get("out_refund_no"),
            exc.reason,
        )
    except LedgerError as exc:
        log.warning("APIv2 refund %s not confirmed now (%s)", resource.get("out_refund_no"), exc.reason)
    except Exception as exc:
        log.error("APIv2 refund confirmation failed: unexpected %s", type(exc).__name__, exc_info=exc)
