"""The orders read model: one row per order and per refund, maintained from the event log.

`OrdersProjection` folds each `PaymentOrder` event into the order (with the domain's own
`apply` code, so the view can never disagree with a replay) and the view writes the rows and
the tracking position in one transaction: a projector that crashes mid-way repeats nothing
and skips nothing. On PostgreSQL the tables sit beside the events; on SQLite in a file of
their own (the library's SQLite tracking table is per file).

An order is (mchid, sub_mchid, out_trade_no) ([protocol: Service providers]): a merchant's own
order has `sub_mchid` '' in the tables (part of the primary key, so NOT NULL) and None in what
is read back. A view made before that layout (its orders lack `sub_mchid`) is `outdated`: it is
neither written nor read, and `payledger rebuild` makes a version of the current layout.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.domain import ALL_EVENTS, PaymentOrder
from ledger.errors import ReadModelOutdated
from ledger.store.sql import Cursor
from ledger.store.views import PostgresViewRecorder, SQLiteViewRecorder, ViewRecorder
from projections.read_model.sql import filters, upsert, where

__all__ = [
    "LAYOUT_COLUMN",
    "ORDERS_VIEW",
    "ORDER_FIELDS",
    "ORDER_KEY",
    "PAID",
    "REFUND_FIELDS",
    "OrdersProjection",
    "OrdersView",
    "PostgresOrdersView",
    "SQLiteOrdersView",
]

ORDERS_VIEW = "orders_view"
ORDER_KEY = ("mchid", "sub_mchid", "out_trade_no")
"""An order's key: the merchant served (a provider's sp_mchid), its sub-merchant ('' for its own), the number."""
ORDER_FIELDS = (
    *ORDER_KEY,
    "stream_id",
    "registered",
    "trade_state",
    "amount_total",
    "currency",
    "transaction_id",
    "success_time",
    "paid_total",
    "refunded_total",
    "anomalies",
    "open_anomalies",
    "version",
    "created_at",
    "updated_at",
    "combine_out_trade_no",
    "document",
)
REFUND_KEY = ("mchid", "sub_mchid", "out_refund_no")
REFUND_FIELDS = (*REFUND_KEY, "out_trade_no", "refund_id", "status", "refund", "success_time")
PAID = "{o}.success_time IS NOT NULL AND {o}.paid_total IS NOT NULL AND {o}.transaction_id IS NOT NULL"
"""An order row `{o}` whose payment is decided: set by PaymentSucceeded alone (a refund decided first
sets transaction_id, never the other two); `paid_total` stays NULL only if WeChat's resource had no total."""
_TIME_FIELDS = {"created_at", "updated_at"}
_CONSOLE_INDEXES = ("orders_day", "refunds_day", "orders_anomalous")
LAYOUT_COLUMN = "open_anomalies"
"""The column a view of the current layout has and one made by an earlier version lacks."""


def order_row(order: PaymentOrder, at: dt.datetime) -> dict[str, Any]:
    return {
        "mchid": order.mchid,
        "sub_mchid": order.sub_mchid or "",
        "out_trade_no": order.out_trade_no,
        "stream_id": str(order.id),
        "registered": bool(order.registered),
        "trade_state": order.trade_state,
        "amount_total": order.amount_total,
        "currency": order.currency,
        "transaction_id": order.transaction_id,
        "success_time": order.success_time,
        "paid_total": order.paid_total,
        "refunded_total": order.refunded_total,
        "anomalies": len(order.anomalies),
        "open_anomalies": order.open_anomalies,
        "version": order.version,
        "created_at": order.created_on.timestamp(),
        "updated_at": at.timestamp(),
        "combine_out_trade_no": order.combine_out_trade_no,
        "document": json.dumps(order.summary(), ensure_ascii=False, separators=(",", ":"), default=str),
    }


