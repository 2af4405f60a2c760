"""The PaymentOrder aggregate: decisions happen once, whatever arrives and in whatever order."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain import AnomalyKind, Outcome, PaymentOrder, QueryEvidence, inbox_id, order_id
from ledger.errors import OrderConflict
from tests.support.builders import event_types, evidence, new_order, pay, refund, replay
from tests.support.constants import APPID, MCHID


def test_stream_ids_are_uuid5_of_mchid_and_out_trade_no_without_ambiguity() -> None:
    assert order_id("ab", "c") != order_id("a", "bc")
    assert order_id(MCHID, "X") == order_id(MCHID, "X")
    assert order_id(MCHID, "X") != inbox_id(MCHID, "X")
    assert order_id(MCHID, "X").version == 5


def test_payment_success_is_decided_once_across_retries_and_replays() -> None:
    order = new_order()
    assert order.receive(evidence(pay())) is Outcome.RECORDED
    assert order.receive(evidence(pay())) is Outcome.DUPLICATE  # byte-identical replay
    assert order.receive(evidence(pay(), attempt=1)) is Outcome.RECORDED  # WeChat retry, re-signed
    events = order.collect_events()
    assert event_types(events) == ["NotificationReceived", "PaymentSucceeded", "NotificationReceived"]
    assert order.trade_state == "SUCCESS"
    assert order.transaction_id == "4200000000000000000000000001"
    assert order.deliveries == 2


def test_unregistered_order_is_recorded_and_paid() -> None:
    order = PaymentOrder.open(MCHID, "ORDER-0001")
    order.receive(evidence(pay(250)))
    assert event_types(order.collect_events()) == ["Opened", "NotificationReceived", "PaymentSucceeded"]
    assert (order.registered, order.amount_total, order.trade_state) == (False, 250, "SUCCESS")


def test_amount_differing_from_registration_is_an_anomaly() -> None:
    order = new_order(registered=100)
    order.receive(evidence(pay(1)))
    order.receive(evidence(pay(1), attempt=1))
    events = order.collect_events()
    assert Counter(event_types(events))["AnomalyDetected"] == 1
    assert order.anomalies[0]["kind"] == "amount_mismatch"
    assert order.anomalies[0]["detail"] == {"expected": 100, "actual": 1, "field": "amount.total"}


def test_currency_differing_from_registration_is_stored_as_an_amount_mismatch() -> None:
    order = new_order(registered=100)
    resource = pay(100)
    resource["amount"]["currency"] = "USD"
    order.receive(evidence(resource))
    anomalies = [e for e in order.collect_events() if isinstance(e, PaymentOrder.AnomalyDetected)]
    assert [(a.kind, a.key) for a in anomalies] == [
        ("amount_mismatch", "currency_mismatch:payment:4200000000000000000000000001")
    ]
    assert type(anomalies[0].kind) is str  # stored as the plain string, not the enum
    assert anomalies[0].detail == {"expected": "CNY", "actual": "USD", "field": "amount.currency"}
    assert AnomalyKind.CURRENCY_MISMATCH is AnomalyKind.AMOUNT_MISMATCH


def test_anomaly_kinds_keep_the_strings_stored_in_the_log() -> None:
    assert {kind.value for kind in AnomalyKind} == {
        "amount_mismatch",
        "mchid_mismatch",
        "appid_mismatch",
        "notification_conflict",
        "transaction_conflict",
        "over_refund",
        "sub_mchid_unknown",
        "paid_after_close",
    }


def test_payer_total_below_total_is_not_an_anomaly() -> None:
    """[protocol: The payment resource]: coupons make payer_total smaller; compare amount.total."""
    order = new_order(registered=100)
    order.receive(evidence(pay(100, payer_total=90)))
    assert order.anomalies == []
    assert order.payer_total == 90


def test_registration_after_payment_checks_the_amount() -> None:
    order = PaymentOrder.open(MCHID, "ORDER-0001")
    order.receive(evidence(pay(100)))
    order.register(120, "CNY", "")
    assert [a["kind"] for a in order.anomalies] == ["amount_mismatch"]


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [("mchid", "1900000999", "mchid_mismatch"), ("appid", "wx0000000000000000", "appid_mismatch")],
)
def test_identity_mismatch_is_an_anomaly_and_no_decision(field: str, value: str, kind: str) -> None:
    order = new_order()
    order.receive(evidence(pay(**{field: value})), expected_appid=APPID)
    types = event_types(order.collect_events())
    assert "PaymentSucceeded" not in types
    assert [a["kind"] for a in order.anomalies] == [kind]
    assert order.trade_state == "NOTPAY"


def test_same_notification_id_with_different_resource_is_an_anomaly() -> None:
    order = new_order()
    order.receive(evidence(pay(100), notification_id="same"))
    order.receive(evidence(pay(100, success_time="2026-11-28T00:00:00+08:00"), notification_id="same", attempt=1))
    types = event_types(order.collect_events())
    assert Counter(types) == Counter({"NotificationReceived": 2, "PaymentSucceeded": 1, "AnomalyDetected": 1})
    assert order.anomalies[0]["kind"] == "notification_conflict"


def test_partial_refunds_add_up_and_statuses_are_final() -> None:
    order = new_order()
    order.receive(evidence(pay(), notification_id="p"))
    order.receive(evidence(refund("R1", 30), "REFUND.SUCCESS", notification_id="r1"))
    order.receive(evidence(refund("R2", 20, "ABNORMAL"), "REFUND.ABNORMAL", notification_id="r2a"))
    order.receive(evidence(refund("R2", 20), "REFUND.SUCCESS", notification_id="r2"))
    order.receive(evidence(refund("R3", 50, "CLOSED"), "REFUND.CLOSED", notification_id="r3"))
    order.receive(evidence(refund("R1", 30, "CLOSED"), "REFUND.CLOSED", notification_id="r1c"))
    assert order.refunded_total == 50
    assert order.trade_state == "REFUND"
    assert {no: r["status"] for no, r in order.refunds.items()} == {
        "R1": "SUCCESS",
        "R2": "SUCCESS",
        "R3": "CLOSED",
    }


def test_refund_beyond_the_paid_amount_is_an_anomaly() -> None:
    order = new_order()
    order.receive(evidence(pay(), notification_id="p"))
    order.receive(evidence(refund("R1", 80), "REFUND.SUCCESS", notification_id="r1"))
    order.receive(evidence(refund("R2", 80), "REFUND.SUCCESS", notification_id="r2"))
    assert [a["kind"] for a in order.anomalies] == ["over_refund"]


def test_other_event_types_are_recorded_without_decision() -> None:
    order = new_order()
    assert order.receive(evidence(pay(), "TRANSACTION.FAIL")) is Outcome.RECORDED
    assert event_types(order.collect_events()) == ["NotificationReceived"]
    assert order.trade_state == "NOTPAY"


def test_reregistration_identical_is_a_no_op_and_different_is_refused() -> None:
    order = new_order(registered=100)
    assert order.register(100, "CNY", "") is False
    with pytest.raises(OrderConflict):
        order.register(101, "CNY", "")
    assert order.collect_events() == []


def query(trade_state: str, request_id: str = "Q-1", **kwargs: Any) -> QueryEvidence:
    transaction = pay(**kwargs)
    transaction["trade_state"] = trade_state
    if trade_state not in {"SUCCESS", "REFUND"}:
        for name in ("transaction_id", "success_time", "payer", "bank_type"):
            transaction.pop(name)
    return QueryEvidence(
        query="out_trade_no",
        status_code=200,
        raw_body="{}",
        response_headers={},
        key_serial="PUB_KEY_ID_0001",
        request_id=request_id,
        transaction=transaction,
        queried_at=dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
    )


def test_query_finding_success_before_any_callback_decides_once() -> None:
    """Issue 2/4: the callback that arrives later collapses into the query's decision."""
    order = new_order()
    order.record_query(query("SUCCESS"), expected_appid=APPID)
    order.receive(evidence(pay()), expected_appid=APPID)
    order.record_query(query("SUCCESS", "Q-2"), expected_appid=APPID)
    assert event_types(order.collect_events()) == [
        "StatusQueried",
        "PaymentSucceeded",
        "NotificationReceived",
        "StatusQueried",
    ]
    assert (order.trade_state, order.queries, order.is_final) == ("SUCCESS", 2, True)


