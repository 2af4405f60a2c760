"""Domain values built by hand: evidence as the verifier gives it, a status-query answer, a replay.

(The signing side, deliveries as WeChat Pay sends them, lives in ledger.wechatpay.sandbox.signer.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from ledger.domain import Evidence, PaymentOrder, QueryEvidence
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import APPID, MCHID

__all__ = ["event_types", "evidence", "new_order", "pay", "query_answer", "refund", "replay"]


def evidence(
    resource: dict[str, Any],
    event_type: str = "TRANSACTION.SUCCESS",
    *,
    notification_id: str = "n-1",
    attempt: int = 0,
) -> Evidence:
    """Evidence as the verifier would produce it; `attempt` varies the signature (a retry)."""
    body = json.dumps({"id": notification_id, "event_type": event_type, "resource": "..."})
    digest = hashlib.sha256(json.dumps(resource, sort_keys=True).encode()).hexdigest()
    return Evidence(
        notification_id=notification_id,
        event_type=event_type,
        delivery_key=hashlib.sha256(f"{notification_id}/{attempt}/{digest}".encode()).hexdigest(),
        key_serial="PUB_KEY_ID_0001",
        raw_body=body,
        signature_headers={"Wechatpay-Timestamp": str(1_700_000_000 + attempt)},
        envelope={"id": notification_id, "event_type": event_type},
        resource=resource,
        resource_digest=digest,
        received_at=dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
    )


def replay(order: PaymentOrder, events: list[Any]) -> PaymentOrder:
    """Rebuild an aggregate from its events alone, as the repository does."""
    rebuilt: Any = None
    for event in events:
        rebuilt = event.mutate(rebuilt)
    assert isinstance(rebuilt, PaymentOrder)
    return rebuilt


def event_types(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def query_answer(transaction: dict[str, Any]) -> QueryEvidence:
    """A verified status-query answer carrying `transaction` (WeChat's `trade_state`, amounts)."""
    return QueryEvidence(
        query="out-trade-no",
        status_code=200,
        raw_body=json.dumps({"trade_state": transaction["trade_state"]}, separators=(",", ":")),
        response_headers={"Request-ID": "08F78BB5AF0610"},
        key_serial="PUB_KEY_ID_0114232134912410000000000000",
        request_id="08F78BB5AF0610",
        transaction=transaction,
        queried_at=dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC),
    )


# One order, ORDER-0001 of MCHID, as the domain's tests build it: its payment and refund resources
# as WeChat sends them (transaction 4200000000000000000000000001), and the order registered for 100 fen.
WECHAT = NotificationFactory(mchid=MCHID, appid=APPID)


def pay(total: int = 100, **kwargs: Any) -> dict[str, Any]:
    return WECHAT.transaction("ORDER-0001", total, transaction_id="4200000000000000000000000001", **kwargs)


def refund(no: str, amount: int, status: str = "SUCCESS") -> dict[str, Any]:
    return WECHAT.refund(
        "ORDER-0001",
        no,
        amount,
        100,
        refund_status=status,
        refund_id=f"RID-{no}",
        transaction_id="4200000000000000000000000001",
    )


def new_order(registered: int | None = 100) -> PaymentOrder:
    order = PaymentOrder.open(MCHID, "ORDER-0001")
    if registered is not None:
        order.register(registered, "CNY", "")
    order.collect_events()
    return order
