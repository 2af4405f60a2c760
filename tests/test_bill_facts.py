"""The ledger's side of bill matching answered from the orders read model ([protocol: Daily bills]),
with decisions made by real notifications: a payment is the bill's only under the bill's
transaction_id, only decided payments and succeeded refunds count, a day's payments are found
across Beijing midnight whatever zone their time is written in, one merchant at a time, through
the live version of the view, and the view's indexes for it exist on views made before them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, datetime

import pytest

from ledger.application import Ledger
from ledger.bill_matching import DiscrepancyKind
from ledger.store.sql import Database
from ledger.wechatpay.bills import BEIJING, read_trade_bill
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.bills.lines import BillLines
from projections.read_model.reader import LiveOrdersView
from projections.read_model.runner import open_orders_view
from projections.read_model.view import OrdersView
from tests.support.bills import payment_line, refund_line, trade_bill
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up

DAY = date(2026, 12, 2)
OTHER_MCHID = "1900000999"
T_PAID, T_REAL, T_BILL, T_OTHER_MERCHANT = (f"42000000002026120200000000{n:02d}" for n in range(4))
REFUND_FIRST_TID = "4200000000002104083200000488"  # the sandbox's refund resource names this one
RID_OK, RID_CLOSED, RID_FIRST = (f"503000000020261202000000000{n:02d}" for n in range(3))

# The day's payments of MCHID as WeChat writes their times, and some of the days around.
ON_THE_DAY = {
    "ORD-PAID": "2026-12-02T10:00:00+08:00",
    "ORD-OTHER-TID": "2026-12-02T11:00:00+08:00",
    "ORD-DAWN": "2026-12-02T00:00:00+08:00",
    "ORD-DUSK": "2026-12-02T23:59:59+08:00",
    "ORD-MILLIS": "2026-12-02T13:29:35.120+08:00",
    "ORD-UTC": "2026-12-01T16:30:00+00:00",  # 00:30 in Beijing: on the day, written from another zone
    "ORD-TIE-1": "2026-12-02T12:00:00+08:00",
    "ORD-TIE-2": "2026-12-02T12:00:00+08:00",
    "ORD-TIE-3": "2026-12-02T12:00:00+08:00",
}
AROUND = {
    "ORD-EVE": "2026-12-01T23:59:59+08:00",
    "ORD-NEXT": "2026-12-03T00:00:00+08:00",
    "ORD-FAR": "2026-11-27T10:34:56+08:00",
}
TIDS = {
    **{no: f"42000000002026113000{n:08d}" for n, no in enumerate([*ON_THE_DAY, *AROUND, "ORD-UNPAID"])},
    "ORD-PAID": T_PAID,
    "ORD-OTHER-TID": T_REAL,
}


def _tid(out_trade_no: str) -> str:
    return TIDS[out_trade_no]


def _amount(out_trade_no: str) -> int:
    return 1000 + sum(map(ord, out_trade_no))


class Book:
    """Notifications into the ledger through the real verifier."""

    def __init__(self, ledger: Ledger, factory: NotificationFactory) -> None:
        self.ledger = ledger
        self.factory = factory
        self.verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())

    def _record(self, mchid: str, body: bytes) -> None:
        delivery = self.factory.deliver(body)
        self.ledger.record_notification(mchid, self.verifier.verify(delivery.headers, delivery.body))

    def pay(self, out_trade_no: str, success_time: str, *, mchid: str = MCHID, transaction_id: str = "") -> None:
        resource = self.factory.transaction(
            out_trade_no,
            _amount(out_trade_no),
            transaction_id=transaction_id or _tid(out_trade_no),
            success_time=success_time,
            mchid=mchid,
        )
        self._record(mchid, self.factory.envelope(resource))

    def refund(self, out_trade_no: str, out_refund_no: str, refund_id: str, fen: int, status: str) -> None:
        resource = self.factory.refund(
            out_trade_no, out_refund_no, fen, _amount(out_trade_no), refund_status=status, refund_id=refund_id
        )
        self._record(MCHID, self.factory.envelope(resource, f"REFUND.{status}"))


@pytest.fixture
def world(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> Iterator[OrdersView]:
    """The ledger's orders of the scenario above, projected; the orders view."""
    book = Book(ledger_factory(), factory)
    for out_trade_no, at in {**ON_THE_DAY, **AROUND}.items():
        book.pay(out_trade_no, at)
    book.ledger.register_order(MCHID, "ORD-UNPAID", 700)
    book.refund("ORD-PAID", "R-OK", RID_OK, 300, "SUCCESS")
    book.refund("ORD-PAID", "R-CLOSED", RID_CLOSED, 200, "CLOSED")
    # A refund heard of before the payment: the order has a transaction_id, yet no payment decided.
    book.refund("ORD-REFUND-FIRST", "R-FIRST", RID_FIRST, 100, "SUCCESS")
    # Another merchant's order with the same out_trade_no, paid the same day.
    book.pay("ORD-PAID", ON_THE_DAY["ORD-PAID"], mchid=OTHER_MCHID, transaction_id=T_OTHER_MERCHANT)
    project_until_caught_up(database_url, book.ledger)
    view = open_orders_view(database_url)
    try:
        yield view
    finally:
        view.close()


