"""The operator's orders list: the orders view filtered, newest first, read a page (or a batch) at a time.

Orders are listed by when they were first recorded (`created_at`, which never changes), newest
first, ties broken by their key; a page ends with a `ListKey` and the next page starts after it
(keyset paging: every order is visited once, and a deep page costs what the first does). Each
filter narrows the rows one index gives in that order (`OrdersView.view_statements`); a number
searched by prefix is a range of the code-point-ordered number indexes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

from projections.read_model.sql import filters, where
from projections.read_model.view import OrdersView

__all__ = ["LIST_FIELDS", "ListKey", "OrderFilter", "list_key", "list_orders", "prefix_upper_bound", "walk_orders"]

LIST_FIELDS = (
    "mchid",
    "sub_mchid",
    "out_trade_no",
    "trade_state",
    "amount_total",
    "currency",
    "transaction_id",
    "success_time",
    "paid_total",
    "refunded_total",
    "anomalies",
    "created_at",
    "updated_at",
)
_ORDER = " ORDER BY created_at DESC, mchid DESC, sub_mchid DESC, out_trade_no DESC LIMIT %s"


class ListKey(NamedTuple):
    """Where a page ends: the last row's (created_at, mchid, sub_mchid as stored, out_trade_no)."""

    created_at: float
    mchid: str
    sub_mchid: str
    out_trade_no: str


@dataclasses.dataclass(frozen=True)
class OrderFilter:
    """Which orders: each field given narrows the list (None: any). Amounts are integer fen, inclusive;
    times epoch seconds of `created_at`, [since, until); `sub_mchid` '' is a merchant's own orders."""

    trade_state: str | None = None
    mchid: str | None = None
    sub_mchid: str | None = None
    anomalous: bool = False
    since: float | None = None
    until: float | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    number: str | None = None  # a prefix of out_trade_no or of transaction_id

    def clauses(self) -> tuple[list[str], list[Any]]:
        clauses, params = filters(
            ("trade_state = %s", self.trade_state),
            ("mchid = %s", self.mchid),
            ("sub_mchid = %s", self.sub_mchid),
            ("created_at >= %s", self.since),
            ("created_at < %s", self.until),
            ("amount_total >= %s", self.amount_min),
            ("amount_total <= %s", self.amount_max),
        )
        if self.anomalous:
            clauses.append("anomalies > 0")  # as the partial index says it
        if self.number:
            upper = prefix_upper_bound(self.number)
            clauses.append(
                "((out_trade_no{bytewise} >= %s AND out_trade_no{bytewise} < %s)"
                " OR (transaction_id{bytewise} >= %s AND transaction_id{bytewise} < %s))"
            )
            params += [self.number, upper, self.number, upper]
        return clauses, params


def prefix_upper_bound(prefix: str) -> str:
    """The least string after every string starting with `prefix` (code point order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def list_key(row: dict[str, Any]) -> ListKey:
    """The key of a listed row (as `list_orders` returns it), to start the next page after."""
    return ListKey(row["created_at"].timestamp(), row["mchid"], row["sub_mchid"] or "", row["out_trade_no"])


def list_orders(
    view: OrdersView, where_: OrderFilter, *, after: ListKey | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Up to `limit` orders `where_` picks, newest first, starting after `after` (a previous page's last)."""
    clauses, params = where_.clauses()
    if after is not None:
        # The range on created_at is what an index bounds; the tie-break only sorts equal times.
        clauses.append("created_at <= %s AND (created_at < %s OR (mchid, sub_mchid, out_trade_no) < (%s, %s, %s))")
        params += [after.created_at, after.created_at, after.mchid, after.sub_mchid, after.out_trade_no]
    text = f"SELECT {', '.join(LIST_FIELDS)} FROM {{orders}}{where(clauses)}{_ORDER}"
    return view.select(LIST_FIELDS, text, [*params, limit])


def walk_orders(view: OrdersView, where_: OrderFilter, *, batch: int = 500) -> Iterator[list[dict[str, Any]]]:
    """Every order `where_` picks, newest first, a batch (one short query) at a time: an export of any
    size holds one batch in memory and no transaction open between batches."""
    after: ListKey | None = None
    while True:
        rows = list_orders(view, where_, after=after, limit=batch)
        if rows:
            yield rows
        if len(rows) < batch:
            return
        after = list_key(rows[-1])
