"""The operator's orders list: the orders view filtered, newest first, read a page (or a batch) at a time.

Orders are listed by when they were first recorded (`created_at`, which never changes), newest
first, ties broken by their key; a page ends with a `ListKey` and the next page starts after it
(keyset paging: every order is visited once, and a deep page costs what the first does). Each
filter narrows the rows one index gives in that order (`OrdersView.view_statements`).

Two filters are ranges of indexes of their own that do not give that order: a number's prefix
(the code-point-ordered number indexes) and an amount range. When few orders fall in the range,
reading them from that index and sorting them is quickest; when many do ("ORDER-2026…", "over
1 yuan"), walking the newest orders until a page is full is, and sorting them all would be slow.
PostgreSQL's planner judges this from its statistics; SQLite's has none. So the list counts, up
to `NARROW`, the orders in the range from its index (`narrowing`), and when there are more it
writes the term so that no index answers it, and each store walks the list's own order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

from projections.read_model.sql import filters, where
from projections.read_model.view import OrdersView

__all__ = [
    "LIST_FIELDS",
    "NARROW",
    "ListKey",
    "Narrowing",
    "OrderFilter",
    "list_key",
    "list_orders",
    "narrowing",
    "prefix_upper_bound",
    "walk_orders",
]

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
NARROW = 1000
"""Orders in a number's or an amount's range up to which they are read from its index and sorted."""
_PREFIX_RANGE = (
    "((out_trade_no{bytewise} >= %s AND out_trade_no{bytewise} < %s)"
    " OR (transaction_id{bytewise} >= %s AND transaction_id{bytewise} < %s))"
)
_ORDER = " ORDER BY created_at DESC, mchid DESC, sub_mchid DESC, out_trade_no DESC LIMIT %s"


class ListKey(NamedTuple):
    """Where a page ends: the last row's (created_at, mchid, sub_mchid as stored, out_trade_no)."""

    created_at: float
    mchid: str
    sub_mchid: str
    out_trade_no: str


@dataclasses.dataclass(frozen=True)
class Narrowing:
    """Whether more than `NARROW` orders fall in the filter's number prefix, in its amount range."""

    number: bool = False
    amount: bool = False


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

    def clauses(self, wide: Narrowing | None = None) -> tuple[list[str], list[Any]]:
        """The WHERE clauses and their parameters: the number and amount ranges as `wide` says."""
        wide = wide or Narrowing()
        # `amount_total + 0`: the same comparison, which no index answers (see the module's docstring).
        amount = "amount_total + 0" if wide.amount else "amount_total"
        clauses, params = filters(
            ("trade_state = %s", self.trade_state),
            ("mchid = %s", self.mchid),
            ("sub_mchid = %s", self.sub_mchid),
            ("created_at >= %s", self.since),
            ("created_at < %s", self.until),
            (f"{amount} >= %s", self.amount_min),
            (f"{amount} <= %s", self.amount_max),
        )
        if self.anomalous:
            clauses.append("anomalies > 0")  # as the partial index says it
        if self.number and wide.number:
            length = len(self.number)  # an int of ours, written in: the drivers would type a parameter apart
            clauses.append(f"(substr(out_trade_no, 1, {length}) = %s OR substr(transaction_id, 1, {length}) = %s)")
            params += [self.number, self.number]
        elif self.number:
            upper = prefix_upper_bound(self.number)
            clauses.append(_PREFIX_RANGE)
            params += [self.number, upper, self.number, upper]
        return clauses, params

    def amount_range(self) -> tuple[list[str], list[Any]]:
        """The amount's clauses alone, as its index answers them."""
        return filters(("amount_total >= %s", self.amount_min), ("amount_total <= %s", self.amount_max))


def prefix_upper_bound(prefix: str) -> str:
    """The least string after every string starting with `prefix` (code point order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def list_key(row: dict[str, Any]) -> ListKey:
    """The key of a listed row (as `list_orders` returns it), to start the next page after."""
    return ListKey(row["created_at"].timestamp(), row["mchid"], row["sub_mchid"] or "", row["out_trade_no"])


def list_orders(
    view: OrdersView,
    where_: OrderFilter,
    *,
    after: ListKey | None = None,
    limit: int = 50,
    wide: Narrowing | None = None,
) -> list[dict[str, Any]]:
    """Up to `limit` orders `where_` picks, newest first, starting after `after` (a previous page's last);
    `wide`: `narrowing(view, where_)`, when the caller has it already."""
    wide = wide or narrowing(view, where_)
    clauses, params = where_.clauses(wide)
    if after is not None:
        # The range on created_at is what an index bounds; the tie-break only sorts equal times.
        clauses.append("created_at <= %s AND (created_at < %s OR (mchid, sub_mchid, out_trade_no) < (%s, %s, %s))")
        params += [after.created_at, after.created_at, after.mchid, after.sub_mchid, after.out_trade_no]
    text = f"SELECT {', '.join(LIST_FIELDS)} FROM {{orders}}{_hint(view, where_, wide)}{where(clauses)}{_ORDER}"
    return view.select(LIST_FIELDS, text, [*params, limit])


def _hint(view: OrdersView, where_: OrderFilter, wide: Narrowing) -> str:
    """SQLite's planner, without statistics, walks the list's order rather than sort the few orders of a
    narrow amount range: it is told which index to read (unless a narrow number's indexes serve better)."""
    narrow_amount = (where_.amount_min is not None or where_.amount_max is not None) and not wide.amount
    narrow_number = bool(where_.number) and not wide.number
    return " INDEXED BY {orders_amount}" if view.dialect == "sqlite" and narrow_amount and not narrow_number else ""


def narrowing(view: OrdersView, where_: OrderFilter) -> Narrowing:
    """Whether the number's and the amount's ranges hold more than `NARROW` orders, each counted from its index."""
    number = False
    if where_.number:
        upper = prefix_upper_bound(where_.number)
        number = _more_than_narrow(view, _PREFIX_RANGE, [where_.number, upper, where_.number, upper])
    amount = False
    clauses, params = where_.amount_range()
    if clauses:
        amount = _more_than_narrow(view, " AND ".join(clauses), params)
    return Narrowing(number=number, amount=amount)


def _more_than_narrow(view: OrdersView, clause: str, params: list[Any]) -> bool:
    text = f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM {{orders}} WHERE {clause} LIMIT %s) AS probe"
    [row] = view.select(("n",), text, [*params, NARROW + 1])
    return int(row["n"]) > NARROW


def walk_orders(view: OrdersView, where_: OrderFilter, *, batch: int = 500) -> Iterator[list[dict[str, Any]]]:
    """Every order `where_` picks, newest first, a batch (one short query) at a time: an export of any
    size holds one batch in memory and no transaction open between batches."""
    after: ListKey | None = None
    wide = narrowing(view, where_)
    while True:
        rows = list_orders(view, where_, after=after, limit=batch, wide=wide)
        if rows:
            yield rows
        if len(rows) < batch:
            return
        after = list_key(rows[-1])
