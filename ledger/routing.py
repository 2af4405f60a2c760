"""Recording a notification: the evidence a verified delivery becomes, the streams it goes to (every
order it names, or its inbox when it names none) and what it decides there.

One piece of code for both writers: `Ledger.record_notification` (one delivery: one read and one save,
retried on a conflict) and the group committer (a batch: one read and one save for all of them).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger.domain import Evidence, NotificationInbox, Outcome, PaymentOrder, inbox_id
from ledger.identity import OrderKey, orders_named
from ledger.wechatpay.notification import VerifiedNotification, resource_digest
from ledger.wechatpay.v2 import V2_KEY_SERIAL, V2Notification, v2_delivery

__all__ = ["RecordResult", "Route", "evidence_from", "v2_evidence"]


@dataclass(frozen=True)
class RecordResult:
    outcome: Outcome
    stream_id: UUID
    version: int
    routed_to_order: bool

    @classmethod
    def of(cls, outcome: Outcome, stream: PaymentOrder | NotificationInbox) -> RecordResult:
        """The result of a delivery that `stream` (the first it went to) now holds, as saved."""
        return cls(outcome, stream.id, stream.version, isinstance(stream, PaymentOrder))


@dataclass
class Route:
    """A verified notification of merchant `mchid` (APIv3, or APIv2 already as evidence) on its way to
    the streams it settles; `expected_appid` and `sub_mchids` as `PaymentOrder.receive` takes them."""

    mchid: str
    notification: VerifiedNotification | Evidence
    expected_appid: str | None = None
    sub_mchids: frozenset[str] | None = None

    @functools.cached_property
    def evidence(self) -> Evidence:
        notification = self.notification
        return notification if isinstance(notification, Evidence) else evidence_from(notification)

    @functools.cached_property
    def orders(self) -> list[OrderKey]:
        """The orders the notification names (several for a combined payment); none: its inbox."""
        return orders_named(self.mchid, self.notification.resource)

    @functools.cached_property
    def stream_ids(self) -> list[UUID]:
        if not self.orders:
            return [inbox_id(self.mchid, self.evidence.notification_id)]
        return [key.stream_id for key in self.orders]

    def decide(self, streams: dict[UUID, Any]) -> tuple[Outcome, PaymentOrder | NotificationInbox]:
        """Receive the evidence in every stream it goes to; the outcome (recorded if any stream recorded
        it) and the first stream. `streams` are the current aggregates by id, those never saved absent: a
        missing one is opened and put in, so deliveries decided in turn on the same `streams` see each
        other, and saving `streams.values()` writes all they decided."""
        evidence = self.evidence
        if not self.orders:
            [stream_id] = self.stream_ids
            inbox = streams.get(stream_id) or NotificationInbox.open(self.mchid, evidence.notification_id)
            streams[stream_id] = inbox
            return inbox.receive(evidence), inbox
        recorded = False
        for key, stream_id in zip(self.orders, self.stream_ids, strict=True):
            order = streams.get(stream_id) or PaymentOrder.open(key.mchid, key.out_trade_no, key.sub_mchid)
            streams[stream_id] = order
            outcome = order.receive(evidence, expected_appid=self.expected_appid, sub_mchids=self.sub_mchids)
            recorded = recorded or outcome is Outcome.RECORDED
        return Outcome.RECORDED if recorded else Outcome.DUPLICATE, streams[self.stream_ids[0]]


def evidence_from(notification: VerifiedNotification) -> Evidence:
    return Evidence(
        notification_id=notification.id,
        event_type=notification.event_type,
        delivery_key=notification.delivery_key,
        key_serial=notification.key_serial,
        raw_body=notification.body.decode("utf-8"),
        signature_headers=notification.headers.as_dict(),
        envelope=_envelope_metadata(notification.envelope),
        resource=notification.resource,
        resource_digest=notification.resource_digest,
        received_at=notification.received_at,
    )


def v2_evidence(notification: V2Notification, received_at: dt.datetime | None = None) -> Evidence:
    """A legacy APIv2 notification (sign verified, or `req_info` decrypted) as a delivery: its raw XML
    kept for the auditor, no signature headers, the key serial `APIv2`, and the resource an APIv3
    notification would carry (`ledger.wechatpay.v2.v2_delivery`)."""
    delivery = v2_delivery(notification)
    return Evidence(
        notification_id=delivery.notification_id,
        event_type=delivery.event_type,
        delivery_key=delivery.delivery_key,
        key_serial=V2_KEY_SERIAL,
        raw_body=notification.raw.decode("utf-8"),
        signature_headers={},
        envelope={"id": delivery.notification_id, "event_type": delivery.event_type, "api": "v2"},
        resource=delivery.resource,
        resource_digest=resource_digest(delivery.resource),
        received_at=received_at or dt.datetime.now(dt.UTC),
    )


def _envelope_metadata(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope as stored: the ciphertext is left out, the raw body already carries it."""
    resource = envelope.get("resource")
    if not isinstance(resource, dict):
        return dict(envelope)
    return {**envelope, "resource": {k: v for k, v in resource.items() if k != "ciphertext"}}
