"""What the ledger asks WeChat Pay about an order: refunds and closing ([protocol: Creating a refund], [protocol:
Closing an order]). A mixin of `ledger.domain.PaymentOrder`: its events are the order's own
(``ledger.domain:PaymentOrder.RefundRequested``, ...), named in the domain's lists.

A refund is asked **write-ahead**. `ask_refund` decides against the order's replayed state whether
it may be asked (the order is paid, the amount is positive and at most what is left: paid, less the
refunds that succeeded and the ones in flight) and appends `RefundRequested` holding the request
exactly as it will be sent, before anything is sent. So:

* two requests that together exceed what is left cannot both be appended: the order's stream is
  written with optimistic concurrency, and the second writer re-decides against the first's request;
* a crash, a timeout or a lost connection after the append leaves a request whose outcome is
  unknown: reconciliation settles it by a refund query, and the request is only ever re-sent as
  recorded, so WeChat, which answers a repeated `out_refund_no` with the refund it made, cannot pay
  twice;
* the same `out_refund_no` asked again with the same amount and reason is answered from the record
  (nothing sent); with another amount or reason it is refused.

WeChat's answer follows as evidence: `RefundAnswered` (accepted, with its `refund_id` and status, or
outcome unknown, with why) or `RefundRejected` (a clear refusal such as ``NOT_ENOUGH``, with its
code), which frees the amount. The refund's outcome is decided as for any refund: by its
notification or a refund query, whichever comes first (`RefundSucceeded`, `RefundClosed`,
`RefundAbnormal`), once.

Closing is asked only for an unpaid order; WeChat's ``204`` is recorded as `OrderClosed`. A payment
WeChat still takes afterwards (a race it allows) is decided all the same, the money moved, and
flagged `paid_after_close` so that an operator refunds it.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from ledger.anomalies import AnomalyKind
from ledger.errors import RequestConflict, RequestRefused
from ledger.hashchain import ChainedAggregate

__all__ = ["REFUND_REASON_LIMIT", "OrderRequests"]

REFUND_REASON_LIMIT = 80
"""[protocol: Creating a refund]: `reason` is at most 80 characters; it shows in the payer's refund message."""


