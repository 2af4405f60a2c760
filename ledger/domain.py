"""The payment order aggregate: evidence in, decisions out, no I/O.

Evidence is a verified delivery or query answer (`ledger.evidence`). Decisions are derived from it
by `PaymentOrder.receive` and `record_query` and recorded as their own events, so a replay never
re-decides: it re-applies. Every decision is guarded by state the decision itself changes: that is
why duplicates, retries and reorderings collapse into one decision.

The order's events are named here once, as evidence or decisions (`EVIDENCE_EVENTS`,
`DECISION_EVENTS`, ...), for everything that follows the log: read model, outbound
notifications, metrics, events API, `payledger verify`, reconciler.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate

from ledger.anomalies import AnomalyKind
from ledger.errors import OrderConflict
from ledger.evidence import Evidence, QueryEvidence
from ledger.evidence import amount_object as _amount_object
from ledger.evidence import resource_fen as _fen
from ledger.evidence import text_field as _str
from ledger.hashchain import ChainedAggregate
from ledger.identity import OrderKey, inbox_id, order_id, own_transaction, refund_answer_as_resource
from ledger.order_actions import OrderActions
from ledger.order_requests import OrderRequests

__all__ = [
    "ALL_EVENTS",
    "BILL_DECISION_EVENTS",
    "DECISION_EVENTS",
    "EVIDENCE_EVENTS",
    "FINAL_TRADE_STATES",
    "OPEN_TRADE_STATES",
    "PAYMENT_LIFECYCLE_EVENTS",
    "REQUEST_EVENTS",
    "WEBHOOK_EVENTS",
    "AnomalyKind",
    "Evidence",
    "NotificationInbox",
    "Outcome",
    "PaymentOrder",
    "QueryEvidence",
    "inbox_id",
    "order_id",
]

# [protocol: Querying an order]: states a query can still move on from, and states that end the order's life.
OPEN_TRADE_STATES = frozenset({"NOTPAY", "USERPAYING", "ACCEPT"})
FINAL_TRADE_STATES = frozenset({"SUCCESS", "REFUND", "CLOSED", "REVOKED", "PAYERROR"})


class Outcome(StrEnum):
    """What receiving a delivery did: recorded it, or found a byte-identical replay."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"


class _DeliveryLog(ChainedAggregate):
    """Keeps every delivery; answers whether a delivery is a byte-identical replay."""

    delivery_keys: set[str]
    resource_digests: dict[str, str]

    class NotificationReceived(Aggregate.Event):
        notification_id: str
        event_type: str
        delivery_key: str
        key_serial: str
        raw_body: str
        signature_headers: dict[str, str]
        envelope: dict[str, Any]
        resource: dict[str, Any]
        resource_digest: str
        received_at: dt.datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.delivery_keys.add(self.delivery_key)
            aggregate.resource_digests.setdefault(self.notification_id, self.resource_digest)
            aggregate.deliveries += 1

    def _init_log(self) -> None:
        self.delivery_keys = set()
        self.resource_digests = {}
        self.deliveries = 0

    def _record_delivery(self, evidence: Evidence) -> bool:
        """Append the delivery unless it is a byte-identical replay; True when appended."""
        if evidence.delivery_key in self.delivery_keys:
            return False
        self.trigger_event(
            self.NotificationReceived,
            notification_id=evidence.notification_id,
            event_type=evidence.event_type,
            delivery_key=evidence.delivery_key,
            key_serial=evidence.key_serial,
            raw_body=evidence.raw_body,
            signature_headers=dict(evidence.signature_headers),
            envelope=evidence.envelope,
            resource=evidence.resource,
            resource_digest=evidence.resource_digest,
            received_at=evidence.received_at,
        )
        return True


class NotificationInbox(_DeliveryLog):
    """Notifications that name no order (e.g. PAYSCORE.*, COMPLAINT.*): kept, never dropped."""

    class Opened(Aggregate.Created):
        mchid: str
        notification_id: str

    def __init__(self, mchid: str, notification_id: str) -> None:
        self.mchid = mchid
        self.notification_id = notification_id
        self._init_log()

    @classmethod
    def open(cls, mchid: str, notification_id: str) -> NotificationInbox:
        return cls._create(
            cls.Opened, id=inbox_id(mchid, notification_id), mchid=mchid, notification_id=notification_id
        )

    def receive(self, evidence: Evidence) -> Outcome:
        return Outcome.RECORDED if self._record_delivery(evidence) else Outcome.DUPLICATE


