"""The order's events are named once, in the domain, and everything that follows them uses that.

A new event class must be placed as evidence or as a decision, or these tests fail; and the read
model, the outbound notifications, the metrics, the events API, its OpenAPI description and
`payledger verify` all change with the domain's lists, never with a list of their own.
"""

from __future__ import annotations

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from api.openapi import openapi_document
from api.orders import EVENT_TYPES
from ledger.audit.rederive import EVIDENCE
from ledger.domain import (
    ALL_EVENTS,
    BILL_DECISION_EVENTS,
    DECISION_EVENTS,
    EVIDENCE_EVENTS,
    PAYMENT_LIFECYCLE_EVENTS,
    REQUEST_EVENTS,
    WEBHOOK_EVENTS,
    PaymentOrder,
)
from ledger.statements import BILL_STATEMENT_EVENTS, BillStatement
from projections.log_counts import DECISION_TYPES
from projections.read_model.view import OrdersProjection
from projections.webhooks.projection import OutboxProjection


def order_event_classes() -> set[type]:
    """Every event class a PaymentOrder stream can hold, found on the aggregate itself."""
    found = set()
    for name in dir(PaymentOrder):
        value = getattr(PaymentOrder, name)
        if isinstance(value, type) and issubclass(value, Aggregate.Event) and not name.startswith("_"):
            found.add(value)
    # The library's base classes (and our private `_RefundDecision`) are never stored as such.
    return found - {PaymentOrder.Event, PaymentOrder.Created}


def names(events: tuple[type, ...]) -> set[str]:
    return {cls.__name__ for cls in events}


def test_every_order_event_is_either_evidence_or_a_decision() -> None:
    assert set(EVIDENCE_EVENTS).isdisjoint(DECISION_EVENTS)
    assert set(ALL_EVENTS) == set(EVIDENCE_EVENTS) | set(DECISION_EVENTS)
    assert len(ALL_EVENTS) == len(set(ALL_EVENTS))
    assert set(ALL_EVENTS) == order_event_classes()


def test_the_lists_say_what_each_event_is() -> None:
    assert names(EVIDENCE_EVENTS) == {
        "Opened",
        "Registered",
        "NotificationReceived",
        "StatusQueried",
        "RefundRequested",
        "RefundAnswered",
        "RefundRejected",
        "OrderClosed",
        "AnomalyAcknowledged",
        "OperatorActed",
    }
    # What the ledger asked WeChat (refunds, a close) and the answers, and what operators did (an
    # anomaly acknowledged, a re-query or resend asked): evidence that verify takes as recorded.
    assert names(REQUEST_EVENTS) == {
        *("RefundRequested", "RefundAnswered", "RefundRejected", "OrderClosed"),
        *("AnomalyAcknowledged", "OperatorActed"),
    }
    assert set(REQUEST_EVENTS) <= set(EVIDENCE_EVENTS)
    assert names(DECISION_EVENTS) == {
        "PaymentSucceeded",
        "RefundSucceeded",
        "RefundClosed",
        "RefundAbnormal",
        "TradeStateChanged",
        "AnomalyDetected",
        "BillDiscrepancy",
    }
    assert set(BILL_DECISION_EVENTS) == {PaymentOrder.BillDiscrepancy} <= set(DECISION_EVENTS)


def test_webhooks_get_every_decision_but_a_trade_state_change_and_a_bill_difference_and_the_requests() -> None:
    assert set(DECISION_EVENTS) - set(WEBHOOK_EVENTS) == {PaymentOrder.TradeStateChanged, PaymentOrder.BillDiscrepancy}
    assert set(WEBHOOK_EVENTS) - set(DECISION_EVENTS) == {
        PaymentOrder.RefundRequested,
        PaymentOrder.RefundRejected,
        PaymentOrder.OrderClosed,
    }


def test_the_payment_lifecycle_is_a_registration_and_what_answers_it() -> None:
    assert set(PAYMENT_LIFECYCLE_EVENTS) <= set(ALL_EVENTS)
    assert names(PAYMENT_LIFECYCLE_EVENTS) == {"Registered", "PaymentSucceeded", "TradeStateChanged"}


def test_the_read_model_follows_every_order_event() -> None:
    assert set(OrdersProjection.topics) == {get_topic(cls) for cls in ALL_EVENTS}


def test_the_outbox_follows_the_webhook_decisions() -> None:
    assert set(OutboxProjection.topics) == {get_topic(cls) for cls in WEBHOOK_EVENTS}


def test_the_metrics_count_every_decision_by_its_name() -> None:
    assert DECISION_TYPES == {get_topic(cls): cls.__name__ for cls in DECISION_EVENTS}


def test_the_events_api_and_its_description_know_every_order_event() -> None:
    assert names(ALL_EVENTS) == EVENT_TYPES
    document = openapi_document()
    assert document["components"]["schemas"]["Event"]["properties"]["type"]["enum"] == sorted(names(ALL_EVENTS))


def test_verify_rederives_from_the_evidence_events() -> None:
    assert names(EVIDENCE_EVENTS) == EVIDENCE


def test_a_bill_statement_names_its_events_once_and_no_order_list_holds_them() -> None:
    """[protocol: Keeping a bill]: a bill's events are evidence of the day, not an order's; nothing
    that follows orders (read model, webhooks, metrics, events API) sees them."""
    found = {
        value
        for name in dir(BillStatement)
        if isinstance(value := getattr(BillStatement, name), type)
        and issubclass(value, Aggregate.Event)
        and not name.startswith("_")
    } - {BillStatement.Event, BillStatement.Created}
    assert set(BILL_STATEMENT_EVENTS) == found and len(BILL_STATEMENT_EVENTS) == len(found)
    assert [get_topic(cls) for cls in BILL_STATEMENT_EVENTS] == [
        "ledger.statements:BillStatement.Opened",
        "ledger.statements:BillStatement.ChunkStored",
        "ledger.statements:BillStatement.Fetched",
        "ledger.statements:BillStatement.FoundEmpty",
    ]
    assert set(BILL_STATEMENT_EVENTS).isdisjoint(ALL_EVENTS)
    topics = {get_topic(cls) for cls in BILL_STATEMENT_EVENTS}
    assert topics.isdisjoint(OrdersProjection.topics) and topics.isdisjoint(OutboxProjection.topics)
    assert topics.isdisjoint(DECISION_TYPES)
