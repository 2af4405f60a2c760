"""A day's trade bill matched against the ledger's decisions ([protocol: Daily bills]; [protocol: The trade bill's
format]): a day that agrees reports nothing, each discrepancy kind is found alone, the day is a Beijing day, a bill
is read once and matched by joins in the store, and the public 45-row fixture agrees with a ledger made from it.
On SQLite and PostgreSQL: the decisions are rows of the orders read model, written directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from ledger.bill_matching import BillMatch, Discrepancy, DiscrepancyKind, on_day
from ledger.errors import BillMalformed
from ledger.store.sql import Database
from ledger.wechatpay.bills import BEIJING, TradeBillRow, read_trade_bill
from projections.bills.lines import BillLines
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDER_FIELDS, REFUND_FIELDS, OrdersView
from tests.support.bills import MCHID, BillLine, payment_line, refund_line, trade_bill
from tests.support.constants import VECTORS_PATH

D = date(2024, 5, 20)
PAID = datetime(2024, 5, 20, 2, 15, 32, tzinfo=UTC)  # 10:15:32 Beijing on D
TID1, TID2, TID3 = "4200002211202405201234567890", "4200002211202405201234567891", "4200002211202405201234567892"
RID1 = "50300908092024052012345678901"
SHA1 = "0" * 40


class Books:
    """The ledger's decisions as rows of the orders read model, and a bill's lines loaded beside them."""

    def __init__(self, database_url: str) -> None:
        self.view: OrdersView = open_orders_view(database_url)
        self.database = Database(database_url)
        self.lines = BillLines(self.database)

    def paid(self, tid: str, otn: str, fen: int, at: datetime | str = PAID, *, sub_mchid: str = "") -> None:
        when = at if isinstance(at, str) else at.isoformat()
        order = {field: None for field in ORDER_FIELDS}
        order.update(
            mchid=MCHID, sub_mchid=sub_mchid, out_trade_no=otn, stream_id=otn, registered=True, trade_state="SUCCESS",
            amount_total=fen, transaction_id=tid, success_time=when, paid_total=fen, refunded_total=0,
            anomalies=0, open_anomalies=0, version=3, created_at=0.0, updated_at=0.0, document=json.dumps({}),
        )  # fmt: skip
        with self.view.transaction() as cur:
            self.view.upsert_many(cur, [order], [])

    def refunded(self, otn: str, ron: str, rid: str, fen: int, status: str = "SUCCESS") -> None:
        refund = dict.fromkeys(REFUND_FIELDS)
        refund.update(mchid=MCHID, sub_mchid="", out_refund_no=ron, out_trade_no=otn, refund_id=rid,
                      status=status, refund=fen)  # fmt: skip
        with self.view.transaction() as cur:
            self.view.upsert_many(cur, [], [refund])

    def match(self, rows: Any, day: date = D) -> BillMatch:
        report = self.lines.load(MCHID, day, SHA1, rows)
        report.discrepancies = self.lines.match(MCHID, day, self.view)
        return report

    def close(self) -> None:
        self.view.close()
        self.database.close()


@pytest.fixture
def books(database_url: str) -> Iterator[Books]:
    made = Books(database_url)
    try:
        yield made
    finally:
        made.close()


def _match(books: Books, *lines: BillLine, day: date = D) -> BillMatch:
    return books.match(read_trade_bill([trade_bill(*lines)]), day)


# The day the sandbox would write: two payments, a refund of the first.
LINES = (
    payment_line(TID1, "ORD1", 8800, fee="0.53000"),
    payment_line(TID2, "ORD2", 10000, fee="0.60000"),
    refund_line(TID1, "ORD1", RID1, "REF1", 3000, fee="-0.18000"),
)


def _decided(books: Books, *, second: int = 10000, refund: int | None = 3000) -> None:
    """The ledger's side of LINES: both payments (the second of `second` fen), the refund (if any)."""
    books.paid(TID1, "ORD1", 8800)
    books.paid(TID2, "ORD2", second)
    if refund is not None:
        books.refunded("ORD1", "REF1", RID1, refund)


def test_a_day_that_agrees_reports_no_discrepancy_and_the_bills_totals(books: Books) -> None:
    _decided(books)
    report = _match(books, *LINES)

    assert report.agreed and report.discrepancies == []
    assert (report.rows, report.payments, report.refunds) == (3, 2, 1)
    assert report.to_json() == {
        "bill": {"rows": 3, "payments": 2, "refunds": 1},
        "totals": {"payments": 18800, "refunds": 3000, "fees": "0.95000"},
        "discrepancies": [],
    }
    # Each line's fee, per order: the payment's less the refund's, exactly as the bill wrote them.
    assert books.lines.order_fee(MCHID, "ORD1") == Decimal("0.35000")
    assert books.lines.order_fee(MCHID, "ORD1", line_ids={TID1}) == Decimal("0.53000")
    assert books.lines.order_fee(MCHID, "ORD2") == Decimal("0.60000")
    assert books.lines.order_fee(MCHID, "ORD-NEVER-BILLED") is None