def test_callback_before_query_decides_once() -> None:
    order = new_order()
    order.receive(evidence(pay()), expected_appid=APPID)
    order.record_query(query("SUCCESS"), expected_appid=APPID)
    assert Counter(event_types(order.collect_events()))["PaymentSucceeded"] == 1


@pytest.mark.parametrize("state", ["CLOSED", "REVOKED", "PAYERROR", "USERPAYING"])
def test_queried_states_are_reflected_in_trade_state(state: str) -> None:
    order = new_order()
    order.record_query(query(state), expected_appid=APPID)
    assert order.trade_state == state
    assert event_types(order.collect_events()) == ["StatusQueried", "TradeStateChanged"]


def test_final_states_do_not_move_back_and_a_paid_order_ignores_stale_notpay() -> None:
    order = new_order()
    order.record_query(query("CLOSED"))
    order.record_query(query("NOTPAY", "Q-2"))
    assert order.trade_state == "CLOSED"
    paid = new_order()
    paid.receive(evidence(pay()))
    paid.record_query(query("NOTPAY"))
    assert paid.trade_state == "SUCCESS"
    assert "TradeStateChanged" not in event_types(paid.collect_events())


def test_query_with_refund_state_records_the_payment_too() -> None:
    order = new_order()
    order.record_query(query("REFUND"))
    assert (order.paid, order.trade_state) == (True, "REFUND")


