"""A day's trade bill and the ledger's decisions: what matching means ([protocol: Daily bills]).

WeChat's trade bill is its own account of a Beijing day; the ledger's books agree with it when
every payment line is a payment the ledger decided, with the same amount, every refund line a
refund it decided, with the same amount, and every payment the ledger decided that day is in the
bill. Each difference is a `Discrepancy` of one of three kinds (a public contract).

This module holds the vocabulary and the rules that need no store: which bill lines take part
(`staged_lines`, which also adds up the day's totals as the bill streams by), what each line is
compared on, and which payments belong to a Beijing day (`on_day`). The comparison itself is a
set operation that the store does (`projections.bills.lines`): a bill can hold a million lines,
and a join in the database costs a fraction of looking each line up from Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from ledger.wechatpay.bills import BEIJING, TradeBillRow

__all__ = [
    "PAYMENT_STATE",
    "REFUND_STATE",
    "BillMatch",
    "Discrepancy",
    "DiscrepancyKind",
    "StagedLine",
    "beijing_day",
    "on_day",
    "staged_lines",
]

PAYMENT_STATE = "SUCCESS"
REFUND_STATE = "REFUND"


class DiscrepancyKind(StrEnum):
    """Why the bill and the ledger disagree on one payment or refund (a public contract)."""

    MISSING_IN_LEDGER = "missing_in_ledger"  # the bill has it, the ledger has no decision
    MISSING_IN_BILL = "missing_in_bill"  # the ledger decided a payment on the day, the bill lacks it
    AMOUNT_MISMATCH = "amount_mismatch"  # both have it, with different amounts


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

    def counts(self) -> dict[str, Any]:
        """The bill's counts and totals without the differences (fees as the exact decimal string)."""
        return {
            "rows": self.rows,
            "payments": self.payments,
            "refunds": self.refunds,
            "payments_fen": self.payments_fen,
            "refunds_fen": self.refunds_fen,
            "fees": str(self.fees),
        }

    @classmethod
    def from_counts(cls, bill_date: date, counts: dict[str, Any]) -> BillMatch:
        return cls(
            bill_date,
            rows=int(counts["rows"]),
            payments=int(counts["payments"]),
            refunds=int(counts["refunds"]),
            payments_fen=int(counts["payments_fen"]),
            refunds_fen=int(counts["refunds_fen"]),
            fees=Decimal(counts["fees"]),
        )


class StagedLine(NamedTuple):
    """A payment or refund line as matching compares it; '' for an id the line lacks.

    `amount` is what the line is compared on: 订单金额 (amount_total) for a payment, 退款金额 for a
    refund; `fee` is 手续费 as written (yuan, up to 5 decimals), so an order's fee is exact."""

    seq: int  # the line's place among the bill's lines, from 0: differences are reported in bill order
    kind: Literal["payment", "refund"]
    transaction_id: str
    out_trade_no: str
    refund_id: str
    out_refund_no: str
    sub_mchid: str
    amount: int
    fee: str


def staged_lines(rows: Iterable[TradeBillRow], report: BillMatch) -> Iterator[StagedLine]:
    """The payment lines (交易状态 SUCCESS) and refund lines (REFUND) of a trade bill, as they stream by,
    adding every line to `report`'s counts and totals; lines in any other state are counted only.

    A refund line's 退款状态 is a snapshot, not compared. A `TradeBill` checks its summary as its last
    line goes by, so a bad summary raises `BillMalformed` from here, after the last line."""
    for seq, row in enumerate(rows):
        report.rows += 1
        report.fees += row.fee
        if row.trade_state == PAYMENT_STATE:
            report.payments += 1
            report.payments_fen += row.amount_total_fen
            kind: Literal["payment", "refund"] = "payment"
            amount = row.amount_total_fen
        elif row.trade_state == REFUND_STATE:
            report.refunds += 1
            report.refunds_fen += row.refund_fen
            kind, amount = "refund", row.refund_fen
        else:
            continue
        yield StagedLine(
            seq,
            kind,
            row.transaction_id,
            row.out_trade_no,
            row.refund_id or "",
            row.out_refund_no or "",
            row.sub_mchid or "",
            amount,
            str(row.fee),
        )


def beijing_day(moment: datetime) -> date:
    """The Beijing day of an aware time: a bill's day turns over at 00:00 Beijing time."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a success_time must be timezone-aware")
    return moment.astimezone(BEIJING).date()


def on_day(success_time: str | None, day: date) -> bool:
    """Whether a payment decided at `success_time` (WeChat's RFC 3339 text, as the ledger kept it)
    falls on Beijing day `day`. A text written without an offset is Beijing time, as all of WeChat's
    are; one that is no time at all (a payment decided on a resource without one) is on no day."""
    try:
        moment = datetime.fromisoformat(success_time or "")
    except ValueError:
        return False
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=BEIJING)
    return beijing_day(moment) == day
