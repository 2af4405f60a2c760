"""Bill reports and fees: the outcome of each day's reconciliation, kept beside the events.

A report is what `payledger bills reconcile` prints and `GET /bills/{bill_date}` answers. It is
derived: the bill is kept as evidence in the event store and every difference is an event in its
order's stream, so a report can always be made again by reconciling the day once more (no fetch:
the bill is kept). The fees table holds the fee (手续费) of every bill line the ledger has, so that
an order's net amount and a day's can be read without opening the bill.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ledger.bill_matching import Discrepancy, DiscrepancyKind
from ledger.store.sql import Database

__all__ = [
    "REPORT_STATUSES",
    "BillReport",
    "BillReports",
    "FeeLine",
    "ReportStatus",
    "fen_text",
]

ReportStatus = Literal["agreed", "discrepancies", "empty", "not_ready", "failed"]
REPORT_STATUSES: tuple[ReportStatus, ...] = ("agreed", "discrepancies", "empty", "not_ready", "failed")

REPORTS = "payledger_bill_reports"
FEES = "payledger_bill_fees"
FEES_BY_ORDER = "payledger_bill_fees_order"


def fen_text(yuan: Decimal) -> str:
    """A bill's yuan amount (a fee has 5 decimals) as fen, exactly: Decimal("0.00600") -> "0.600"."""
    return str((yuan * 100).quantize(Decimal("0.001")))


@dataclass(frozen=True, slots=True)
class FeeLine:
    """The fee of one bill line the ledger has: a payment (by transaction_id) or a refund (by refund_id)."""

    out_trade_no: str
    line: Literal["payment", "refund"]
    line_id: str
    fee: Decimal  # yuan, exactly as the bill writes it


@dataclass
class BillReport:
    """One reconciliation of one merchant's day; amounts in fen (fees as exact decimal strings)."""

    mchid: str
    bill_date: dt.date
    status: ReportStatus
    reconciled_at: dt.datetime
    reason: str | None = None  # why the bill could not be had (not_ready, failed): a fixed text
    sha1: str | None = None  # of the kept trade bill
    rows: int = 0
    payments: int = 0
    refunds: int = 0
    totals: dict[str, Any] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def unresolved(self) -> list[Discrepancy]:
        return [d for d in self.discrepancies if not d.resolved]

    @property
    def exit_code(self) -> int:
        """0 the books agree (or the day is empty), 1 unresolved differences remain, 2 no bill to match."""
        if self.status in ("not_ready", "failed"):
            return 2
        return 1 if self.unresolved else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "mchid": self.mchid,
            "bill_date": self.bill_date.isoformat(),
            "status": self.status,
            "reason": self.reason,
            "reconciled_at": self.reconciled_at.isoformat(),
            "bill": {"rows": self.rows, "payments": self.payments, "refunds": self.refunds, "sha1": self.sha1},
            "totals": dict(self.totals),
            "discrepancies": [d.to_json() for d in self.discrepancies],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BillReport:
        bill = data.get("bill") or {}
        return cls(
            mchid=data["mchid"],
            bill_date=dt.date.fromisoformat(data["bill_date"]),
            status=data["status"],
            reason=data.get("reason"),
            reconciled_at=dt.datetime.fromisoformat(data["reconciled_at"]),
            sha1=bill.get("sha1"),
            rows=int(bill.get("rows") or 0),
            payments=int(bill.get("payments") or 0),
            refunds=int(bill.get("refunds") or 0),
            totals=dict(data.get("totals") or {}),
            discrepancies=[_discrepancy(d) for d in data.get("discrepancies") or []],
        )


def _discrepancy(data: dict[str, Any]) -> Discrepancy:
    return Discrepancy(
        DiscrepancyKind(data["kind"]),
        out_trade_no=data["out_trade_no"],
        transaction_id=data["transaction_id"],
        out_refund_no=data.get("out_refund_no"),
        refund_id=data.get("refund_id"),
        bill_amount=data.get("bill_amount"),
        ledger_amount=data.get("ledger_amount"),
        resolved=bool(data.get("resolved")),
        sub_mchid=data.get("sub_mchid"),
    )