def test_a_trade_bill_matched_against_the_read_model(world: OrdersView, database_url: str) -> None:
    """Lines loaded and matched as a run does, through the live version of the view: an order paid
    under another transaction, a closed refund, the day's edges (Beijing midnight, another zone,
    milliseconds), a refund decided before its payment, the days around and another merchant."""
    at = datetime(2026, 12, 2, 10, tzinfo=BEIJING)
    bill = trade_bill(
        *(
            payment_line(_tid(no), no, _amount(no), at=at)
            for no in ON_THE_DAY
            if no not in ("ORD-DUSK", "ORD-OTHER-TID")
        ),
        payment_line(T_BILL, "ORD-OTHER-TID", _amount("ORD-OTHER-TID"), at=at),
        refund_line(T_PAID, "ORD-PAID", RID_OK, "R-OK", 300),
        refund_line(T_PAID, "ORD-PAID", RID_CLOSED, "R-CLOSED", 200),
    )
    database = Database(database_url)
    live = LiveOrdersView(database)
    try:
        lines = BillLines(database)
        report = lines.load(MCHID, DAY, "0" * 40, read_trade_bill([bill]))
        report.discrepancies = lines.match(MCHID, DAY, live.current())
        # The other merchant's order of the same number, paid the same day, is not in this merchant's bill.
        assert [(d.kind, d.transaction_id) for d in lines.match(OTHER_MCHID, DAY, live.current())] == [
            (DiscrepancyKind.MISSING_IN_BILL, T_OTHER_MERCHANT)
        ]
    finally:
        live.close()
        database.close()
    found = {(d.kind, d.out_trade_no, d.transaction_id, d.refund_id) for d in report.discrepancies}
    assert found == {
        (DiscrepancyKind.MISSING_IN_LEDGER, "ORD-OTHER-TID", T_BILL, None),
        (DiscrepancyKind.MISSING_IN_LEDGER, "ORD-PAID", T_PAID, RID_CLOSED),
        (DiscrepancyKind.MISSING_IN_BILL, "ORD-DUSK", _tid("ORD-DUSK"), None),
        (DiscrepancyKind.MISSING_IN_BILL, "ORD-OTHER-TID", T_REAL, None),
    }
    assert (report.payments, report.refunds) == (len(ON_THE_DAY) - 1, 2)


def _indexes(view: OrdersView) -> set[str]:
    with view.transaction(commit=False) as curs:
        if view.dialect == "postgres":
            curs.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", [view.schema])
        else:
            curs.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {row[0] for row in curs.fetchall()}


def test_the_bill_indexes_are_made_also_on_a_view_made_before_them(world: OrdersView, database_url: str) -> None:
    wanted = {"orders_view_orders_paid", "orders_view_refunds_id"}
    assert wanted <= _indexes(world)
    with world.transaction() as curs:  # the view as a version without them left it
        for index in wanted:
            curs.execute(f"DROP INDEX {world.qualify(index)}")
    assert not wanted & _indexes(world)
    reopened = open_orders_view(database_url)
    try:
        assert wanted <= _indexes(reopened)
        database = Database(database_url)
        try:
            lines = BillLines(database)
            bill = trade_bill(refund_line(T_PAID, "ORD-PAID", RID_OK, "R-OK", 300))
            lines.load(MCHID, DAY, "0" * 40, read_trade_bill([bill]))
            found = lines.match(MCHID, DAY, reopened)
            # The refund agrees; every payment of the day is missing from a bill that has none.
            assert {(d.kind, d.out_trade_no) for d in found} == {
                (DiscrepancyKind.MISSING_IN_BILL, no) for no in ON_THE_DAY
            }
        finally:
            database.close()
    finally:
        reopened.close()
