"""Refunds and closes asked through the ledger: decided, recorded, sent once ([protocol: Creating a refund],
[protocol: Closing an order]).

`OrderRequests` (`ledger.order_requests`) decides and records; this sends. A refund:

1. `ask_refund` against the order as it stands, appended write-ahead as `RefundRequested` (a version
   conflict re-decides against the newer state, so two requests that together exceed what is left
   are never both sent); the same request again is answered as recorded, nothing sent;
2. the recorded body is sent (`POST /v3/refund/domestic/refunds`, signed, the answer verified);
3. the answer is recorded: accepted (`RefundAnswered`), refused with a code (`RefundRejected`), or,
   when no answer can be trusted (timeout, connection lost, 5xx after the client's tries, an answer
   that does not verify), `RefundAnswered` with outcome ``unknown``: the refund reconciler then asks
   WeChat about it by refund query until its outcome is decided.

What WeChat then decides (the refund notification or a refund query) is recorded as for any refund.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ledger.application import Ledger
from ledger.domain import PaymentOrder
from ledger.errors import InvalidRequest, RequestRefused, WeChatPayError, WeChatPayRejected
from ledger.identity import OrderKey
from ledger.order_requests import REFUND_REASON_LIMIT
from ledger.wechatpay.client import WeChatPayResponse
from ledger.wechatpay.refunds import OUT_REFUND_NO, RefundAnswer, RefundRequest

__all__ = ["OrderRequester", "RefundOutcome", "RequestClient"]

log = logging.getLogger("ledger.requests")

RefundOutcome = Literal["accepted", "unknown", "rejected"]


class RequestClient(Protocol):
    """What asking needs of `ledger.wechatpay.client.WeChatPayClient`."""

    def create_refund(self, request: RefundRequest) -> RefundAnswer: ...

    def close_order(self, out_trade_no: str, *, sub_mchid: str | None = None) -> WeChatPayResponse: ...

    def close_combined(
        self, combine_out_trade_no: str, *, combine_appid: str, sub_orders: Sequence[tuple[str, str | None]]
    ) -> WeChatPayResponse: ...


@dataclass(frozen=True)
class RefundAsked:
    """A refund request as recorded: what the API answers (201 accepted, 202 unknown, 502 rejected)."""

    order: PaymentOrder
    out_refund_no: str
    sent: bool  # False: the same request was recorded before; nothing was sent now

    @property
    def record(self) -> dict[str, Any]:
        asked = self.order.refund_record(self.out_refund_no)
        decided = self.order.refunds.get(self.out_refund_no)
        return {**asked, "decided": decided["status"] if decided else None}

    @property
    def outcome(self) -> RefundOutcome:
        outcome = self.order.refund_requests[self.out_refund_no]["outcome"]
        return "accepted" if outcome == "accepted" else "rejected" if outcome == "rejected" else "unknown"


class OrderRequester:
    """Asks WeChat Pay to refund or close an order on the ledger's behalf; thread-safe."""

    def __init__(
        self,
        ledger: Ledger,
        client_for: Callable[[str], RequestClient],
        *,
        notify_url: Callable[[str], str | None] = lambda mchid: None,
        combined: Callable[[str, str], list[OrderKey]] = lambda mchid, combine_out_trade_no: [],
        appid: Callable[[str], str | None] = lambda mchid: None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._ledger = ledger
        self._client_for = client_for
        self._notify_url = notify_url
        self._combined = combined  # (mchid, combine_out_trade_no) -> the sub-orders registered with it
        self._appid = appid
        self._clock = clock

    def refund(
        self,
        key: OrderKey,
        *,
        out_refund_no: str,
        amount: int,
        reason: str = "",
        requested_by: str,
    ) -> RefundAsked:
        """Ask a refund of the order `key` (see the module's docstring). `RequestRefused` or
        `RequestConflict` (nothing sent) when it may not be asked."""
        _check_refund_fields(out_refund_no, reason)
        client = self._client_for(key.mchid)
        now = self._clock()
        order, send = self._ledger.change_order(
            key,
            lambda o: o.ask_refund(
                out_refund_no=out_refund_no,
                refund=amount,
                reason=reason,
                requested_by=requested_by,
                notify_url=self._notify_url(key.mchid),
                requested_at=now,
            ),
        )
        if not send and order.refund_requests[out_refund_no]["outcome"] != "unknown":
            return RefundAsked(order, out_refund_no, sent=False)
        # New, or asked before with no answer to trust: the recorded body is sent, the same bytes' content
        # every time (WeChat answers a repeated out_refund_no with the refund it made, never a second one).
        request = RefundRequest.from_fields(order.refund_request(out_refund_no))
        answer: dict[str, Any]
        try:
            response = client.create_refund(request)
        except WeChatPayRejected as exc:
            log.warning("refund %s of %s mchid=%s refused: %s", out_refund_no, key.out_trade_no, key.mchid, exc.code)
            refusal = {"status_code": exc.status, "code": exc.code, "message": exc.message}
            order, _ = self._ledger.change_order(
                key,
                lambda o: o.record_refund_rejection(
                    out_refund_no, **refusal, raw_body="", request_id="", answered_at=self._clock()
                ),
            )
            return RefundAsked(order, out_refund_no, sent=True)
        except WeChatPayError as exc:
            # Sent, perhaps received: the outcome is WeChat's to tell, by refund query.
            log.warning(
                "refund %s of %s mchid=%s: outcome unknown (%s)", out_refund_no, key.out_trade_no, key.mchid, exc.reason
            )
            answer = _unknown(exc.reason, self._clock())
        else:
            answer = _accepted(response)
            log.info(
                "refund %s of %s mchid=%s accepted: %s", out_refund_no, key.out_trade_no, key.mchid, answer["status"]
            )
        order, _ = self._ledger.change_order(key, lambda o: o.record_refund_answer(out_refund_no, **answer))
        return RefundAsked(order, out_refund_no, sent=True)

    def close(self, key: OrderKey, *, requested_by: str) -> tuple[PaymentOrder, bool]:
        """Close the unpaid order `key`: (the order, whether a close was sent now). `RequestRefused` when
        it is paid; `WeChatPayRejected` as WeChat answers. A sub-order of a combined payment is closed
        with its whole combination, as WeChat closes one: every sub-order registered with it must be
        unpaid, and each records the close."""
        order = self._ledger.get_order_by_id(key.stream_id, key.out_trade_no)
        if not order.check_closable():
            return order, False
        client = self._client_for(key.mchid)
        combination = order.combine_out_trade_no
        if combination is None:
            response = client.close_order(key.out_trade_no, sub_mchid=key.sub_mchid)
            closing = [key]
        else:
            siblings = [k for k in self._combined(key.mchid, combination) if k != key]
            closing = [key, *dict.fromkeys(siblings)]
            for sibling in closing:  # refused before any call when one of them is paid
                self._ledger.get_order_by_id(sibling.stream_id, sibling.out_trade_no).check_closable()
            appid = self._appid(key.mchid)
            if not appid:
                raise RequestRefused("closing a combined payment needs the merchant's WECHATPAY_APPID (combine_appid)")
            sub_orders = [(sibling.out_trade_no, sibling.sub_mchid) for sibling in closing]
            response = client.close_combined(combination, combine_appid=appid, sub_orders=sub_orders)
        for closed in closing:
            order, _ = self._ledger.change_order(
                closed,
                lambda o: o.close(
                    requested_by=requested_by,
                    status_code=response.status_code,
                    request_id=response.request_id or "",
                    closed_at=response.received_at,
                ),
            )
            log.info("closed %s mchid=%s (asked by %s)", closed.out_trade_no, closed.mchid, requested_by)
        return self._ledger.get_order_by_id(key.stream_id, key.out_trade_no), True


def _check_refund_fields(out_refund_no: str, reason: str) -> None:
    """[protocol: Creating a refund]: out_refund_no is 1-64 of [A-Za-z0-9_-|*@]; reason at most 80 characters."""
    if not OUT_REFUND_NO.fullmatch(out_refund_no):
        raise InvalidRequest("out_refund_no must be 1 to 64 letters, digits or _-|*@")
    if len(reason) > REFUND_REASON_LIMIT:
        raise InvalidRequest(f"reason must be at most {REFUND_REASON_LIMIT} characters")


def _accepted(response: RefundAnswer) -> dict[str, Any]:
    return {
        "outcome": "accepted",
        "status_code": response.status_code,
        "raw_body": response.raw_body,
        "response_headers": dict(response.headers),
        "request_id": response.request_id,
        "refund_id": response.refund_id,
        "status": response.status,
        "detail": "",
        "answered_at": response.received_at,
    }


def _unknown(detail: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "outcome": "unknown",
        "status_code": 0,
        "raw_body": "",
        "response_headers": {},
        "request_id": "",
        "refund_id": "",
        "status": "",
        "detail": detail,
        "answered_at": at,
    }
