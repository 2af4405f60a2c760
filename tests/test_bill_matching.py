"""A day's trade bill matched against the ledger's decisions ([protocol: Daily bills]; [protocol: The trade bill's
format]): a day that agrees reports nothing, each discrepancy kind is found alone, the day is a Beijing day, lookups
come in batches, and the public 45-row fixture agrees with facts made from it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from ledger.bill_matching import (
    BillMatch,
    Discrepancy,
    DiscrepancyKind,
    PaymentFact,
    RefundFact,
    match_trade_bill,
)
from ledger.wechatpay.bills import BEIJING, read_trade_bill
from tests.support.bills import MCHID, BillLine, payment_line, refund_line, trade_bill
from tests.support.constants import VECTORS_PATH

D = date(2024, 5, 20)
PAID = datetime(2024, 5, 20, 2, 15, 32, tzinfo=UTC)  # 10:15:32 Beijing on D
TID1, TID2, TID3 = "4200002211202405201234567890", "4200002211202405201234567891", "4200002211202405201234567892"
RID1 = "50300908092024052012345678901"


class FakeFacts:
    """The ledger's decisions in memory; counts every lookup and the keys it was asked for."""

    def __init__(self, payments: Iterable[PaymentFact] = (), refunds: Iterable[RefundFact] = ()) -> None:
        self._payments = {(fact.transaction_id, fact.out_trade_no): fact for fact in payments}
        self._refunds = {fact.refund_id: fact for fact in refunds}
        self.payment_lookups: list[int] = []
        self.refund_lookups: list[int] = []

    def payments(self, keys: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], PaymentFact]:
        self.payment_lookups.append(len(keys))
        return {key: self._payments[key] for key in keys if key in self._payments}

    def refunds(self, refund_ids: Sequence[str]) -> Mapping[str, RefundFact]:
        self.refund_lookups.append(len(refund_ids))
        return {rid: self._refunds[rid] for rid in refund_ids if rid in self._refunds}

    def payments_on(self, day: date) -> Iterable[PaymentFact]:
        return list(self._payments.values())  # every payment: the Beijing-day filter is the matcher's


def _payment(tid: str, otn: str, fen: int, at: datetime = PAID) -> PaymentFact:
    return PaymentFact(mchid=MCHID, out_trade_no=otn, transaction_id=tid, amount_total_fen=fen, success_time=at)


def _refund(otn: str, ron: str, rid: str, fen: int) -> RefundFact:
    return RefundFact(mchid=MCHID, out_trade_no=otn, out_refund_no=ron, refund_id=rid, refund_fen=fen)


def _match(facts: FakeFacts, *lines: BillLine, day: date = D) -> BillMatch:
    return match_trade_bill(read_trade_bill([trade_bill(*lines)]), day, facts)


# The day the sandbox would write: two payments, a refund of the first.
LINES = (
    payment_line(TID1, "ORD1", 8800, fee="0.53000"),
    payment_line(TID2, "ORD2", 10000, fee="0.60000"),
    refund_line(TID1, "ORD1", RID1, "REF1", 3000, fee="-0.18000"),
)
FACTS = (_payment(TID1, "ORD1", 8800), _payment(TID2, "ORD2", 10000))
REFUNDS = (_refund("ORD1", "REF1", RID1, 3000),)


def test_a_day_that_agrees_reports_no_discrepancy_and_the_bills_totals() -> None:
    matched: list[tuple[str, object, Decimal]] = []
    facts = FakeFacts(FACTS, REFUNDS)
    report = match_trade_bill(
        read_trade_bill([trade_bill(*LINES)]),
        D,
        facts,
        on_match=lambda kind, fact, fee: matched.append((kind, fact, fee)),
    )

    assert report.agreed and report.discrepancies == []
    assert (report.rows, report.payments, report.refunds) == (3, 2, 1)
    assert report.to_json() == {
        "bill": {"rows": 3, "payments": 2, "refunds": 1},
        "totals": {"payments": 18800, "refunds": 3000, "fees": "0.95000"},
        "discrepancies": [],
    }
    assert matched == [
        ("payment", FACTS[0], Decimal("0.53000")),
        ("payment", FACTS[1], Decimal("0.60000")),
        ("refund", REFUNDS[0], Decimal("-0.18000")),
    ]


def test_a_payment_line_the_ledger_has_no_decision_for_is_missing_in_ledger() -> None:
    report = _match(FakeFacts(FACTS, REFUNDS), *LINES, payment_line(TID3, "ORD3", 500))

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.MISSING_IN_LEDGER, "ORD3", TID3, bill_amount=500, ledger_amount=None)
    ]


def test_a_payment_line_is_matched_by_transaction_id_and_out_trade_no_together() -> None:
    report = _match(FakeFacts(FACTS, REFUNDS), payment_line(TID1, "ORD-OTHER", 8800), *LINES[1:])

    assert [(found.kind, found.out_trade_no) for found in report.discrepancies] == [
        (DiscrepancyKind.MISSING_IN_LEDGER, "ORD-OTHER"),
        (DiscrepancyKind.MISSING_IN_BILL, "ORD1"),
    ]


def test_a_payment_the_ledger_decided_on_the_day_that_the_bill_lacks_is_missing_in_bill() -> None:
    report = _match(FakeFacts((*FACTS, _payment(TID3, "ORD3", 500)), REFUNDS), *LINES)

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


