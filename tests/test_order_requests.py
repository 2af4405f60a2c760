"""Refunds and closes asked through the ledger, as the order decides them ([protocol: Creating a refund],
[protocol: Closing an order]; issue 4/8): only a paid order is refunded, never beyond what is left
(succeeded and in-flight refunds count), the same out_refund_no is idempotent or refused, a refusal
frees the amount, a close is refused once paid, and a payment after the ledger's close is decided
and flagged. The aggregate alone: no store, no WeChat."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ledger.audit.rederive import Rederiver
from ledger.domain import PaymentOrder
from ledger.errors import RequestConflict, RequestRefused
from projections.timeline import facts
from tests.support.builders import event_types, evidence, new_order, pay, refund, replay
from tests.support.constants import MCHID

AT = dt.datetime(2026, 12, 3, 10, tzinfo=dt.UTC)
NOTIFY = "https://ledger.example.com/wechatpay/notify"


def paid(total: int = 100) -> PaymentOrder:
    order = new_order(total)
    order.receive(evidence(pay(total), notification_id="p"))
    order.collect_events()
    return order


def ask(order: PaymentOrder, no: str, fen: int, reason: str = "", by: str = "alice") -> bool:
    return order.ask_refund(
        out_refund_no=no, refund=fen, reason=reason, requested_by=by, notify_url=NOTIFY, requested_at=AT
    )


def answered(order: PaymentOrder, no: str, status: str = "PROCESSING") -> None:
    order.record_refund_answer(
        no,
        outcome="accepted",
        status_code=200,
        raw_body="{}",
        response_headers={},
        request_id="req-1",
        refund_id=f"RID-{no}",
        status=status,
        detail="",
        answered_at=AT,
    )


def rejected(order: PaymentOrder, no: str, code: str = "NOT_ENOUGH") -> None:
    order.record_refund_rejection(
        no, status_code=403, code=code, message="余额不足", raw_body="", request_id="req-2", answered_at=AT
    )


def test_an_unpaid_order_is_not_refunded() -> None:
    order = new_order()
    with pytest.raises(RequestRefused, match="not paid"):
        ask(order, "R1", 10)
    assert order.collect_events() == []


@pytest.mark.parametrize("fen", [0, -1, True, 1.5, "10"])
def test_an_amount_must_be_a_positive_number_of_fen(fen: Any) -> None:
    order = paid()
    with pytest.raises(RequestRefused, match="positive whole number"):
        ask(order, "R1", fen)


def test_the_request_is_recorded_before_it_is_sent_with_the_body_to_send() -> None:
    order = paid(100)
    assert ask(order, "R1", 60, reason="破损") is True
    [requested] = order.collect_events()
    assert event_types([requested]) == ["RefundRequested"]
    assert requested.request == {
        "transaction_id": "4200000000000000000000000001",
        "out_refund_no": "R1",
        "reason": "破损",
        "notify_url": NOTIFY,
        "amount": {"refund": 60, "total": 100, "currency": "CNY"},
    }
    assert order.refund_request("R1") == requested.request
    assert (requested.requested_by, order.refunds_in_flight, order.refundable) == ("alice", 60, 40)
    assert order.summary()["refund_requests"][0]["outcome"] == "requested"
    assert "request" not in order.summary()["refund_requests"][0]


def test_refunds_in_flight_and_succeeded_count_against_what_is_left() -> None:
    order = paid(100)
    ask(order, "R1", 60)
    answered(order, "R1")
    with pytest.raises(RequestRefused, match="more than the 40 fen still refundable"):
        ask(order, "R2", 41)
    assert ask(order, "R2", 40) is True
    assert order.refundable == 0
    # R1 succeeds: it moves from in flight to refunded, what is left does not change.
    order.receive(evidence(refund("R1", 60), "REFUND.SUCCESS", notification_id="r1"))
    assert (order.refunded_total, order.refunds_in_flight, order.refundable) == (60, 40, 0)
    # R2 is closed by WeChat: its amount is free again.
    order.receive(evidence(refund("R2", 40, "CLOSED"), "REFUND.CLOSED", notification_id="r2"))
    assert (order.refunds_in_flight, order.refundable) == (0, 40)


def test_the_same_request_again_is_answered_as_recorded_and_another_is_refused() -> None:
    order = paid(100)
    assert ask(order, "R1", 30, reason="a") is True
    order.collect_events()
    assert ask(order, "R1", 30, reason="a") is False
    assert order.collect_events() == []
    with pytest.raises(RequestConflict, match="another amount or reason"):
        ask(order, "R1", 31, reason="a")
    with pytest.raises(RequestConflict):
        ask(order, "R1", 30, reason="b")
    # A refund of that number decided from elsewhere (the merchant console) cannot be asked again.
    order.receive(evidence(refund("R9", 10), "REFUND.SUCCESS", notification_id="r9"))
    with pytest.raises(RequestConflict, match="exists already"):
        ask(order, "R9", 10)


def test_a_refusal_frees_the_amount_and_is_final() -> None:
    order = paid(100)
    ask(order, "R1", 100)
    rejected(order, "R1")
    assert (order.refund_requests["R1"]["outcome"], order.refund_requests["R1"]["code"]) == ("rejected", "NOT_ENOUGH")
    assert order.refundable == 100
    answered(order, "R1")  # a late answer after the refusal changes nothing
    assert order.refund_requests["R1"]["outcome"] == "rejected"


def test_an_unknown_outcome_can_still_be_answered_and_keeps_the_amount() -> None:
    order = paid(100)
    ask(order, "R1", 70)
    order.record_refund_answer(
        "R1", outcome="unknown", status_code=0, raw_body="", response_headers={}, request_id="",
        refund_id="", status="", detail="WeChat Pay unavailable", answered_at=AT,
    )  # fmt: skip
    assert (order.refund_requests["R1"]["outcome"], order.refundable) == ("unknown", 30)
    answered(order, "R1")
    assert order.refund_requests["R1"]["outcome"] == "accepted"


def test_a_partner_order_names_its_sub_merchant_in_the_request() -> None:
    order = PaymentOrder.open("1230000109", "P-1", sub_mchid="1900000109")
    resource = {
        "sp_mchid": "1230000109", "sub_mchid": "1900000109", "out_trade_no": "P-1", "trade_state": "SUCCESS",
        "transaction_id": "4200000000000000000000000009", "success_time": "2026-12-03T10:00:00+08:00",
        "amount": {"total": 300, "payer_total": 300, "currency": "CNY"},
    }  # fmt: skip
    order.receive(evidence(resource, notification_id="pp"))
    ask(order, "PR1", 100)
    assert order.refund_request("PR1")["sub_mchid"] == "1900000109"
    assert order.refund_request("PR1")["amount"] == {"refund": 100, "total": 300, "currency": "CNY"}


def test_a_paid_order_is_not_closed_and_an_unpaid_one_is_closed_once() -> None:
    with pytest.raises(RequestRefused, match="refund it instead"):
        paid().check_closable()
    order = new_order()
    assert order.check_closable() is True
    assert order.close(requested_by="bob", status_code=204, request_id="req-c", closed_at=AT) is True
    assert (order.trade_state, order.summary()["closed_at"]) == ("CLOSED", AT.isoformat())
    assert order.check_closable() is False
    assert order.close(requested_by="bob", status_code=204, request_id="req-c", closed_at=AT) is False


def test_a_payment_after_the_ledgers_close_is_decided_and_flagged_once() -> None:
    order = new_order()
    order.close(requested_by="bob", status_code=204, request_id="req-c", closed_at=AT)
    order.collect_events()
    order.receive(evidence(pay(), notification_id="late"))
    order.receive(evidence(pay(), notification_id="late", attempt=1))  # WeChat's retry
    events = order.collect_events()
    assert event_types(events) == [
        "NotificationReceived",
        "PaymentSucceeded",
        "AnomalyDetected",
        "NotificationReceived",
    ]
    assert (order.paid, order.trade_state) == (True, "SUCCESS")
    assert [a["kind"] for a in order.anomalies] == ["paid_after_close"]


def test_requests_replay_to_the_same_state_and_verify_takes_them_as_recorded() -> None:
    order = PaymentOrder.open(MCHID, "ORDER-0001")
    order.register(100, "CNY", "")
    order.receive(evidence(pay(), notification_id="p"))
    ask(order, "R1", 60)
    answered(order, "R1")
    ask(order, "R3", 40)
    rejected(order, "R3")
    order.receive(evidence(refund("R1", 60), "REFUND.SUCCESS", notification_id="r1"))
    events = order.collect_events()
    assert replay(order, events).summary() == order.summary()

    def problems(stored: list[Any]) -> list[str]:
        rederive = Rederiver({MCHID: None}, resume=lambda stream, version: None)
        found = [p for e in stored for p in rederive.feed(order.id, e.originator_version, e)]
        return found + [p for _, p in rederive.leftovers()]

    assert problems(events) == []
    # The refund's decision left out of the record: the requests do not hide it.
    assert problems([e for e in events if type(e).__name__ != "RefundSucceeded"]) == [
        "decision RefundSucceeded is missing"
    ]


def test_the_history_says_who_asked_and_what_wechat_answered() -> None:
    assert facts(
        "RefundRequested", {"out_refund_no": "R1", "refund": 60, "requested_by": "alice", "reason": "破损"}
    ) == ('out_refund_no=R1 refund=60 asked by alice reason="破损"')
    accepted = {"out_refund_no": "R1", "outcome": "accepted", "status_code": 200, "status": "PROCESSING"}
    assert facts("RefundAnswered", {**accepted, "refund_id": "RID", "request_id": "Q"}) == (
        "out_refund_no=R1 accepted: HTTP 200 status=PROCESSING refund_id=RID request_id=Q"
    )
    unknown = {"out_refund_no": "R1", "outcome": "unknown", "detail": "WeChat Pay unavailable"}
    assert facts("RefundAnswered", unknown) == (
        "out_refund_no=R1 outcome unknown (WeChat Pay unavailable): a refund query will tell"
    )
    assert facts("RefundRejected", {"out_refund_no": "R1", "status_code": 403, "code": "NOT_ENOUGH"}) == (
        "out_refund_no=R1 refused: HTTP 403 NOT_ENOUGH"
    )
    assert facts("OrderClosed", {"status_code": 204, "requested_by": "bob"}) == (
        "closed at WeChat Pay (HTTP 204) asked by bob"
    )