def test_a_payment_line_the_ledger_has_no_decision_for_is_missing_in_ledger(books: Books) -> None:
    _decided(books)
    report = _match(books, *LINES, payment_line(TID3, "ORD3", 500))

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.MISSING_IN_LEDGER, "ORD3", TID3, bill_amount=500, ledger_amount=None)
    ]


def test_a_payment_line_is_matched_by_transaction_id_and_out_trade_no_together(books: Books) -> None:
    _decided(books)
    report = _match(books, payment_line(TID1, "ORD-OTHER", 8800), *LINES[1:])

    assert [(found.kind, found.out_trade_no) for found in report.discrepancies] == [
        (DiscrepancyKind.MISSING_IN_LEDGER, "ORD-OTHER"),
        (DiscrepancyKind.MISSING_IN_BILL, "ORD1"),
    ]


def test_a_payment_the_ledger_decided_on_the_day_that_the_bill_lacks_is_missing_in_bill(books: Books) -> None:
    _decided(books)
    books.paid(TID3, "ORD3", 500)
    report = _match(books, *LINES)

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.MISSING_IN_BILL, "ORD3", TID3, bill_amount=None, ledger_amount=500)
    ]
    assert report.to_json()["discrepancies"] == [
        {
            "kind": "missing_in_bill",
            "out_trade_no": "ORD3",
            "sub_mchid": None,
            "transaction_id": TID3,
            "out_refund_no": None,
            "refund_id": None,
            "bill_amount": None,
            "ledger_amount": 500,
            "resolved": False,
        }
    ]


def test_a_payment_amount_that_differs_is_an_amount_mismatch_and_its_fee_is_still_kept(books: Books) -> None:
    _decided(books, second=9999)
    report = _match(books, *LINES)

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.AMOUNT_MISMATCH, "ORD2", TID2, bill_amount=10000, ledger_amount=9999)
    ]
    assert books.lines.order_fee(MCHID, "ORD2", line_ids={TID2}) == Decimal("0.60000")


def test_a_refund_amount_that_differs_is_an_amount_mismatch_naming_the_refund(books: Books) -> None:
    _decided(books, refund=2999)
    report = _match(books, *LINES)

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.AMOUNT_MISMATCH, "ORD1", TID1, "REF1", RID1, bill_amount=3000, ledger_amount=2999)
    ]


def test_a_refund_line_the_ledger_has_no_refund_for_is_missing_in_ledger_with_its_refund_id(books: Books) -> None:
    _decided(books, refund=None)
    books.refunded("ORD1", "REF1", RID1, 3000, status="CLOSED")  # a closed refund is no refund
    report = _match(books, *LINES)

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.MISSING_IN_LEDGER, "ORD1", TID1, "REF1", RID1, bill_amount=3000)
    ]
    assert report.to_json()["discrepancies"][0]["refund_id"] == RID1


def test_only_payments_on_the_bills_beijing_day_can_be_missing_from_it(books: Books) -> None:
    # [protocol: Applying for a bill]: the bill day turns over at 00:00 Beijing time, whatever zone a time is
    # written in; WeChat writes +08:00, and a time written without an offset is Beijing time.
    _decided(books)
    books.paid("4200000000000000000000000001", "FIRST", 1, "2024-05-20T00:00:00+08:00")
    books.paid("4200000000000000000000000002", "LAST", 2, "2024-05-20T15:59:59Z")
    books.paid("4200000000000000000000000003", "MILLIS", 3, "2024-05-20T23:59:59.999+08:00")
    books.paid("4200000000000000000000000004", "NAIVE", 4, "2024-05-20T12:00:00")
    books.paid("4200000000000000000000000005", "NEXT", 5, "2024-05-20T16:00:01+00:00")  # 00:00:01 on the 21st
    books.paid("4200000000000000000000000006", "EVE", 6, "2024-05-19T23:59:59+08:00")
    books.paid("4200000000000000000000000007", "UTC-EVE", 7, "2024-05-19T15:59:59+00:00")
    books.paid("4200000000000000000000000008", "GARBLED", 8, "2024-05-20 not a time")
    report = _match(books, *LINES)

    assert sorted(found.out_trade_no for found in report.discrepancies) == ["FIRST", "LAST", "MILLIS", "NAIVE"]
    assert {found.kind for found in report.discrepancies} == {DiscrepancyKind.MISSING_IN_BILL}


