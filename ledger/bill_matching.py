"""A day's trade bill matched against the ledger's decisions ([protocol: Daily bills]).

WeChat's trade bill is its own account of a Beijing day; the ledger's books agree with it when
every payment line is a payment the ledger decided, with the same amount, every refund line a
refund it decided, with the same amount, and every payment the ledger decided that day is in the
bill. Each difference is a `Discrepancy` of one of three kinds (a public contract). This module
only compares: no I/O of its own, no events; the caller reads the bill, answers `LedgerFacts`
from its store, and turns the report into events and answers.

A bill can hold a million lines, so it is matched as it streams: lines are looked up in batches
(one `payments` and one `refunds` call per batch), and only a compact trace of the payment
lines seen is kept for the last step (the ledger's payments the bill lacks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from itertools import islice
from typing import Any, Literal, Protocol

from ledger.wechatpay.bills import BEIJING, TradeBillRow

__all__ = [
    "BATCH_SIZE",
    "BillMatch",
    "Discrepancy",
    "DiscrepancyKind",
    "LedgerFacts",
    "MatchCallback",
    "PaymentFact",
    "RefundFact",
    "beijing_day",
    "match_trade_bill",
]

BATCH_SIZE = 5_000
"""Bill lines per lookup: a 1,000,000-line bill costs 200 `payments` and 200 `refunds` calls at most."""

PAYMENT_STATE = "SUCCESS"
REFUND_STATE = "REFUND"


class DiscrepancyKind(StrEnum):
    """Why the bill and the ledger disagree on one payment or refund (a public contract)."""

    MISSING_IN_LEDGER = "missing_in_ledger"  # the bill has it, the ledger has no decision
    MISSING_IN_BILL = "missing_in_bill"  # the ledger decided a payment on the day, the bill lacks it
    AMOUNT_MISMATCH = "amount_mismatch"  # both have it, with different amounts


@dataclass(frozen=True, slots=True)
class PaymentFact:
    """A `PaymentSucceeded` of the ledger, as matching needs it; `success_time` is timezone-aware."""

    mchid: str
    out_trade_no: str
    transaction_id: str
    amount_total_fen: int
    success_time: datetime
    sub_mchid: str | None = None  # a service provider's order: its sub-merchant


@dataclass(frozen=True, slots=True)
class RefundFact:
    """A `RefundSucceeded` of the ledger, as matching needs it."""

    mchid: str
    out_trade_no: str
    out_refund_no: str
    refund_id: str
    refund_fen: int
    sub_mchid: str | None = None


class LedgerFacts(Protocol):
    """The ledger's decisions, looked up in batches so that a big bill costs few queries."""

    def payments(self, keys: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], PaymentFact]:
        """The payments among `keys` (transaction_id, out_trade_no) the ledger decided; absent ones are left out."""
        ...

    def refunds(self, refund_ids: Sequence[str]) -> Mapping[str, RefundFact]:
        """The refunds among `refund_ids` the ledger decided; absent ones are left out."""
        ...

    def payments_on(self, day: date) -> Iterable[PaymentFact]:
        """The payments whose success_time is on `day` in Beijing time (more may be given: they are filtered)."""
        ...