def refund_rows(order: PaymentOrder) -> list[dict[str, Any]]:
    return [
        {
            "mchid": order.mchid,
            "sub_mchid": order.sub_mchid or "",
            "out_refund_no": r["out_refund_no"],
            "out_trade_no": order.out_trade_no,
            "refund_id": r["refund_id"],
            "status": r["status"],
            "refund": r["refund"],
            "success_time": r["success_time"],
        }
        for r in order.refunds.values()
    ]


def _row_out(names: tuple[str, ...], row: Any) -> dict[str, Any]:
    values = dict(zip(names, row, strict=True)) if not isinstance(row, dict) else dict(row)
    for name in _TIME_FIELDS & values.keys():
        values[name] = dt.datetime.fromtimestamp(values[name], dt.UTC)
    if "sub_mchid" in values:
        values["sub_mchid"] = values["sub_mchid"] or None
    if "registered" in values:
        values["registered"] = bool(values["registered"])
    if "document" in values:
        values["document"] = json.loads(values["document"])
    return values


class OrdersView(ViewRecorder):
    """Queries and writes shared by both stores; SQL is written once with %s placeholders."""

    # The tables' names start with the view's: on SQLite every version has a file of its own.
    table_prefix: str = ORDERS_VIEW
    # Made by an earlier version in another layout (see LAYOUT_COLUMN): set when the view is opened.
    outdated: bool = False

    @functools.cached_property
    def _slots(self) -> dict[str, str]:
        names = _names(self.table_prefix)
        return {
            "orders": self.qualify(names["orders"]),
            "refunds": self.qualify(names["refunds"]),
            **{
                index: self.quote(names[index])
                for index in (
                    "orders_state",
                    "orders_updated",
                    "orders_transaction",
                    "orders_paid",
                    "orders_number",
                    "orders_combined",
                    "refunds_id",
                    *_CONSOLE_INDEXES,
                )
            },
            # A list parameter (see `_list`): an array on PostgreSQL, a JSON array on SQLite.
            "in_list": "= ANY(%s::text[])" if self.dialect == "postgres" else "IN (SELECT value FROM json_each(%s))",
        }

    def _list(self, values: Sequence[str]) -> Any:
        """`values` as the `{in_list}` slot's parameter wants them."""
        return list(values) if self.dialect == "postgres" else json.dumps(list(values))

    def _sql(self, text: str) -> str:
        return self.sql(text, **self._slots)

    @property
    def orders_table(self) -> str:
        return f"{self.table_prefix}_orders"

    @property
    def refunds_table(self) -> str:
        return f"{self.table_prefix}_refunds"

    def view_statements(self) -> list[str]:
        return [
            self._sql(statement)
            for statement in (
                "CREATE TABLE IF NOT EXISTS {orders} (mchid TEXT NOT NULL, sub_mchid TEXT NOT NULL,"
                " out_trade_no TEXT NOT NULL, stream_id TEXT NOT NULL, registered BOOLEAN NOT NULL,"
                " trade_state TEXT NOT NULL, amount_total BIGINT, currency TEXT, transaction_id TEXT,"
                " success_time TEXT, paid_total BIGINT, refunded_total BIGINT NOT NULL, anomalies INTEGER NOT NULL,"
                " open_anomalies INTEGER NOT NULL, version INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
                " updated_at DOUBLE PRECISION NOT NULL, combine_out_trade_no TEXT, document TEXT NOT NULL,"
                " PRIMARY KEY (mchid, sub_mchid, out_trade_no))",
                "CREATE INDEX IF NOT EXISTS {orders_state} ON {orders} (trade_state, updated_at)",
                "CREATE INDEX IF NOT EXISTS {orders_updated} ON {orders} (updated_at, mchid, sub_mchid, out_trade_no)",
                "CREATE INDEX IF NOT EXISTS {orders_transaction} ON {orders} (transaction_id)",
                "CREATE TABLE IF NOT EXISTS {refunds} (mchid TEXT NOT NULL, sub_mchid TEXT NOT NULL,"
                " out_refund_no TEXT NOT NULL, out_trade_no TEXT NOT NULL, refund_id TEXT, status TEXT NOT NULL,"
                " refund BIGINT NOT NULL, success_time TEXT, PRIMARY KEY (mchid, sub_mchid, out_refund_no))",
                # A day's payments of one merchant, and refunds by WeChat's id: a bill's lines are
                # joined on them (`projections.bills.lines`). Views built before them get them when opened.
                "CREATE INDEX IF NOT EXISTS {orders_paid} ON {orders} (mchid, success_time, out_trade_no, sub_mchid)",
                "CREATE INDEX IF NOT EXISTS {refunds_id} ON {refunds} (mchid, refund_id)",
                # An order number under any merchant or sub-merchant (the operator's search), and the
                # sub-orders of one combined payment.
                "CREATE INDEX IF NOT EXISTS {orders_number} ON {orders} (out_trade_no)",
                "CREATE INDEX IF NOT EXISTS {orders_combined} ON {orders} (combine_out_trade_no)",
                # The console's overview: a Beijing day's payments and refunds, counted and summed from
                # the index alone, and the (rare) orders with anomalies, newest change first.
                "CREATE INDEX IF NOT EXISTS {orders_day} ON {orders} (success_time, paid_total)",
                "CREATE INDEX IF NOT EXISTS {refunds_day} ON {refunds} (status, success_time, refund)",
                "CREATE INDEX IF NOT EXISTS {orders_anomalous} ON {orders} (updated_at) WHERE anomalies > 0",
            )
        ]

    def create_view_tables(self) -> None:
        """The tables and indexes of the current layout; none on a view an earlier version made in
        another layout (`outdated`), which is left as it is for `payledger rebuild` to replace."""
        columns = self.table_columns(self.orders_table)
        self.outdated = bool(columns) and LAYOUT_COLUMN not in columns
        if not self.outdated:
            super().create_view_tables()

    def _current(self) -> None:
        if self.outdated:
            raise ReadModelOutdated(self.table_prefix)

    def upsert_many(self, curs: Cursor, orders: list[dict[str, Any]], refunds: list[dict[str, Any]]) -> None:
        """Orders and refunds by key, inserted or replaced, in the caller's transaction."""
        self._current()
        for table, fields, key, rows in (
            ("orders", ORDER_FIELDS, ORDER_KEY, orders),
            ("refunds", REFUND_FIELDS, REFUND_KEY, refunds),
        ):
            if rows:
                statement = upsert(table, fields, key, fields[len(key) :])
                curs.executemany(self._sql(statement), [[row[c] for c in fields] for row in rows])

    def record(self, order: PaymentOrder, at: dt.datetime, tracking: Tracking) -> None:
        """The order's rows and the tracking position, in one transaction."""
        with self.transaction() as curs:
            self.upsert_many(curs, [order_row(order, at)], refund_rows(order))
            self.write_tracking(curs, tracking)

    def _select(self, names: tuple[str, ...], text: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows of `names` by `text` (written with {orders}, {refunds} and %s), read back."""
        self._current()
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql(text), list(params))
            return [_row_out(names, row) for row in curs.fetchall()]

    def get(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> dict[str, Any] | None:
        """The order (mchid, sub_mchid, out_trade_no): a merchant's own without `sub_mchid`."""
        rows = self._select(
            ORDER_FIELDS,
            f"SELECT {', '.join(ORDER_FIELDS)} FROM {{orders}}"
            " WHERE mchid = %s AND sub_mchid = %s AND out_trade_no = %s",
            [mchid, sub_mchid or "", out_trade_no],
        )
        return rows[0] if rows else None

    def list_orders(
        self,
        *,
        mchid: str | None = None,
        sub_mchid: str | None = None,
        trade_state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: tuple[float, str, str, str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Orders by last change (oldest first), filtered; `after` is the keyset cursor
        (updated_at, mchid, out_trade_no, sub_mchid), see `cursor_decode`."""
        clauses, params = filters(
            ("mchid = %s", mchid),
            ("sub_mchid = %s", sub_mchid),
            ("trade_state = %s", trade_state),
            ("updated_at >= %s", since),
            ("updated_at < %s", until),
        )
        if after is not None:
            updated_at, after_mchid, after_no, after_sub = after
            clauses.append(
                "(updated_at > %s OR (updated_at = %s AND (mchid > %s OR (mchid = %s AND"
                " (sub_mchid > %s OR (sub_mchid = %s AND out_trade_no > %s))))))"
            )
            params += [updated_at, updated_at, after_mchid, after_mchid, after_sub, after_sub, after_no]
        text = f"SELECT {', '.join(ORDER_FIELDS)} FROM {{orders}}{where(clauses)}"
        text += " ORDER BY updated_at, mchid, sub_mchid, out_trade_no LIMIT %s"
        return self._select(ORDER_FIELDS, text, [*params, limit])

    def by_transaction_id(self, transaction_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Orders paid (or refunded) under WeChat's `transaction_id`; normally one."""
        return self._orders_where("transaction_id", transaction_id, limit)

    def by_out_trade_no(self, out_trade_no: str, limit: int = 20) -> list[dict[str, Any]]:
        """Orders of that number under any merchant or sub-merchant (two sub-merchants may share one)."""
        return self._orders_where("out_trade_no", out_trade_no, limit, order="mchid, sub_mchid")

    def combined(self, combine_out_trade_no: str, limit: int = 50) -> list[dict[str, Any]]:
        """The sub-orders registered with that combined payment's `combine_out_trade_no`."""
        return self._orders_where("combine_out_trade_no", combine_out_trade_no, limit)

    def _orders_where(
        self, column: str, value: str, limit: int, order: str = "mchid, sub_mchid, out_trade_no"
    ) -> list[dict[str, Any]]:
        """Up to `limit` orders whose `column` is `value`, in `order`."""
        return self._select(
            ORDER_FIELDS,
            f"SELECT {', '.join(ORDER_FIELDS)} FROM {{orders}} WHERE {column} = %s ORDER BY {order} LIMIT %s",
            [value, limit],
        )

    def refunds(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> list[dict[str, Any]]:
        return self._select(
            REFUND_FIELDS,
            f"SELECT {', '.join(REFUND_FIELDS)} FROM {{refunds}}"
            " WHERE mchid = %s AND sub_mchid = %s AND out_trade_no = %s ORDER BY out_refund_no",
            [mchid, sub_mchid or "", out_trade_no],
        )

    # -- the console's overview ----------------------------------------------------------------

    def day_totals(self, start: str, end: str) -> dict[str, int]:
        """Payments and refunds decided with a `success_time` in [start, end): counts and sums in fen.

        WeChat writes `success_time` in Beijing time with its offset ("2026-12-03T10:00:00+08:00"),
        so a Beijing day is a range of the text, bounds written the same way."""
        self._current()
        with self.transaction(commit=False) as curs:
            curs.execute(
                self._sql(
                    "SELECT COUNT(*), SUM(paid_total) FROM {orders} WHERE success_time >= %s AND success_time < %s"
                ),
                [start, end],
            )
            payments, paid = curs.fetchone()
            curs.execute(
                self._sql(
                    "SELECT COUNT(*), SUM(refund) FROM {refunds}"
                    " WHERE status = 'SUCCESS' AND success_time >= %s AND success_time < %s"
                ),
                [start, end],
            )
            refunds, refunded = curs.fetchone()
        return {
            "payments": int(payments),
            "paid": int(paid or 0),
            "refunds": int(refunds),
            "refunded": int(refunded or 0),
        }

    def with_anomalies(self, limit: int, *, acknowledged: bool = False) -> list[dict[str, Any]]:
        """Up to `limit` orders with an anomaly not acknowledged yet (`acknowledged`: with one acknowledged),
        the most recently changed first: a walk down the index of the orders with anomalies."""
        which = "open_anomalies < anomalies" if acknowledged else "open_anomalies > 0"
        return self._select(
            ORDER_FIELDS,
            f"SELECT {', '.join(ORDER_FIELDS)} FROM {{orders}} WHERE anomalies > 0 AND {which}"
            " ORDER BY updated_at DESC LIMIT %s",
            [limit],
        )

    def anomaly_totals(self) -> tuple[int, int]:
        """(anomalies not acknowledged yet, anomalies), over every order."""
        self._current()
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql("SELECT SUM(open_anomalies), SUM(anomalies) FROM {orders} WHERE anomalies > 0"))
            open_anomalies, anomalies = curs.fetchone()
        return int(open_anomalies or 0), int(anomalies or 0)

    def bill_tables(self) -> tuple[str, str, str | None]:
        """The orders and refunds tables as a bill's lines join them (`projections.bills.lines`), and on
        SQLite the view's file, attached beside the ledger's as ``view`` for that (None on PostgreSQL,
        where the view's tables are in the ledger's database)."""
        self._current()
        names = _names(self.table_prefix)
        if self.dialect == "postgres":
            return self.qualify(names["orders"]), self.qualify(names["refunds"]), None
        return f"view.{names['orders']}", f"view.{names['refunds']}", self.file

    def position(self, application_name: str = Ledger.name) -> int:
        return self.max_tracking_id(application_name) or 0


def _names(prefix: str) -> dict[str, str]:
    return {
        "orders": f"{prefix}_orders",
        "refunds": f"{prefix}_refunds",
        "orders_state": f"{prefix}_orders_state",
        "orders_updated": f"{prefix}_orders_updated",
        "orders_transaction": f"{prefix}_orders_transaction",
        "orders_paid": f"{prefix}_orders_paid",
        "orders_number": f"{prefix}_orders_number",
        "orders_combined": f"{prefix}_orders_combined",
        "refunds_id": f"{prefix}_refunds_id",
        **{index: f"{prefix}_{index}" for index in _CONSOLE_INDEXES},
    }


class PostgresOrdersView(OrdersView, PostgresViewRecorder):
    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        # One version of the view per tracking table: "orders_view_v2_tracking" -> "orders_view_v2".
        self.table_prefix = self.tracking_table_name.removesuffix("_tracking")


class SQLiteOrdersView(OrdersView, SQLiteViewRecorder):
    pass


class OrdersProjection(Projection[Any]):
    """Folds PaymentOrder events into order rows, with the domain's own `apply`."""

    name = ORDERS_VIEW
    topics = tuple(get_topic(cls) for cls in ALL_EVENTS)
    cache_size = 10_000

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self._cache: OrderedDict[UUID, PaymentOrder] = OrderedDict()
        self.ledger: Ledger | None = None  # set by the runner: loads an order the cache lacks

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        order = self._cache.pop(domain_event.originator_id, None)
        if order is None and domain_event.originator_version > PaymentOrder.INITIAL_VERSION:
            assert self.ledger is not None, "the runner attaches the ledger before events flow"
            order = self.ledger.repository.get(domain_event.originator_id, version=domain_event.originator_version - 1)
        if order is not None and order.version != domain_event.originator_version - 1:
            order = self.ledger.repository.get(  # type: ignore[union-attr]
                domain_event.originator_id, version=domain_event.originator_version - 1
            )
        order = domain_event.mutate(order)
        assert isinstance(order, PaymentOrder)
        self.view.record(order, domain_event.timestamp, tracking)
        self._cache[order.id] = order
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def cursor_encode(row: dict[str, Any]) -> str:
    """The keyset after `row`; a merchant's own order's cursor is as it was before sub-merchants."""
    key = [row["updated_at"].timestamp(), row["mchid"], row["out_trade_no"]]
    return json.dumps([*key, row["sub_mchid"]] if row.get("sub_mchid") else key)


def cursor_decode(text: str) -> tuple[float, str, str, str]:
    """(updated_at, mchid, out_trade_no, sub_mchid as stored); a cursor of three is a merchant's own order."""
    value = json.loads(text)
    if not (isinstance(value, list) and len(value) in (3, 4)):
        raise ValueError("bad cursor")
    return float(value[0]), str(value[1]), str(value[2]), str(value[3]) if len(value) == 4 else ""