def test_the_beijing_day_of_a_success_time() -> None:
    assert on_day("2024-05-20T00:00:00+08:00", D) and not on_day("2024-05-19T23:59:59+08:00", D)
    assert on_day("2024-05-19T16:00:00Z", D) and not on_day("2024-05-20T16:00:00Z", D)
    assert on_day("2024-05-20T08:00:00", D)  # no offset: Beijing time, as all of WeChat's are
    assert not on_day("", D) and not on_day(None, D) and not on_day("yesterday", D)
    assert datetime(2024, 5, 20, 16, tzinfo=UTC).astimezone(BEIJING).date() == date(2024, 5, 21)


def test_a_bill_is_read_once_and_a_second_load_replaces_the_first(books: Books) -> None:
    _decided(books)
    first = _match(books, *LINES, payment_line(TID3, "ORD3", 500))
    assert books.lines.loaded(MCHID, D, SHA1) is not None and books.lines.loaded(MCHID, D, "1" * 40) is None
    kept = books.lines.loaded(MCHID, D, SHA1)
    assert kept is not None and kept.counts() == first.counts()
    again = _match(books, *LINES)  # the same day loaded again: the lines before are gone, not doubled
    assert again.agreed and books.lines.order_fee(MCHID, "ORD2") == Decimal("0.60000")


def test_a_bill_whose_summary_disagrees_leaves_no_line_behind(books: Books) -> None:
    _decided(books)
    text = trade_bill(*LINES).decode("utf-8-sig")
    bad = text.replace("`3,", "`4,", 1).encode()  # the summary's row count
    assert bad != text.encode()
    with pytest.raises(BillMalformed):
        books.match(read_trade_bill([bad]))
    assert books.lines.loaded(MCHID, D, SHA1) is None
    assert books.lines.order_fee(MCHID, "ORD1") is None


def test_a_day_is_loaded_in_chunks_and_matched_whole(books: Books, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("projections.bills.lines.CHUNK", 7)
    lines = [payment_line(f"42000000002024052{i:011d}", f"ORD{i}", 100 + i) for i in range(30)]
    for line in lines[1:]:
        books.paid(line.transaction_id, line.out_trade_no, line.amount_total_fen)
    books.paid(TID3, "ORD-UNBILLED", 1)
    report = _match(books, *lines)

    assert report.payments == 30
    assert [(found.kind, found.out_trade_no) for found in report.discrepancies] == [
        (DiscrepancyKind.MISSING_IN_LEDGER, "ORD0"),
        (DiscrepancyKind.MISSING_IN_BILL, "ORD-UNBILLED"),
    ]


def _fixture_rows() -> list[TradeBillRow]:
    path = VECTORS_PATH.parent / "bills" / "public-fixture.ALL.csv"
    with path.open("rb") as file:
        return list(read_trade_bill(file))


def _ledger_of(books: Books, rows: list[TradeBillRow], *, changed: int | None = None) -> list[TradeBillRow]:
    """The fixture's payments and refunds decided in the ledger (payment `changed` off by one fen)."""
    paid = [row for row in rows if row.trade_state == "SUCCESS"]
    for n, row in enumerate(paid):
        fen = row.amount_total_fen + (1 if n == changed else 0)
        books.paid(row.transaction_id, row.out_trade_no, fen, row.trade_time.astimezone(UTC))
    for row in rows:
        if row.trade_state == "REFUND":
            books.refunded(row.out_trade_no, row.out_refund_no or "", row.refund_id or "", row.refund_fen)
    return paid


def test_the_public_45_row_fixture_agrees_with_a_ledger_made_from_it(books: Books) -> None:
    rows = _fixture_rows()
    _ledger_of(books, rows)
    path = VECTORS_PATH.parent / "bills" / "public-fixture.ALL.csv"
    with path.open("rb") as file:
        report = books.match(read_trade_bill(file), date(2019, 2, 19))

    assert report.discrepancies == []
    assert (report.rows, report.payments, report.refunds) == (45, 31, 14)
    assert (report.payments_fen, report.refunds_fen, report.fees) == (47, 14, Decimal("0.08"))


def test_a_fixture_payment_changed_by_one_fen_is_the_only_discrepancy(books: Books) -> None:
    rows = _fixture_rows()
    paid = _ledger_of(books, rows, changed=5)

    report = books.match(rows, date(2019, 2, 19))

    assert [(found.kind, found.transaction_id) for found in report.discrepancies] == [
        (DiscrepancyKind.AMOUNT_MISMATCH, paid[5].transaction_id)
    ]
