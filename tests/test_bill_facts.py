"""The ledger's side of bill matching answered from the orders read model ([protocol: Daily bills]):
a payment is the bill's only under the bill's transaction_id, only decided payments and succeeded
refunds count, a day's payments are read in keyset pages across Beijing midnight, one merchant at a
time, and the view's indexes for it exist on views made before them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.bill_matching import DiscrepancyKind, PaymentFact, RefundFact, beijing_day, match_trade_bill
from ledger.store.sql import Database
from ledger.wechatpay.bills import BEIJING, read_trade_bill
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.bills.facts import OrdersViewFacts
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


def _fact(out_trade_no: str, at: str) -> PaymentFact:
    return PaymentFact(MCHID, out_trade_no, _tid(out_trade_no), _amount(out_trade_no), datetime.fromisoformat(at))


def test_payments_are_the_decided_ones_under_the_bills_transaction_id(world: OrdersView) -> None:
    facts = OrdersViewFacts(lambda: world, MCHID)
    keys = [
        (T_PAID, "ORD-PAID"),
        (T_REAL, "ORD-OTHER-TID"),
        (T_BILL, "ORD-OTHER-TID"),  # the order was paid under another transaction_id: not this one
        (_tid("ORD-UNPAID"), "ORD-UNPAID"),  # registered, never paid
        (REFUND_FIRST_TID, "ORD-REFUND-FIRST"),  # a transaction_id from a refund, no payment
        (T_OTHER_MERCHANT, "ORD-PAID"),  # the other merchant's payment of the same out_trade_no
        (T_PAID, "ORD-NEVER-HEARD-OF"),
    ]
    found = facts.payments(keys)
    assert found == {
        (T_PAID, "ORD-PAID"): _fact("ORD-PAID", ON_THE_DAY["ORD-PAID"]),
        (T_REAL, "ORD-OTHER-TID"): _fact("ORD-OTHER-TID", ON_THE_DAY["ORD-OTHER-TID"]),
    }
    paid = found[(T_PAID, "ORD-PAID")].success_time
    assert paid.utcoffset() == timedelta(hours=8) and paid == datetime(2026, 12, 2, 10, tzinfo=BEIJING)
    assert OrdersViewFacts(lambda: world, OTHER_MCHID).payments(
        [(T_OTHER_MERCHANT, "ORD-PAID"), (T_PAID, "ORD-PAID")]
    ) == {
        (T_OTHER_MERCHANT, "ORD-PAID"): PaymentFact(
            OTHER_MCHID, "ORD-PAID", T_OTHER_MERCHANT, _amount("ORD-PAID"), datetime(2026, 12, 2, 10, tzinfo=BEIJING)
        )
    }


def test_refunds_are_the_succeeded_ones(world: OrdersView) -> None:
    found = OrdersViewFacts(lambda: world, MCHID).refunds(
        [RID_OK, RID_CLOSED, RID_FIRST, "50300000000000000000000000099"]
    )
    assert found == {
        RID_OK: RefundFact(MCHID, "ORD-PAID", "R-OK", RID_OK, 300),
        RID_FIRST: RefundFact(MCHID, "ORD-REFUND-FIRST", "R-FIRST", RID_FIRST, 100),
    }
    assert OrdersViewFacts(lambda: world, OTHER_MCHID).refunds([RID_OK]) == {}


def test_payments_on_a_day_hold_every_payment_of_its_beijing_day_and_no_other_merchants(world: OrdersView) -> None:
    given = list(OrdersViewFacts(lambda: world, MCHID).payments_on(DAY))
    on_the_day = {fact.out_trade_no: fact for fact in given if beijing_day(fact.success_time) == DAY}
    assert on_the_day == {no: _fact(no, at) for no, at in ON_THE_DAY.items()}
    # A superset around the day (what the matcher filters), never the far days nor the other merchant.
    assert {fact.out_trade_no for fact in given} - on_the_day.keys() <= {"ORD-EVE", "ORD-NEXT"}
    assert all(fact.mchid == MCHID for fact in given) and len(given) == len({f.out_trade_no for f in given})
    assert [fact.out_trade_no for fact in OrdersViewFacts(lambda: world, OTHER_MCHID).payments_on(DAY)] == ["ORD-PAID"]
    assert list(OrdersViewFacts(lambda: world, MCHID).payments_on(date(2026, 12, 6))) == []


def test_payments_on_a_day_come_in_keyset_pages_lazily(world: OrdersView, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = list(OrdersViewFacts(lambda: world, MCHID).payments_on(DAY))
    pages: list[int] = []
    original = world.paid_between

    def counted(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        page = original(*args, **kwargs)
        assert len(page) <= kwargs["limit"] == 2
        pages.append(len(page))
        return page

    monkeypatch.setattr(world, "paid_between", counted)
    paged = OrdersViewFacts(lambda: world, MCHID, page_size=2).payments_on(DAY)
    assert pages == []  # nothing read before the first payment is asked for
    first = next(iter(paged))
    assert pages == [2]
    rest = [first, *paged]
    # Three payments at the same second straddle a page boundary: none skipped, none twice.
    assert rest == whole and len(whole) == 11
    assert pages == [2, 2, 2, 2, 2, 1]
    with pytest.raises(ValueError, match="page_size"):
        OrdersViewFacts(lambda: world, MCHID, page_size=0)


def test_a_trade_bill_matched_against_the_read_model(world: OrdersView, database_url: str) -> None:
    """The facts as the matcher uses them, through the live version of the view."""
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
    pointer = Database(database_url, pool_size=1)
    live = LiveOrdersView(pointer)
    try:
        report = match_trade_bill(read_trade_bill([bill]), DAY, OrdersViewFacts(live.current, MCHID), batch_size=3)
    finally:
        live.close()
        pointer.close()
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
        assert len(OrdersViewFacts(lambda: reopened, MCHID).refunds([RID_OK])) == 1
    finally:
        reopened.close()
