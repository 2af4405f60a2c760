"""Ledgers filled with orders through the real verifier: the realistic content tests read back, and
the check that the orders view holds them as the ledger replays them."""

from __future__ import annotations

from collections.abc import Iterable

from ledger.application import Ledger
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.view import OrdersView
from tests.support.constants import MCHID

__all__ = ["as_replayed", "fill"]


def fill(ledger: Ledger, factory: NotificationFactory, count: int, offset: int = 0) -> list[str]:
    """`count` orders ORDER-8xxx: two in three paid, one in three refunded; their numbers."""
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    numbers = []
    for i in range(offset, offset + count):
        no = f"ORDER-8{i:03d}"
        ledger.register_order(MCHID, no, 100 + i)
        if i % 3 != 2:
            d = factory.paid(no, 100 + i)
            ledger.record_notification(MCHID, verifier.verify(d.headers, d.body))
        if i % 3 == 0:
            d = factory.refunded(no, f"R-{no}", 10, 100 + i)
            ledger.record_notification(MCHID, verifier.verify(d.headers, d.body))
        numbers.append(no)
    return numbers


def as_replayed(view: OrdersView, ledger: Ledger, numbers: Iterable[str]) -> None:
    """Each of the orders `numbers` is in `view` with the document its stream replays to."""
    for no in numbers:
        row = view.get(MCHID, no)
        assert row is not None, f"{no} is not in the view"
        assert row["document"] == ledger.get_order(MCHID, no).summary(), no