def test_a_payment_amount_that_differs_is_an_amount_mismatch_and_its_fee_is_still_passed_on() -> None:
    matched: list[object] = []
    facts = FakeFacts((_payment(TID1, "ORD1", 8800), _payment(TID2, "ORD2", 9999)), REFUNDS)
    report = match_trade_bill(
        read_trade_bill([trade_bill(*LINES)]), D, facts, on_match=lambda kind, fact, fee: matched.append(fact)
    )

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.AMOUNT_MISMATCH, "ORD2", TID2, bill_amount=10000, ledger_amount=9999)
    ]
    assert len(matched) == 3


def test_a_refund_amount_that_differs_is_an_amount_mismatch_naming_the_refund() -> None:
    report = _match(FakeFacts(FACTS, (_refund("ORD1", "REF1", RID1, 2999),)), *LINES)

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.AMOUNT_MISMATCH, "ORD1", TID1, "REF1", RID1, bill_amount=3000, ledger_amount=2999)
    ]


def test_a_refund_line_the_ledger_has_no_refund_for_is_missing_in_ledger_with_its_refund_id() -> None:
    report = _match(FakeFacts(FACTS), *LINES)

    assert report.discrepancies == [
        Discrepancy(DiscrepancyKind.MISSING_IN_LEDGER, "ORD1", TID1, "REF1", RID1, bill_amount=3000)
    ]
    assert report.to_json()["discrepancies"][0]["refund_id"] == RID1


def test_only_payments_on_the_bills_beijing_day_can_be_missing_from_it() -> None:
    # [protocol: Applying for a bill]: the bill day turns over at 00:00 Beijing time; the facts are in UTC.
    first_second = _payment("4200000000000000000000000001", "FIRST", 1, datetime(2024, 5, 19, 16, 0, 0, tzinfo=UTC))
    last_second = _payment("4200000000000000000000000002", "LAST", 2, datetime(2024, 5, 20, 15, 59, 59, tzinfo=UTC))
    next_day = _payment("4200000000000000000000000003", "NEXT", 3, datetime(2024, 5, 20, 16, 0, 1, tzinfo=UTC))
    report = _match(FakeFacts((*FACTS, first_second, last_second, next_day), REFUNDS), *LINES)

    assert [(found.kind, found.out_trade_no) for found in report.discrepancies] == [
        (DiscrepancyKind.MISSING_IN_BILL, "FIRST"),
        (DiscrepancyKind.MISSING_IN_BILL, "LAST"),
    ]
    assert next_day.success_time.astimezone(BEIJING).date() == date(2024, 5, 21)


def test_a_naive_success_time_is_refused_rather_than_guessed() -> None:
    naive = _payment(TID3, "ORD3", 1, datetime(2024, 5, 20, 12, 0, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        _match(FakeFacts((*FACTS, naive), REFUNDS), *LINES)


def test_12000_lines_cost_3_payment_lookups_of_at_most_5000_keys() -> None:
    lines = [payment_line(f"42000000002024052{i:011d}", f"ORD{i}", 100 + i) for i in range(12_000)]
    facts = FakeFacts([_payment(line.transaction_id, line.out_trade_no, line.amount_total_fen) for line in lines])
    report = _match(facts, *lines)

    assert report.agreed and report.payments == 12_000
    assert facts.payment_lookups == [5_000, 5_000, 2_000]
    assert facts.refund_lookups == []


def test_the_public_45_row_fixture_agrees_with_facts_made_from_it() -> None:
    path = VECTORS_PATH.parent / "bills" / "public-fixture.ALL.csv"
    with path.open("rb") as file:
        rows = list(read_trade_bill(file))
    payments = [
        _payment(row.transaction_id, row.out_trade_no, row.amount_total_fen, row.trade_time.astimezone(UTC))
        for row in rows
        if row.trade_state == "SUCCESS"
    ]
    refunds = [
        _refund(row.out_trade_no, row.out_refund_no or "", row.refund_id or "", row.refund_fen)
        for row in rows
        if row.trade_state == "REFUND"
    ]
    fees: list[Decimal] = []

    with path.open("rb") as file:
        report = match_trade_bill(
            read_trade_bill(file),
            date(2019, 2, 19),
            FakeFacts(payments, refunds),
            on_match=lambda k, f, fee: fees.append(fee),
        )

    assert report.discrepancies == []
    assert (report.rows, report.payments, report.refunds) == (45, 31, 14)
    assert (report.payments_fen, report.refunds_fen, report.fees) == (47, 14, Decimal("0.08"))
    assert len(fees) == 45 and sum(fees) == Decimal("0.08")


def test_a_fixture_payment_changed_by_one_fen_is_the_only_discrepancy() -> None:
    path = VECTORS_PATH.parent / "bills" / "public-fixture.ALL.csv"
    with path.open("rb") as file:
        rows = list(read_trade_bill(file))
    paid = [row for row in rows if row.trade_state == "SUCCESS"]
    payments = [_payment(row.transaction_id, row.out_trade_no, row.amount_total_fen, row.trade_time) for row in paid]
    payments[5] = _payment(
        paid[5].transaction_id, paid[5].out_trade_no, paid[5].amount_total_fen + 1, paid[5].trade_time
    )
    refunds = [
        _refund(row.out_trade_no, row.out_refund_no or "", row.refund_id or "", row.refund_fen)
        for row in rows
        if row.trade_state == "REFUND"
    ]

    report = match_trade_bill(rows, date(2019, 2, 19), FakeFacts(payments, refunds))

    assert [(found.kind, found.transaction_id) for found in report.discrepancies] == [
        (DiscrepancyKind.AMOUNT_MISMATCH, paid[5].transaction_id)
    ]