MatchCallback = Callable[[Literal["payment", "refund"], PaymentFact | RefundFact, Decimal], None]
"""Told of every bill line the ledger has (amounts equal or not), with the line's fee (手续费)."""


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One difference; amounts in fen, None on the side that does not have it."""

    kind: DiscrepancyKind
    out_trade_no: str
    transaction_id: str
    out_refund_no: str | None = None
    refund_id: str | None = None
    bill_amount: int | None = None
    ledger_amount: int | None = None
    resolved: bool = False
    sub_mchid: str | None = None  # a service provider's order: its sub-merchant (特约商户号)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "out_trade_no": self.out_trade_no,
            "sub_mchid": self.sub_mchid,
            "transaction_id": self.transaction_id,
            "out_refund_no": self.out_refund_no,
            "refund_id": self.refund_id,
            "bill_amount": self.bill_amount,
            "ledger_amount": self.ledger_amount,
            "resolved": self.resolved,
        }


@dataclass(slots=True)
class BillMatch:
    """The report: what the bill held, its totals, and every difference found (in bill order, then the ledger's)."""

    bill_date: date
    rows: int = 0
    payments: int = 0
    refunds: int = 0
    payments_fen: int = 0  # 订单金额 of the payment lines
    refunds_fen: int = 0  # 退款金额 of the refund lines
    fees: Decimal = field(default_factory=Decimal)  # 手续费 of every line, exactly as written
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def agreed(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        """The report's `bill` counts, `totals` (fen; fees as a decimal string) and `discrepancies`."""
        return {
            "bill": {"rows": self.rows, "payments": self.payments, "refunds": self.refunds},
            "totals": {"payments": self.payments_fen, "refunds": self.refunds_fen, "fees": str(self.fees)},
            "discrepancies": [found.to_json() for found in self.discrepancies],
        }


def beijing_day(moment: datetime) -> date:
    """The Beijing day of an aware time: a bill's day turns over at 00:00 Beijing time."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a success_time must be timezone-aware")
    return moment.astimezone(BEIJING).date()


class _SeenIds:
    """The (transaction_id, out_trade_no) of the bill's payment lines, exactly.

    A ledger of record may not miss a difference by chance, so the keys themselves are kept, as
    bytes (about 95 MB for a million lines, measured with tracemalloc; a set of str costs about
    110 MB). Hashing them to 8 bytes would cost 8 MB but could, rarely, hide a `missing_in_bill`.
    """

    def __init__(self) -> None:
        self._keys: set[bytes] = set()

    @staticmethod
    def _key(transaction_id: str, out_trade_no: str) -> bytes:
        # NUL occurs in neither id, so ("ab", "c") and ("a", "bc") differ.
        return f"{transaction_id}\x00{out_trade_no}".encode()

    def add(self, transaction_id: str, out_trade_no: str) -> None:
        self._keys.add(self._key(transaction_id, out_trade_no))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return self._key(*key) in self._keys


def match_trade_bill(
    rows: Iterable[TradeBillRow],
    bill_date: date,
    facts: LedgerFacts,
    *,
    on_match: MatchCallback | None = None,
    batch_size: int = BATCH_SIZE,
) -> BillMatch:
    """Match a trade bill's lines for `bill_date` (a Beijing day) against the ledger's decisions.

    Payment lines (交易状态 SUCCESS) are matched by transaction_id and out_trade_no on 订单金额;
    refund lines (REFUND) by refund_id on 退款金额 (their 退款状态 is a snapshot, not compared);
    lines in any other state are counted only. Then every payment of the ledger on `bill_date`
    that no payment line named (by both ids) is `missing_in_bill`. A `TradeBill` checks its
    summary as its last line goes by, so a bad summary raises `BillMalformed` from here.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = BillMatch(bill_date=bill_date)
    seen = _SeenIds()
    lines = iter(rows)
    while batch := list(islice(lines, batch_size)):
        _match_batch(batch, facts, report, seen, on_match)
    for fact in facts.payments_on(bill_date):
        if beijing_day(fact.success_time) == bill_date and (fact.transaction_id, fact.out_trade_no) not in seen:
            report.discrepancies.append(
                Discrepancy(
                    DiscrepancyKind.MISSING_IN_BILL,
                    out_trade_no=fact.out_trade_no,
                    transaction_id=fact.transaction_id,
                    ledger_amount=fact.amount_total_fen,
                    sub_mchid=fact.sub_mchid,
                )
            )
    return report


def _match_batch(
    batch: list[TradeBillRow],
    facts: LedgerFacts,
    report: BillMatch,
    seen: _SeenIds,
    on_match: MatchCallback | None,
) -> None:
    payment_keys = list(
        dict.fromkeys((row.transaction_id, row.out_trade_no) for row in batch if row.trade_state == PAYMENT_STATE)
    )
    refund_ids = list(
        dict.fromkeys(row.refund_id for row in batch if row.trade_state == REFUND_STATE and row.refund_id)
    )
    payments = facts.payments(payment_keys) if payment_keys else {}
    refunds = facts.refunds(refund_ids) if refund_ids else {}
    for row in batch:
        report.rows += 1
        report.fees += row.fee
        if row.trade_state == PAYMENT_STATE:
            report.payments += 1
            report.payments_fen += row.amount_total_fen
            seen.add(row.transaction_id, row.out_trade_no)
            payment = payments.get((row.transaction_id, row.out_trade_no))
            _compare(report, row, payment, row.amount_total_fen, "payment", on_match)
        elif row.trade_state == REFUND_STATE:
            report.refunds += 1
            report.refunds_fen += row.refund_fen
            refund = refunds.get(row.refund_id) if row.refund_id else None
            _compare(report, row, refund, row.refund_fen, "refund", on_match)


def _compare(
    report: BillMatch,
    row: TradeBillRow,
    fact: PaymentFact | RefundFact | None,
    bill_amount: int,
    kind: Literal["payment", "refund"],
    on_match: MatchCallback | None,
) -> None:
    refund = kind == "refund"
    if fact is None:
        ledger_amount = None
        found = DiscrepancyKind.MISSING_IN_LEDGER
    else:
        if on_match is not None:
            on_match(kind, fact, row.fee)
        ledger_amount = fact.refund_fen if isinstance(fact, RefundFact) else fact.amount_total_fen
        if ledger_amount == bill_amount:
            return
        found = DiscrepancyKind.AMOUNT_MISMATCH
    report.discrepancies.append(
        Discrepancy(
            found,
            out_trade_no=row.out_trade_no,
            transaction_id=row.transaction_id,
            out_refund_no=row.out_refund_no if refund else None,
            refund_id=row.refund_id if refund else None,
            bill_amount=bill_amount,
            ledger_amount=ledger_amount,
            sub_mchid=row.sub_mchid or (fact.sub_mchid if fact is not None else None),
        )
    )