class PaymentOrder(OrderActions, OrderRequests, _DeliveryLog):
    """One merchant order (mchid, out_trade_no) and everything WeChat told us about it."""

    FINAL_REFUND_STATES = frozenset({"SUCCESS", "CLOSED"})
    REFUND_DECISIONS = frozenset({"SUCCESS", "CLOSED", "ABNORMAL"})  # the refund states that decide

    class Opened(Aggregate.Created):
        mchid: str  # the merchant the ledger serves: a service provider's sp_mchid in partner mode
        out_trade_no: str
        sub_mchid: str | None = None  # partner mode: the payee; absent from orders opened before it existed

    def __init__(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> None:
        self.mchid = mchid
        self.out_trade_no = out_trade_no
        self.sub_mchid = sub_mchid
        self.combine_out_trade_no: str | None = None
        self.registered = False
        self.amount_total: int | None = None
        self.currency = "CNY"
        self.description = ""
        self.trade_state = "NOTPAY"
        self.transaction_id: str | None = None
        self.success_time: str | None = None
        self.paid = False
        self.paid_total: int | None = None
        self.payer_total: int | None = None
        self.refunds: dict[str, dict[str, Any]] = {}
        self.anomalies: list[dict[str, Any]] = []
        self.anomaly_keys: set[str] = set()
        self.queries = 0
        self.last_queried_at: dt.datetime | None = None
        self.bill_discrepancies: list[dict[str, Any]] = []
        self.bill_discrepancy_keys: set[str] = set()
        self._init_log()
        self._init_requests()
        self._init_actions()

    @classmethod
    def open(cls, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> PaymentOrder:
        partner = {} if sub_mchid is None else {"sub_mchid": sub_mchid}
        stream = order_id(mchid, out_trade_no, sub_mchid)
        return cls._create(cls.Opened, id=stream, mchid=mchid, out_trade_no=out_trade_no, **partner)

    @property
    def key(self) -> OrderKey:
        return OrderKey(self.mchid, self.out_trade_no, self.sub_mchid)

    def summary(self) -> dict[str, Any]:
        """The order's current state as the API and the read model show it (JSON-ready)."""
        return {
            "out_trade_no": self.out_trade_no,
            "mchid": self.mchid,
            "sp_mchid": self.mchid if self.sub_mchid is not None else None,
            "sub_mchid": self.sub_mchid,
            "combine_out_trade_no": self.combine_out_trade_no,
            "registered": self.registered,
            "trade_state": self.trade_state,
            "amount_total": self.amount_total,
            "currency": self.currency,
            "description": self.description,
            "transaction_id": self.transaction_id,
            "success_time": self.success_time,
            "paid_total": self.paid_total,
            "payer_total": self.payer_total,
            "refunded_total": self.refunded_total,
            "refunds": sorted(self.refunds.values(), key=lambda r: r["out_refund_no"]),
            "anomalies": [{**a, "acknowledged": self.acknowledged.get(a["key"])} for a in self.anomalies],
            "open_anomalies": self.open_anomalies,
            "operator_actions": self.operator_actions,
            "bill_discrepancies": self.bill_discrepancies,
            "deliveries": self.deliveries,
            **self.requests_summary(),
            "version": self.version,
        }

    @property
    def refunded_total(self) -> int:
        return sum(r["refund"] for r in self.refunds.values() if r["status"] == "SUCCESS")

    # -- events --------------------------------------------------------------------------

    class Registered(Aggregate.Event):
        amount_total: int
        currency: str
        description: str
        combine_out_trade_no: str | None = None  # a sub-order of a combined payment: its combination

        def apply(self, order: PaymentOrder) -> None:
            order.registered = True
            order.amount_total = self.amount_total
            order.currency = self.currency
            order.description = self.description
            order.combine_out_trade_no = self.combine_out_trade_no

    class PaymentSucceeded(Aggregate.Event):
        transaction_id: str
        amount_total: int | None
        payer_total: int | None
        currency: str
        success_time: str
        trade_type: str
        evidence: str

        def apply(self, order: PaymentOrder) -> None:
            if order.trade_state != "REFUND":
                order.trade_state = "SUCCESS"
            order.paid = True
            order.transaction_id = self.transaction_id
            order.success_time = self.success_time
            order.paid_total = self.amount_total
            order.payer_total = self.payer_total
            if order.amount_total is None:
                order.amount_total = self.amount_total

    class _RefundDecision(Aggregate.Event):
        out_refund_no: str
        refund_id: str
        refund: int
        success_time: str
        transaction_id: str
        evidence: str

        status = ""

        def apply(self, order: PaymentOrder) -> None:
            order.refunds[self.out_refund_no] = {
                "out_refund_no": self.out_refund_no,
                "refund_id": self.refund_id,
                "refund": self.refund,
                "status": self.status,
                "success_time": self.success_time or None,
            }
            if self.status == "SUCCESS":
                order.trade_state = "REFUND"
            if order.transaction_id is None and self.transaction_id:
                order.transaction_id = self.transaction_id

    class RefundSucceeded(_RefundDecision):
        status = "SUCCESS"

    class RefundClosed(_RefundDecision):
        status = "CLOSED"

    class RefundAbnormal(_RefundDecision):
        status = "ABNORMAL"

    class StatusQueried(Aggregate.Event):
        query: str
        status_code: int
        raw_body: str
        response_headers: dict[str, str]
        key_serial: str
        request_id: str
        transaction: dict[str, Any]
        queried_at: dt.datetime

        def apply(self, order: PaymentOrder) -> None:
            order.queries += 1
            order.last_queried_at = self.queried_at

    class TradeStateChanged(Aggregate.Event):
        from_state: str
        to_state: str
        trade_state_desc: str
        evidence: str

        def apply(self, order: PaymentOrder) -> None:
            order.trade_state = self.to_state

    class AnomalyDetected(Aggregate.Event):
        kind: str  # an AnomalyKind value
        key: str
        detail: dict[str, Any]
        evidence: str

        def apply(self, order: PaymentOrder) -> None:
            order.anomaly_keys.add(self.key)
            order.anomalies.append(
                {"kind": self.kind, "key": self.key, "detail": self.detail, "evidence": self.evidence}
            )

    class BillDiscrepancy(Aggregate.Event):
        """WeChat's daily bill and the ledger disagree about this order ([protocol: Daily bills])."""

        bill_date: str  # the bill's Beijing day, YYYY-MM-DD
        kind: str  # missing_in_ledger, missing_in_bill or amount_mismatch (ledger.bill_matching)
        key: str
        transaction_id: str
        out_refund_no: str | None
        refund_id: str | None
        bill_amount: int | None
        ledger_amount: int | None
        evidence: str  # "bill:<bill kind>:<bill_date>:<sha1>": the kept bill it follows from

        def apply(self, order: PaymentOrder) -> None:
            order.bill_discrepancy_keys.add(self.key)
            shown = ("bill_date", "kind", "transaction_id", "out_refund_no", "refund_id", "bill_amount")
            order.bill_discrepancies.append(
                {name: getattr(self, name) for name in (*shown, "ledger_amount", "evidence")}
            )

    # -- commands ------------------------------------------------------------------------

    def register(
        self, amount_total: int, currency: str, description: str, combine_out_trade_no: str | None = None
    ) -> bool:
        """Register the expected order; False when already registered identically.

        Raises OrderConflict when registered with different details.
        """
        details = (amount_total, currency, description, combine_out_trade_no)
        if self.registered:
            if (self.amount_total, self.currency, self.description, self.combine_out_trade_no) == details:
                return False
            raise OrderConflict(f"order {self.out_trade_no} registered with different details")
        combined = {} if combine_out_trade_no is None else {"combine_out_trade_no": combine_out_trade_no}
        self.trigger_event(
            self.Registered, amount_total=amount_total, currency=currency, description=description, **combined
        )
        if self.paid and self.paid_total != amount_total:
            self._anomaly(
                AnomalyKind.AMOUNT_MISMATCH,
                f"amount_mismatch:payment:{self.transaction_id}",
                {"expected": amount_total, "actual": self.paid_total, "field": "amount.total"},
                source="registration",
            )
        return True

    def receive(
        self, evidence: Evidence, *, expected_appid: str | None = None, sub_mchids: frozenset[str] | None = None
    ) -> Outcome:
        """Record a delivery and derive whatever decisions it supports. `sub_mchids`: a service
        provider's sub-merchants (a partner order of another one is decided, and flagged)."""
        if not self._record_delivery(evidence):
            return Outcome.DUPLICATE
        if self.sub_mchid is not None and sub_mchids is not None and self.sub_mchid not in sub_mchids:
            sub, detail = self.sub_mchid, {"sub_mchid": self.sub_mchid, "known": sorted(sub_mchids)}
            self._anomaly(AnomalyKind.SUB_MCHID_UNKNOWN, f"sub_mchid_unknown:{sub}", detail, evidence.notification_id)
        first_digest = self.resource_digests[evidence.notification_id]
        if first_digest != evidence.resource_digest:
            self._anomaly(
                AnomalyKind.NOTIFICATION_CONFLICT,
                f"notification_conflict:{evidence.notification_id}:{evidence.resource_digest}",
                {"notification_id": evidence.notification_id},
                evidence.notification_id,
            )
            return Outcome.RECORDED
        if evidence.event_type == "TRANSACTION.SUCCESS":
            self._decide_payment(own_transaction(evidence.resource, self.key), evidence.notification_id, expected_appid)
        elif evidence.event_type in {"REFUND.SUCCESS", "REFUND.CLOSED", "REFUND.ABNORMAL"}:
            status = evidence.event_type.removeprefix("REFUND.")
            self._decide_refund(evidence.resource, evidence.notification_id, status)
        return Outcome.RECORDED

    def record_query(self, evidence: QueryEvidence, *, expected_appid: str | None = None) -> None:
        """Record a verified query answer and fold it into the same decisions as a callback."""
        self.trigger_event(
            self.StatusQueried,
            query=evidence.query,
            status_code=evidence.status_code,
            raw_body=evidence.raw_body,
            response_headers=dict(evidence.response_headers),
            key_serial=evidence.key_serial,
            request_id=evidence.request_id,
            transaction=evidence.transaction,
            queried_at=evidence.queried_at,
        )
        source = f"query:{evidence.request_id}"
        if evidence.query == "refund":  # [protocol: Querying a refund]: it decides that refund, nothing else
            refund = refund_answer_as_resource(evidence.transaction, self.key)
            if refund["refund_status"] in self.REFUND_DECISIONS:
                self._decide_refund(refund, source, refund["refund_status"])
            return
        transaction = own_transaction(evidence.transaction, self.key)
        state = _str(transaction, "trade_state")
        if state in {"SUCCESS", "REFUND"}:
            self._decide_payment(transaction, source, expected_appid)
            if state == "REFUND" and self.paid and self.trade_state != "REFUND":
                self._change_state("REFUND", transaction, source)
        elif state in OPEN_TRADE_STATES | FINAL_TRADE_STATES and not self.paid:
            if self.trade_state in OPEN_TRADE_STATES and state != self.trade_state:
                if self._identity_matches(transaction, source, expected_appid):
                    self._change_state(state, transaction, source)

    def note_bill_discrepancy(self, *, bill_date: str, kind: str, evidence: str, **found: Any) -> bool:
        """A bill's difference (`found`: ids and both amounts), once per bill: False when already recorded."""
        refund = found["refund_id"] or found["out_refund_no"]
        key = f"bill:{bill_date}:{kind}:" + (f"refund:{refund}" if refund else f"payment:{found['transaction_id']}")
        if key in self.bill_discrepancy_keys:
            return False
        self.trigger_event(self.BillDiscrepancy, bill_date=bill_date, kind=kind, key=key, evidence=evidence, **found)
        return True

    @property
    def is_final(self) -> bool:
        return self.trade_state in FINAL_TRADE_STATES

    # -- decisions -----------------------------------------------------------------------

    # `source` names the evidence a decision follows from: a notification id, "query:<request id>"
    # or "registration"; decision events store it in their `evidence` field.

    def _anomaly(self, kind: AnomalyKind, key: str, detail: dict[str, Any], source: str) -> None:
        if key not in self.anomaly_keys:
            self.trigger_event(self.AnomalyDetected, kind=kind.value, key=key, detail=detail, evidence=source)

    def _change_state(self, to_state: str, resource: dict[str, Any], source: str) -> None:
        self.trigger_event(
            self.TradeStateChanged,
            from_state=self.trade_state,
            to_state=to_state,
            trade_state_desc=_str(resource, "trade_state_desc"),
            evidence=source,
        )

    def _identity_matches(self, resource: dict[str, Any], source: str, expected_appid: str | None) -> bool:
        # [protocol: Service providers]: a partner resource names the provider (sp_) and the payee (sub_).
        partner = self.sub_mchid is not None
        mchid = f"{_str(resource, 'sp_mchid')}/{_str(resource, 'sub_mchid')}" if partner else _str(resource, "mchid")
        expected = f"{self.mchid}/{self.sub_mchid}" if partner else self.mchid
        if mchid != expected:
            self._anomaly(
                AnomalyKind.MCHID_MISMATCH, f"mchid_mismatch:{source}", {"expected": expected, "actual": mchid}, source
            )
            return False
        appid = resource.get("sp_appid" if partner else "appid")
        if expected_appid is not None and appid is not None and appid != expected_appid:
            self._anomaly(
                AnomalyKind.APPID_MISMATCH,
                f"appid_mismatch:{source}",
                {"expected": expected_appid, "actual": str(appid)},
                source,
            )
            return False
        return True

    def _check_total(self, resource: dict[str, Any], subject: str, source: str) -> None:
        total = _fen(resource, "total")
        currency = _amount_object(resource).get("currency")
        if self.registered and total != self.amount_total:
            self._anomaly(
                AnomalyKind.AMOUNT_MISMATCH,
                f"amount_mismatch:{subject}",
                {"expected": self.amount_total, "actual": total, "field": "amount.total"},
                source,
            )
        elif self.registered and currency is not None and currency != self.currency:
            self._anomaly(
                AnomalyKind.CURRENCY_MISMATCH,
                f"currency_mismatch:{subject}",
                {"expected": self.currency, "actual": str(currency), "field": "amount.currency"},
                source,
            )

    def _decide_payment(self, resource: dict[str, Any], source: str, expected_appid: str | None) -> None:
        if resource.get("trade_state") not in {"SUCCESS", "REFUND"}:
            return
        if not self._identity_matches(resource, source, expected_appid):
            return
        transaction_id = _str(resource, "transaction_id")
        self._check_total(resource, f"payment:{transaction_id}", source)
        if self.paid:
            if transaction_id and transaction_id != self.transaction_id:
                self._anomaly(
                    AnomalyKind.TRANSACTION_CONFLICT,
                    f"transaction_conflict:{transaction_id}",
                    {"expected": self.transaction_id, "actual": transaction_id},
                    source,
                )
            return
        amount = _amount_object(resource)
        self.trigger_event(
            self.PaymentSucceeded,
            transaction_id=transaction_id,
            amount_total=_fen(resource, "total"),
            payer_total=_fen(resource, "payer_total"),
            currency=str(amount.get("currency") or "CNY"),
            success_time=_str(resource, "success_time"),
            trade_type=_str(resource, "trade_type"),
            evidence=source,
        )
        self._after_payment(source)

    def _decide_refund(self, resource: dict[str, Any], source: str, event_status: str) -> None:
        out_refund_no = _str(resource, "out_refund_no")
        status = _str(resource, "refund_status") or event_status
        if not out_refund_no or status != event_status or not self._identity_matches(resource, source, None):
            return
        refund = _fen(resource, "refund")
        current = self.refunds.get(out_refund_no, {}).get("status")
        if current in self.FINAL_REFUND_STATES or current == status or refund is None:
            return
        self._check_total(resource, f"refund:{out_refund_no}", source)
        decision = {"SUCCESS": self.RefundSucceeded, "CLOSED": self.RefundClosed, "ABNORMAL": self.RefundAbnormal}
        self.trigger_event(
            decision[status],
            out_refund_no=out_refund_no,
            refund_id=_str(resource, "refund_id"),
            refund=refund,
            success_time=_str(resource, "success_time"),
            transaction_id=_str(resource, "transaction_id"),
            evidence=source,
        )
        ceiling = self.paid_total if self.paid_total is not None else _fen(resource, "total")
        if status == "SUCCESS" and ceiling is not None and self.refunded_total > ceiling:
            self._anomaly(
                AnomalyKind.OVER_REFUND,
                f"over_refund:{out_refund_no}",
                {"paid": ceiling, "refunded_total": self.refunded_total},
                source,
            )


# -- the events of an order, named once --------------------------------------------------------
# Every event class of a PaymentOrder is either evidence or a decision (a test keeps it so). The
# read model, the outbound notifications, the metrics, the events API, `payledger verify` and
# the reconciler all follow these lists; a new event is added here, and only here.

# What an order's decisions are derived from: the order's identity (Opened: the mchid every
# identity check is against), the merchant's registration (the amount a payment is checked
# against), each verified delivery and query answer, and what the ledger asked (refunds, a close:
# `ledger.order_requests`) with WeChat's answers.
EVIDENCE_EVENTS: tuple[type[Aggregate.Event], ...] = (
    PaymentOrder.Opened,
    PaymentOrder.Registered,
    PaymentOrder.NotificationReceived,
    PaymentOrder.StatusQueried,
    *(PaymentOrder.RefundRequested, PaymentOrder.RefundAnswered, PaymentOrder.RefundRejected),
    PaymentOrder.OrderClosed,
    *(PaymentOrder.AnomalyAcknowledged, PaymentOrder.OperatorActed),
)
# What the ledger asked, WeChat's answers, what operators did: replayed as recorded when decisions are re-derived.
REQUEST_EVENTS: tuple[type[Aggregate.Event], ...] = EVIDENCE_EVENTS[4:]

# What the ledger concluded from its evidence; `payledger verify` re-derives each of them, the metrics
# count them by type. TradeStateChanged is one too: a query found a trade state the ledger had not
# concluded (USERPAYING, CLOSED, REVOKED, PAYERROR on an unpaid order; REFUND on a paid one).
DECISION_EVENTS: tuple[type[Aggregate.Event], ...] = (
    PaymentOrder.PaymentSucceeded,
    PaymentOrder.RefundSucceeded,
    PaymentOrder.RefundClosed,
    PaymentOrder.RefundAbnormal,
    PaymentOrder.TradeStateChanged,
    PaymentOrder.AnomalyDetected,
    PaymentOrder.BillDiscrepancy,
)

# The decisions whose evidence is not in the order's stream but in a kept daily bill (the stream of
# the `BillStatement` their `evidence` names): `payledger verify` checks that bill is kept with
# that SHA-1 instead of re-deriving them from the order's own evidence.
BILL_DECISION_EVENTS: tuple[type[Aggregate.Event], ...] = (PaymentOrder.BillDiscrepancy,)

ALL_EVENTS: tuple[type[Aggregate.Event], ...] = EVIDENCE_EVENTS + DECISION_EVENTS

# The events sent to business endpoints as outbound notifications: payments, refunds and anomalies,
# and refunds asked, refused and closes. A trade state a query found is read from the orders API, a
# bill's differences from the bills API (finance's work list, not a business event).
WEBHOOK_EVENTS: tuple[type[Aggregate.Event], ...] = (
    *(cls for cls in DECISION_EVENTS if cls not in (PaymentOrder.TradeStateChanged, PaymentOrder.BillDiscrepancy)),
    *(PaymentOrder.RefundRequested, PaymentOrder.RefundRejected, PaymentOrder.OrderClosed),
)

# What opens and closes an order's payment question: a registration says a payment is expected,
# a payment decision or a change of trade state may answer it. (A refund is not one: it follows a
# payment, and the payment's decision answers the question.)
PAYMENT_LIFECYCLE_EVENTS: tuple[type[Aggregate.Event], ...] = (
    PaymentOrder.Registered,
    PaymentOrder.PaymentSucceeded,
    PaymentOrder.TradeStateChanged,
)