class BillReports:
    """The reports and fee tables on `database` (created if missing); the caller closes the database."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._slots = {"reports": database.qualify(REPORTS), "fees": database.qualify(FEES), "by_order": FEES_BY_ORDER}
        with self._db.ddl() as cur:  # every process creates them on start: they take turns
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {reports} (mchid TEXT NOT NULL, bill_date TEXT NOT NULL,"
                    " status TEXT NOT NULL, reconciled_at DOUBLE PRECISION NOT NULL, report TEXT NOT NULL,"
                    " PRIMARY KEY (mchid, bill_date))"
                )
            )
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {fees} (mchid TEXT NOT NULL, bill_date TEXT NOT NULL,"
                    " line TEXT NOT NULL, line_id TEXT NOT NULL, out_trade_no TEXT NOT NULL, fee TEXT NOT NULL,"
                    " PRIMARY KEY (mchid, bill_date, line, line_id))"
                )
            )
            cur.execute(self._sql("CREATE INDEX IF NOT EXISTS {by_order} ON {fees} (mchid, out_trade_no)"))

    def _sql(self, template: str) -> str:
        return self._db.sql(template, **self._slots)

    # -- reports --------------------------------------------------------------------------------

    def save(self, report: BillReport) -> None:
        """The day's report, replacing the previous one."""
        with self._db.transaction() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO {reports} (mchid, bill_date, status, reconciled_at, report)"
                    " VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (mchid, bill_date) DO UPDATE SET status = excluded.status,"
                    " reconciled_at = excluded.reconciled_at, report = excluded.report"
                ),
                (
                    report.mchid,
                    report.bill_date.isoformat(),
                    report.status,
                    report.reconciled_at.timestamp(),
                    json.dumps(report.to_json(), ensure_ascii=False, separators=(",", ":")),
                ),
            )

    def get(self, mchid: str, bill_date: dt.date) -> BillReport | None:
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql("SELECT report FROM {reports} WHERE mchid = %s AND bill_date = %s"),
                (mchid, bill_date.isoformat()),
            )
            row = cur.fetchone()
        return None if row is None else BillReport.from_json(json.loads(row[0]))

    def recent(self, *, mchid: str | None = None, limit: int = 31) -> list[BillReport]:
        """The latest reports, newest bill day first (every merchant, or one)."""
        where, params = ("WHERE mchid = %s ", [mchid]) if mchid is not None else ("", [])
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql(f"SELECT report FROM {{reports}} {where}ORDER BY bill_date DESC, mchid LIMIT %s"),
                (*params, limit),
            )
            return [BillReport.from_json(json.loads(row[0])) for row in cur.fetchall()]

    def last_reconciled(self) -> dict[str, BillReport]:
        """Per merchant, the report of its latest bill day whose bill could be had (agreed, discrepancies, empty)."""
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql(
                    "SELECT r.report FROM {reports} r JOIN (SELECT mchid, MAX(bill_date) AS bill_date FROM {reports}"
                    " WHERE status IN ('agreed', 'discrepancies', 'empty') GROUP BY mchid) l"
                    " ON r.mchid = l.mchid AND r.bill_date = l.bill_date ORDER BY r.mchid"
                )
            )
            reports = [BillReport.from_json(json.loads(row[0])) for row in cur.fetchall()]
        return {report.mchid: report for report in reports}

    def discrepancy_counts(self) -> dict[tuple[str, bool], int]:
        """(kind, resolved) -> how many, over every kept report."""
        counts: dict[tuple[str, bool], int] = {}
        with self._db.transaction(write=False) as cur:
            # Every status: a day whose fund-flow bill is not had yet still has its trade bill's differences.
            cur.execute(self._sql("SELECT report FROM {reports}"))
            for (text,) in cur.fetchall():
                for found in json.loads(text).get("discrepancies") or []:
                    key = (str(found["kind"]), bool(found.get("resolved")))
                    counts[key] = counts.get(key, 0) + 1
        return counts

    # -- fees -------------------------------------------------------------------------------------

    def add_fees(self, mchid: str, bill_date: dt.date, lines: Sequence[FeeLine]) -> None:
        """The fees of matched bill lines; a line kept already is left as it is (a bill never changes)."""
        if not lines:
            return
        day = bill_date.isoformat()
        with self._db.transaction() as cur:
            cur.executemany(
                self._sql(
                    "INSERT INTO {fees} (mchid, bill_date, line, line_id, out_trade_no, fee)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (mchid, bill_date, line, line_id) DO NOTHING"
                ),
                [(mchid, day, line.line, line.line_id, line.out_trade_no, str(line.fee)) for line in lines],
            )

    def drop_fees(self, mchid: str, bill_date: dt.date) -> None:
        """Forget the fees of a day whose bill turned out unreadable half-way."""
        with self._db.transaction() as cur:
            cur.execute(
                self._sql("DELETE FROM {fees} WHERE mchid = %s AND bill_date = %s"), (mchid, bill_date.isoformat())
            )

    def order_fee(self, mchid: str, out_trade_no: str, *, line_ids: Collection[str] | None = None) -> Decimal | None:
        """The fees (yuan) of every bill line of the order (its payment and its refunds), or None if never
        billed. `line_ids` (the order's transaction_id and refund_ids) keeps only the lines of those: two
        sub-merchants of a service provider may have orders of one out_trade_no."""
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql("SELECT fee, line_id FROM {fees} WHERE mchid = %s AND out_trade_no = %s"),
                (mchid, out_trade_no),
            )
            fees = [Decimal(row[0]) for row in cur.fetchall() if line_ids is None or row[1] in line_ids]
        return sum(fees, Decimal(0)) if fees else None
