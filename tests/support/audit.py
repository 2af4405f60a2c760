"""ORDER and its neighbours: a ledger holding every kind of evidence, for `verify` and its re-derivation."""

from __future__ import annotations

from typing import Any

from ledger.application import Ledger
from ledger.audit.integrity import Report
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import APPID, MCHID

__all__ = ["ORDER", "fill", "problems"]

ORDER = "ORDER-9001"


def fill(ledger: Ledger, factory: NotificationFactory) -> str:
    """Paid and refunded orders (one with a decimal in its resource), a retry, an inbox stream;
    returns the inbox notification's id."""
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())

    def record(delivery: Any) -> None:
        ledger.record_notification(MCHID, verifier.verify(delivery.headers, delivery.body), expected_appid=APPID)

    ledger.register_order(MCHID, ORDER, 100, "CNY", "茶")
    paid = factory.paid(ORDER, 100)
    record(paid)  # v3 NotificationReceived, v4 PaymentSucceeded
    record(paid)  # a byte-identical replay: no event
    record(factory.refunded(ORDER, "R-1", 40, 100))
    resource = {**factory.transaction("ORDER-9002", 300), "promotion_detail": [{"rate": 0.5}]}
    record(factory.deliver(factory.envelope(resource)))
    ledger.register_order(MCHID, "ORDER-9002", 200)  # an amount mismatch: AnomalyDetected
    body = factory.envelope({"mchid": MCHID, "out_contract_code": "C-1"}, "PAYSCORE.USER_OPEN_SERVICE")
    inbox = factory.deliver(body)
    record(inbox)
    return inbox.notification_id


def problems(report: Report) -> list[tuple[str, int, str]]:
    """A verify report's breaks as (stream name, version, problem)."""
    return [(b.name, b.version, b.problem) for b in report.breaks]