def refund_query(no: str, status: str, *, out_trade_no: str = "ORDER-0001", request_id: str = "QR-1") -> QueryEvidence:
    """[protocol: Querying a refund]: the answer carries `status`, not `refund_status`, and no mchid."""
    answer = {k: v for k, v in refund(no, 40).items() if k not in ("mchid", "refund_status")}
    answer |= {"status": status, "out_trade_no": out_trade_no, "channel": "ORIGINAL"}
    return QueryEvidence("refund", 200, "{}", {}, "PUB_KEY_ID_0001", request_id, answer, dt.datetime(2026, 11, 27))


@pytest.mark.parametrize(
    ("status", "decision"),
    [("SUCCESS", "RefundSucceeded"), ("CLOSED", "RefundClosed"), ("ABNORMAL", "RefundAbnormal")],
)
def test_a_refund_query_answer_decides_that_refund_and_nothing_else(status: str, decision: str) -> None:
    """How a refund told by an APIv2 `req_info` (REFUND.V2: no decision) is confirmed."""
    order = new_order()
    order.receive(evidence(pay()))
    order.receive(evidence(refund("R1", 40), "REFUND.V2", notification_id="v2:refund:RID-R1:SUCCESS"))
    order.collect_events()
    assert order.refunds == {}
    order.record_query(refund_query("R1", status))
    events = order.collect_events()
    assert event_types(events) == ["StatusQueried", decision]
    assert (events[1].out_refund_no, events[1].refund, events[1].evidence) == ("R1", 40, "query:QR-1")
    assert order.trade_state == ("REFUND" if status == "SUCCESS" else "SUCCESS")


def test_a_refund_query_answer_that_is_pending_or_about_another_order_decides_nothing() -> None:
    order = new_order()
    order.record_query(refund_query("R1", "PROCESSING"))
    assert event_types(order.collect_events()) == ["StatusQueried"]
    order.record_query(refund_query("R1", "SUCCESS", out_trade_no="ORDER-0002", request_id="QR-2"))
    events = order.collect_events()
    assert event_types(events) == ["StatusQueried", "AnomalyDetected"]
    assert (events[1].kind, order.refunds) == ("mchid_mismatch", {})


# -- the property: any interleaving and duplication of deliveries gives one decision each ---

DELIVERIES = [
    evidence(pay(), notification_id="pay", attempt=0),
    evidence(pay(), notification_id="pay", attempt=1),
    evidence(pay(), notification_id="pay", attempt=2),
    evidence(refund("R1", 30), "REFUND.SUCCESS", notification_id="r1", attempt=0),
    evidence(refund("R1", 30), "REFUND.SUCCESS", notification_id="r1", attempt=1),
    evidence(refund("R2", 20, "ABNORMAL"), "REFUND.ABNORMAL", notification_id="r2a"),
    evidence(refund("R2", 20), "REFUND.SUCCESS", notification_id="r2"),
    evidence(refund("R3", 10, "CLOSED"), "REFUND.CLOSED", notification_id="r3"),
    query("SUCCESS", "Q-8"),
    query("NOTPAY", "Q-9"),
]
QUERIES = {8, 9}