class OrderRequests(ChainedAggregate):
    """Refund and close requests of a `PaymentOrder` (see the module's docstring)."""

    if TYPE_CHECKING:  # the order's state this mixin reads (ledger.domain.PaymentOrder sets it)
        mchid: str
        sub_mchid: str | None
        out_trade_no: str
        trade_state: str
        transaction_id: str | None
        paid: bool
        paid_total: int | None
        currency: str
        refunds: dict[str, dict[str, Any]]

        @property
        def refunded_total(self) -> int: ...

        def _anomaly(self, kind: AnomalyKind, key: str, detail: dict[str, Any], source: str) -> None: ...

    def _init_requests(self) -> None:
        self.refund_requests: dict[str, dict[str, Any]] = {}
        self.closed_at: dt.datetime | None = None

    # -- events --------------------------------------------------------------------------

    class RefundRequested(Aggregate.Event):
        out_refund_no: str
        refund: int
        reason: str
        requested_by: str  # the operator's name, or "admin-token" for the API's token
        request: dict[str, Any]  # the body sent to WeChat, exactly
        requested_at: dt.datetime

        def apply(self, order: OrderRequests) -> None:
            order.refund_requests[self.out_refund_no] = {
                "out_refund_no": self.out_refund_no,
                "refund": self.refund,
                "reason": self.reason,
                "requested_by": self.requested_by,
                "requested_at": self.requested_at.isoformat(),
                "outcome": "requested",  # then "accepted", "unknown" or "rejected"
                "refund_id": None,
                "status": None,
                "code": None,
                "request": self.request,
            }

    class RefundAnswered(Aggregate.Event):
        out_refund_no: str
        outcome: str  # "accepted" (WeChat's verified answer) or "unknown" (no answer to trust)
        status_code: int  # 0 when no answer came
        raw_body: str
        response_headers: dict[str, str]
        request_id: str
        refund_id: str
        status: str  # the refund's status in the answer (PROCESSING, SUCCESS, ...), "" when unknown
        detail: str  # why the outcome is unknown: a fixed text, never an exception's
        answered_at: dt.datetime

        def apply(self, order: OrderRequests) -> None:
            asked = order.refund_requests[self.out_refund_no]
            asked["outcome"] = self.outcome
            asked["refund_id"] = self.refund_id or asked["refund_id"]
            asked["status"] = self.status or asked["status"]

    class RefundRejected(Aggregate.Event):
        out_refund_no: str
        status_code: int
        code: str  # WeChat's error code, e.g. NOT_ENOUGH
        message: str
        raw_body: str
        request_id: str
        answered_at: dt.datetime

        def apply(self, order: OrderRequests) -> None:
            asked = order.refund_requests[self.out_refund_no]
            asked["outcome"], asked["code"] = "rejected", self.code

    class OrderClosed(Aggregate.Event):
        requested_by: str
        status_code: int  # WeChat's answer: 204
        request_id: str
        closed_at: dt.datetime

        def apply(self, order: OrderRequests) -> None:
            order.trade_state = "CLOSED"
            order.closed_at = self.closed_at

    # -- refunds -------------------------------------------------------------------------

    @property
    def refunds_in_flight(self) -> int:
        """Fen asked through the ledger and neither refused nor decided succeeded or closed yet."""
        pending = 0
        for out_refund_no, asked in self.refund_requests.items():
            decided = self.refunds.get(out_refund_no, {}).get("status")
            if asked["outcome"] != "rejected" and decided not in ("SUCCESS", "CLOSED"):
                pending += int(asked["refund"])
        return pending

    @property
    def refundable(self) -> int:
        """What may still be asked: paid, less the refunds that succeeded and those in flight."""
        if not self.paid or self.paid_total is None:
            return 0
        return max(0, self.paid_total - self.refunded_total - self.refunds_in_flight)

    def ask_refund(
        self,
        *,
        out_refund_no: str,
        refund: int,
        reason: str,
        requested_by: str,
        notify_url: str | None,
        requested_at: dt.datetime,
    ) -> bool:
        """Record the refund request to send (True), or find the same one recorded already (False: answer
        it as recorded, send nothing). `RequestConflict` when `out_refund_no` is known with another amount
        or reason, `RequestRefused` when the order's state does not allow it."""
        known = self.refund_requests.get(out_refund_no)
        if known is not None:
            if (known["refund"], known["reason"]) != (refund, reason):
                raise RequestConflict(f"refund {out_refund_no} was asked with another amount or reason")
            return False
        if out_refund_no in self.refunds:
            raise RequestConflict(f"refund {out_refund_no} exists already (asked outside the ledger)")
        if isinstance(refund, bool) or not isinstance(refund, int) or refund <= 0:
            raise RequestRefused("amount must be a positive whole number of fen")
        if not self.paid or self.paid_total is None or not self.transaction_id:
            raise RequestRefused(f"order {self.out_trade_no} is not paid: nothing to refund")
        if refund > self.refundable:
            raise RequestRefused(f"amount {refund} is more than the {self.refundable} fen still refundable")
        request: dict[str, Any] = {
            **({"sub_mchid": self.sub_mchid} if self.sub_mchid is not None else {}),
            "transaction_id": self.transaction_id,
            "out_refund_no": out_refund_no,
            **({"reason": reason} if reason else {}),
            **({"notify_url": notify_url} if notify_url else {}),
            "amount": {"refund": refund, "total": self.paid_total, "currency": self.currency},
        }
        self.trigger_event(
            self.RefundRequested,
            out_refund_no=out_refund_no,
            refund=refund,
            reason=reason,
            requested_by=requested_by,
            request=request,
            requested_at=requested_at,
        )
        return True

    def refund_request(self, out_refund_no: str) -> dict[str, Any]:
        """The body recorded for `out_refund_no`: the only one ever sent for it."""
        return dict(self.refund_requests[out_refund_no]["request"])

    def refund_record(self, out_refund_no: str) -> dict[str, Any]:
        """A refund asked through the ledger as the order shows it: without the body sent."""
        return {k: v for k, v in self.refund_requests[out_refund_no].items() if k != "request"}

    def requests_summary(self) -> dict[str, Any]:
        """The refunds asked through the ledger (without the bodies sent) and when it closed the order."""
        asked = [self.refund_record(no) for no in self.refund_requests]
        return {
            "refund_requests": sorted(asked, key=lambda r: r["out_refund_no"]),
            "refundable": self.refundable,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
        }

    def record_refund_answer(self, out_refund_no: str, **answer: Any) -> bool:
        """WeChat's answer to the request (`RefundAnswered` fields); False when one is recorded already
        (only an unknown outcome can be followed by another answer)."""
        return self._answered(self.RefundAnswered, out_refund_no, answer)

    def record_refund_rejection(self, out_refund_no: str, **answer: Any) -> bool:
        """WeChat refused the request (`RefundRejected` fields): the amount is free again."""
        return self._answered(self.RefundRejected, out_refund_no, answer)

    def _answered(self, event: type[Aggregate.Event], out_refund_no: str, answer: dict[str, Any]) -> bool:
        if self.refund_requests[out_refund_no]["outcome"] not in ("requested", "unknown"):
            return False
        self.trigger_event(event, out_refund_no=out_refund_no, **answer)
        return True

    # -- closing ---------------------------------------------------------------------------

    def check_closable(self) -> bool:
        """Whether a close is to be asked (False: closed by the ledger already); `RequestRefused` when paid."""
        if self.paid:
            raise RequestRefused(f"order {self.out_trade_no} is paid: refund it instead of closing it")
        return self.closed_at is None

    def close(self, *, requested_by: str, status_code: int, request_id: str, closed_at: dt.datetime) -> bool:
        """Record WeChat's acceptance of the close; False when closed by the ledger already."""
        if self.closed_at is not None:
            return False
        self.trigger_event(
            self.OrderClosed,
            requested_by=requested_by,
            status_code=status_code,
            request_id=request_id,
            closed_at=closed_at,
        )
        return True

    def _after_payment(self, source: str) -> None:
        """A payment decided on an order the ledger had closed: flagged for an operator to refund."""
        if self.closed_at is not None:
            detail = {"closed_at": self.closed_at.isoformat(), "transaction_id": self.transaction_id}
            self._anomaly(AnomalyKind.PAID_AFTER_CLOSE, f"paid_after_close:{self.transaction_id}", detail, source)
