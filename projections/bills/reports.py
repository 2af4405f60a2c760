"""Bill reports: the outcome of each day's reconciliation, kept beside the events.

A report is what `payledger bills reconcile` prints and `GET /bills/{bill_date}` answers. It is
derived: the bill is kept as evidence in the event store and every difference is an event in its
order's stream, so a report can always be made again by reconciling the day once more (no fetch:
the bill is kept). The fee (手续费) of each bill line is in the bill's lines (`projections.bills.lines`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ledger.bill_matching import Discrepancy, DiscrepancyKind
from ledger.store.sql import Database

__all__ = [
    "REPORT_STATUSES",
    "BillReport",
    "BillReports",
    "ReportStatus",
    "fen_text",
]

ReportStatus = Literal["agreed", "discrepancies", "empty", "not_ready", "failed"]
REPORT_STATUSES: tuple[ReportStatus, ...] = ("agreed", "discrepancies", "empty", "not_ready", "failed")

REPORTS = "payledger_bill_reports"


def fen_text(yuan: Decimal) -> str:
    """A bill's yuan amount (a fee has 5 decimals) as fen, exactly: Decimal("0.00600") -> "0.600"."""
    return str((yuan * 100).quantize(Decimal("0.001")))


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
    """The reports table on `database` (created if missing); the caller closes the database."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._slots = {"reports": database.qualify(REPORTS)}
        with self._db.ddl() as cur:  # every process creates them on start: they take turns
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {reports} (mchid TEXT NOT NULL, bill_date TEXT NOT NULL,"
                    " status TEXT NOT NULL, reconciled_at DOUBLE PRECISION NOT NULL, report TEXT NOT NULL,"
                    " PRIMARY KEY (mchid, bill_date))"
                )
            )

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