def expected_state(present: set[int]) -> dict[str, Any]:
    """What the order must end as, from the *set* of distinct deliveries alone."""
    refunds = {}
    if present & {3, 4}:
        refunds["R1"] = "SUCCESS"
    if 6 in present:
        refunds["R2"] = "SUCCESS"
    elif 5 in present:
        refunds["R2"] = "ABNORMAL"
    if 7 in present:
        refunds["R3"] = "CLOSED"
    refunded = (30 if "R1" in refunds else 0) + (20 if refunds.get("R2") == "SUCCESS" else 0)
    paid = bool(present & {0, 1, 2, 8})
    state = "REFUND" if refunded else ("SUCCESS" if paid else "NOTPAY")
    return {
        "trade_state": state,
        "refunded_total": refunded,
        "refunds": refunds,
        "deliveries": len(present - QUERIES),
    }


def observed_state(order: PaymentOrder) -> dict[str, Any]:
    return {
        "trade_state": order.trade_state,
        "refunded_total": order.refunded_total,
        "refunds": {no: r["status"] for no, r in order.refunds.items()},
        "deliveries": order.deliveries,
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(DELIVERIES) - 1), min_size=1, max_size=30))
def test_any_interleaving_and_duplication_decides_once(sequence: list[int]) -> None:
    order = PaymentOrder.open(MCHID, "ORDER-0001")
    order.register(100, "CNY", "")
    for i in sequence:
        item = DELIVERIES[i]
        if isinstance(item, QueryEvidence):
            order.record_query(item, expected_appid=APPID)
        else:
            order.receive(item, expected_appid=APPID)
    events = order.collect_events()
    counts = Counter(event_types(events))
    present = set(sequence)

    assert counts["PaymentSucceeded"] == (1 if present & {0, 1, 2, 8} else 0)
    successes = Counter(e.out_refund_no for e in events if type(e).__name__ == "RefundSucceeded")
    assert all(n == 1 for n in successes.values())
    assert counts["RefundClosed"] <= 1 and counts["RefundAbnormal"] <= 1
    assert counts["NotificationReceived"] == len(present - QUERIES)
    assert counts["StatusQueried"] == sum(1 for i in sequence if i in QUERIES)
    assert counts["AnomalyDetected"] == 0
    assert observed_state(order) == expected_state(present)

    rebuilt = replay(order, events)
    assert observed_state(rebuilt) == observed_state(order)
    assert rebuilt.version == order.version == len(events)


def _bill_difference(order: PaymentOrder, day: str = "2026-12-02", **changes: Any) -> bool:
    found: dict[str, Any] = {
        "kind": "amount_mismatch",
        "transaction_id": "4200000000000000000000000001",
        "out_refund_no": None,
        "refund_id": None,
        "bill_amount": 101,
        "ledger_amount": 100,
        "evidence": f"bill:trade:{day}:{'a' * 40}",
    }
    found.update(changes)
    return order.note_bill_discrepancy(bill_date=day, **found)


def test_a_bills_difference_is_recorded_once_per_bill_and_replays() -> None:
    """[protocol: Daily bills]: a difference is a decision of its own, once per bill, whatever the runs."""
    order = PaymentOrder.open(MCHID, "ORDER-0001")
    order.register(100, "CNY", "")
    assert _bill_difference(order) is True
    assert _bill_difference(order) is False  # the same bill, again
    assert _bill_difference(order, day="2026-12-03") is True  # another day's bill is another fact
    assert _bill_difference(order, kind="missing_in_ledger", refund_id="RID-R1", out_refund_no="R1") is True
    assert _bill_difference(order, kind="missing_in_ledger", refund_id="RID-R1", out_refund_no="R1") is False
    events = order.collect_events()
    assert event_types(events).count("BillDiscrepancy") == 3
    assert [d["bill_date"] for d in order.summary()["bill_discrepancies"]] == ["2026-12-02", "2026-12-03", "2026-12-02"]
    replayed = replay(order, events)
    assert replayed.summary()["bill_discrepancies"] == order.summary()["bill_discrepancies"]
    assert replayed.bill_discrepancy_keys == order.bill_discrepancy_keys
    # It decides nothing else: the order's trade state and money are untouched.
    assert (replayed.trade_state, replayed.paid, replayed.refunded_total) == ("NOTPAY", False, 0)
