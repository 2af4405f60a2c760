"""A trade bill's lines kept beside the ledger's tables, and matching done as joins ([protocol: Daily bills]).

Matching a bill is a set operation: which payment lines have no decided payment with their
transaction and amount, which refund lines no succeeded refund with their amount, which of the
day's decided payments no payment line names. A database does that in a few joins over indexes;
Python looking each of a million lines up costs several times more in time and holds a set of the
day's keys in memory. So a bill's payment and refund lines (`ledger.bill_matching.StagedLine`) are
written once into the lines table as the bill streams by (``COPY`` on PostgreSQL, in chunks, so
memory stays flat and SQLite's writers are never held up for long), and matching asks three
queries that answer only the differences.

The lines stay: they are the fee (手续费) of each of an order's bill lines (`order_fee`), and a day
reconciled again matches without reading its bill again. They are derived data: a day whose lines
are lost is loaded again from the bill kept in the event store. A day is readable only once its
load is complete (its row in the loads table says ``loaded`` and names the bill's SHA-1); a load
that stopped half-way is replaced by the next.

The orders and refunds are the orders read model's live version (`OrdersView.bill_tables`): on
PostgreSQL its tables are in the same database; on SQLite its file is attached for the queries.
The view must have caught up with the log first, or a payment the log holds would be reported
missing from the ledger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Collection, Iterable, Iterator
from decimal import Decimal
from itertools import islice
from typing import Any

from ledger.bill_matching import BillMatch, Discrepancy, DiscrepancyKind, StagedLine, on_day, staged_lines
from ledger.errors import BillMalformed
from ledger.store.sql import Cursor, Database
from ledger.wechatpay.bills import TradeBillRow
from projections.locks import ProjectorLock
from projections.read_model.view import PAID, OrdersView

__all__ = ["CHUNK", "BillLines"]

LINES = "payledger_bill_lines"
LOADS = "payledger_bill_loads"
LINES_BY_ORDER = "payledger_bill_lines_order"
CHUNK = 50_000
"""Lines written per transaction."""
_COLUMNS = ("mchid", "bill_date", *StagedLine._fields)
_WECHAT_OFFSET = "%+08:00"  # how WeChat writes every time: such a text's day is its first ten characters

_PAYMENTS = (
    "SELECT l.seq, l.out_trade_no, l.transaction_id, l.sub_mchid, l.amount, o.paid_total, o.sub_mchid,"
    " l.out_refund_no, l.refund_id"
    " FROM {lines} l LEFT JOIN {orders} o ON o.mchid = l.mchid AND o.out_trade_no = l.out_trade_no"
    " AND o.transaction_id = l.transaction_id AND o.success_time IS NOT NULL AND o.paid_total IS NOT NULL"
    " WHERE l.mchid = %s AND l.bill_date = %s AND l.kind = 'payment'"
    " AND (o.paid_total IS NULL OR o.paid_total <> l.amount) ORDER BY l.seq"
)
_REFUNDS = (
    "SELECT l.seq, l.out_trade_no, l.transaction_id, l.sub_mchid, l.amount, r.refund, r.sub_mchid,"
    " l.out_refund_no, l.refund_id"
    " FROM {lines} l LEFT JOIN {refunds} r ON r.mchid = l.mchid AND r.refund_id = l.refund_id"
    " AND r.status = 'SUCCESS'"
    " WHERE l.mchid = %s AND l.bill_date = %s AND l.kind = 'refund'"
    " AND (r.refund IS NULL OR r.refund <> l.amount) ORDER BY l.seq"
)
# The day's decided payments no payment line names. Times WeChat wrote (+08:00) are on the day when
# their text starts with it; any other text is looked for a day either side and placed exactly here.
_UNBILLED = (
    "SELECT o.sub_mchid, o.out_trade_no, o.transaction_id, o.success_time, o.paid_total FROM {orders} o"
    f" WHERE o.mchid = %s AND {PAID.format(o='o')}"
    " AND ((o.success_time >= %s AND o.success_time < %s AND o.success_time LIKE %s)"
    " OR (o.success_time >= %s AND o.success_time < %s AND o.success_time NOT LIKE %s))"
    " AND NOT EXISTS (SELECT 1 FROM {lines} l WHERE l.mchid = o.mchid AND l.out_trade_no = o.out_trade_no"
    " AND l.bill_date = %s AND l.kind = 'payment' AND l.transaction_id = o.transaction_id)"
    " ORDER BY o.success_time, o.out_trade_no, o.sub_mchid"
)


class BillLines:
    """The lines and loads tables on `database` (created if missing); the caller closes the database."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._lines, self._loads = database.qualify(LINES), database.qualify(LOADS)
        with database.ddl() as cur:  # every process creates them on start: they take turns
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {lines} (mchid TEXT NOT NULL, bill_date TEXT NOT NULL,"
                    " seq INTEGER NOT NULL, kind TEXT NOT NULL, transaction_id TEXT NOT NULL,"
                    " out_trade_no TEXT NOT NULL, refund_id TEXT NOT NULL, out_refund_no TEXT NOT NULL,"
                    " sub_mchid TEXT NOT NULL, amount BIGINT NOT NULL, fee TEXT NOT NULL,"
                    " PRIMARY KEY (mchid, bill_date, seq))"
                )
            )
            cur.execute(self._sql("CREATE INDEX IF NOT EXISTS {by_order} ON {lines} (mchid, out_trade_no)"))
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {loads} (mchid TEXT NOT NULL, bill_date TEXT NOT NULL,"
                    " sha1 TEXT NOT NULL, state TEXT NOT NULL, counts TEXT, PRIMARY KEY (mchid, bill_date))"
                )
            )

    def _sql(self, template: str, **slots: str) -> str:
        return self._db.sql(template, lines=self._lines, loads=self._loads, by_order=LINES_BY_ORDER, **slots)

    @contextlib.contextmanager
    def exclusive(self, mchid: str) -> Iterator[None]:
        """Held while one run reconciles a day of `mchid`: a second run, in this process or another
        (the daily loop, `POST /bills/.../reconcile`, the CLI), waits for it rather than loading the
        same lines at once."""
        lock = ProjectorLock(self._db.url, f"bills_{mchid}")
        try:
            lock.acquire(threading.Event(), poll=0.2)
            yield
        finally:
            lock.release()

    # -- loading ----------------------------------------------------------------------------------

    def loaded(self, mchid: str, bill_date: dt.date, sha1: str) -> BillMatch | None:
        """The counts and totals of the bill of SHA-1 `sha1` when its lines are loaded; None otherwise."""
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql("SELECT sha1, state, counts FROM {loads} WHERE mchid = %s AND bill_date = %s"),
                (mchid, bill_date.isoformat()),
            )
            row = cur.fetchone()
        if row is None or row[0] != sha1 or row[1] != "loaded" or not row[2]:
            return None
        return BillMatch.from_counts(bill_date, json.loads(row[2]))

    def load(self, mchid: str, bill_date: dt.date, sha1: str, rows: Iterable[TradeBillRow]) -> BillMatch:
        """Read the bill's rows into the lines table (replacing what a load before left); the bill's
        counts and totals. `BillMalformed` (the summary disagrees, a line unreadable) leaves nothing."""
        day = bill_date.isoformat()
        with self._db.transaction() as cur:
            self._clear(cur, mchid, day)
            cur.execute(
                self._sql("INSERT INTO {loads} (mchid, bill_date, sha1, state) VALUES (%s, %s, %s, 'loading')"),
                (mchid, day, sha1),
            )
        report = BillMatch(bill_date)
        lines = staged_lines(rows, report)
        try:
            while True:
                written = _Counted((mchid, day, *line) for line in islice(lines, CHUNK))
                with self._db.transaction() as cur:
                    self._db.insert_rows(cur, self._lines, _COLUMNS, written)
                if written.count < CHUNK:
                    break
        except BillMalformed:
            self.forget(mchid, bill_date)
            raise
        with self._db.transaction() as cur:
            cur.execute(
                self._sql("UPDATE {loads} SET state = 'loaded', counts = %s WHERE mchid = %s AND bill_date = %s"),
                (json.dumps(report.counts()), mchid, day),
            )
            if self._db.dialect == "postgres":
                # Fresh statistics, so the joins that follow are planned for a day of this size
                # (autovacuum would get to it later, or, where it is off, never).
                cur.execute(self._sql("ANALYZE {lines}"))
        return report

    def forget(self, mchid: str, bill_date: dt.date) -> None:
        """Drop a day's lines (a bill that turned out unreadable half-way)."""
        with self._db.transaction() as cur:
            self._clear(cur, mchid, bill_date.isoformat())

    def _clear(self, cur: Cursor, mchid: str, day: str) -> None:
        cur.execute(self._sql("DELETE FROM {lines} WHERE mchid = %s AND bill_date = %s"), (mchid, day))
        cur.execute(self._sql("DELETE FROM {loads} WHERE mchid = %s AND bill_date = %s"), (mchid, day))

    # -- matching ---------------------------------------------------------------------------------

    def match(self, mchid: str, bill_date: dt.date, view: OrdersView) -> list[Discrepancy]:
        """The loaded day's differences with the ledger's decisions in `view`: the bill's lines in bill
        order (missing in the ledger, or of another amount), then the day's payments the bill lacks."""
        orders, refunds, view_file = view.bill_tables()
        day = bill_date.isoformat()
        before, after = (bill_date - dt.timedelta(days=1)).isoformat(), (bill_date + dt.timedelta(days=2)).isoformat()
        following = (bill_date + dt.timedelta(days=1)).isoformat()
        by_line: dict[int, Discrepancy] = {}
        with self._db.reading_beside({"view": view_file} if view_file else {}) as cur:
            for query in (self._sql(_PAYMENTS, orders=orders), self._sql(_REFUNDS, refunds=refunds)):
                cur.execute(query, (mchid, day))
                for seq, otn, tid, bill_sub, bill_amount, ledger_amount, ledger_sub, ron, rid in cur.fetchall():
                    by_line.setdefault(  # one per line: two orders could answer one (never in practice)
                        seq,
                        Discrepancy(
                            _kind(ledger_amount),
                            out_trade_no=otn,
                            transaction_id=tid,
                            out_refund_no=ron or None,  # a payment line has neither
                            refund_id=rid or None,
                            bill_amount=bill_amount,
                            ledger_amount=ledger_amount,
                            sub_mchid=bill_sub or ledger_sub or None,
                        ),
                    )
            cur.execute(
                self._sql(_UNBILLED, orders=orders),
                (mchid, day, following, _WECHAT_OFFSET, before, after, _WECHAT_OFFSET, day),
            )
            unbilled = [
                Discrepancy(
                    DiscrepancyKind.MISSING_IN_BILL,
                    out_trade_no=out_trade_no,
                    transaction_id=tid,
                    ledger_amount=int(paid_total),
                    sub_mchid=sub_mchid or None,
                )
                for sub_mchid, out_trade_no, tid, success_time, paid_total in cur.fetchall()
                if on_day(success_time, bill_date)
            ]
        return [by_line[seq] for seq in sorted(by_line)] + unbilled

    # -- fees -------------------------------------------------------------------------------------

    def order_fee(self, mchid: str, out_trade_no: str, *, line_ids: Collection[str] | None = None) -> Decimal | None:
        """The fees (yuan) of every bill line of the order (its payment and its refunds), or None if never
        billed. `line_ids` (the order's transaction_id and refund_ids) keeps only the lines of those: two
        sub-merchants of a service provider may have orders of one out_trade_no, and a bill line naming
        a payment the ledger does not have is not the order's."""
        rows = self._db.query(
            self._sql(
                "SELECT l.kind, l.transaction_id, l.refund_id, l.fee FROM {lines} l"
                " JOIN {loads} d ON d.mchid = l.mchid AND d.bill_date = l.bill_date AND d.state = 'loaded'"
                " WHERE l.mchid = %s AND l.out_trade_no = %s"
            ),
            (mchid, out_trade_no),
        )
        fees = [
            Decimal(fee)
            for kind, tid, rid, fee in rows
            if line_ids is None or (rid if kind == "refund" else tid) in line_ids
        ]
        return sum(fees, Decimal(0)) if fees else None


def _kind(ledger_amount: int | None) -> DiscrepancyKind:
    return DiscrepancyKind.MISSING_IN_LEDGER if ledger_amount is None else DiscrepancyKind.AMOUNT_MISMATCH


class _Counted:
    """An iterable that counts what it has given."""

    def __init__(self, items: Iterable[tuple[Any, ...]]) -> None:
        self._items = iter(items)
        self.count = 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for item in self._items:
            self.count += 1
            yield item
