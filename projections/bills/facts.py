"""The ledger's side of bill matching, answered from the orders read model ([protocol: Daily bills]).

`OrdersViewFacts` is the `LedgerFacts` the matcher asks about one merchant: its decided payments
and succeeded refunds, looked up in batches, and its payments of a day read in keyset pages so
that a day of a million orders costs a page of memory. The read model must have caught up with
the log first (`projections.read_model.runner.catch_up_orders_view`), or a payment the log holds
would be reported missing from the ledger.

The view is asked for on every query (`view_source`, e.g. `LiveOrdersView.current`), so a rebuild
that switches the live version mid-way is followed, never read from after it was closed.

A service provider's bill lists every sub-merchant's lines (特约商户号 is the sub_mchid), and two
sub-merchants may use the same out_trade_no: without `sub_mchid` the facts are the merchant's
orders of every sub-merchant, a bill line's payment being the order of its out_trade_no paid
under its transaction_id; with `sub_mchid` they are that sub-merchant's orders only (a bill
applied for one sub-merchant).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ledger.bill_matching import BATCH_SIZE, LedgerFacts, PaymentFact, RefundFact
from ledger.wechatpay.bills import BEIJING
from projections.read_model.view import OrdersView

__all__ = ["PAGE_SIZE", "OrdersViewFacts"]

PAGE_SIZE = BATCH_SIZE
"""Payments per page of `payments_on` (one query each)."""


class OrdersViewFacts(LedgerFacts):
    """`LedgerFacts` for merchant `mchid` (with `sub_mchid`, for that sub-merchant of a provider
    only), read from the orders view `view_source()` returns."""

    def __init__(
        self,
        view_source: Callable[[], OrdersView],
        mchid: str,
        *,
        sub_mchid: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._view = view_source
        self._mchid = mchid
        self._sub_mchid = sub_mchid
        self._page_size = page_size

    def payments(self, keys: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], PaymentFact]:
        """The decided payments among `keys` (transaction_id, out_trade_no).

        An order is looked up by out_trade_no; it answers a key only if it was paid under that
        key's transaction_id: an order paid under another one is not the bill's payment (the
        matcher then reports the bill line missing from the ledger)."""
        wanted = list(dict.fromkeys(out_trade_no for _, out_trade_no in keys))
        rows = self._view().paid_orders(self._mchid, wanted, sub_mchid=self._sub_mchid)
        # Two sub-merchants' orders of one number are told apart by the transaction each was paid under.
        by_key = {(row["transaction_id"], row["out_trade_no"]): row for row in rows}
        found: dict[tuple[str, str], PaymentFact] = {}
        for key in keys:
            row = by_key.get(key)
            if row is not None:
                fact = self._payment(row)
                if fact is not None:
                    found[key] = fact
        return found

    def refunds(self, refund_ids: Sequence[str]) -> Mapping[str, RefundFact]:
        """The succeeded refunds among `refund_ids` (WeChat's ids); closed or abnormal ones are left out."""
        found: dict[str, RefundFact] = {}
        wanted = list(dict.fromkeys(refund_ids))
        for row in self._view().refunds_by_id(self._mchid, wanted, sub_mchid=self._sub_mchid):
            found.setdefault(
                row["refund_id"],
                RefundFact(
                    mchid=row["mchid"],
                    out_trade_no=row["out_trade_no"],
                    out_refund_no=row["out_refund_no"],
                    refund_id=row["refund_id"],
                    refund_fen=int(row["refund"]),
                    sub_mchid=row.get("sub_mchid") or None,
                ),
            )
        return found

    def payments_on(self, day: dt.date) -> Iterator[PaymentFact]:
        """The decided payments whose success_time text falls in [day - 1, day + 2): every payment
        of the Beijing `day` whatever offset its time was written with, and some of the days
        around it (the matcher keeps the day's own). Lazily, one page of `page_size` at a time."""
        lo = (day - dt.timedelta(days=1)).isoformat()
        hi = (day + dt.timedelta(days=2)).isoformat()
        after: tuple[str, str, str] | None = None
        while True:
            page = self._view().paid_between(
                self._mchid, lo, hi, after=after, limit=self._page_size, sub_mchid=self._sub_mchid
            )
            for row in page:
                fact = self._payment(row)
                if fact is not None:
                    yield fact
            if len(page) < self._page_size:
                return
            after = (page[-1]["success_time"], page[-1]["out_trade_no"], page[-1]["sub_mchid"] or "")

    @staticmethod
    def _payment(row: Mapping[str, Any]) -> PaymentFact | None:
        success_time = _aware(row["success_time"])
        if success_time is None:
            return None
        return PaymentFact(
            mchid=row["mchid"],
            out_trade_no=row["out_trade_no"],
            transaction_id=row["transaction_id"],
            amount_total_fen=int(row["paid_total"]),
            success_time=success_time,
            sub_mchid=row.get("sub_mchid") or None,
        )


def _aware(text: str) -> dt.datetime | None:
    """WeChat's RFC 3339 success_time (``2026-12-02T10:00:00+08:00``, sometimes with milliseconds)
    as an aware time; one written without an offset is Beijing time, as all of WeChat's are.

    None for a text that is no time at all (a payment decided on a resource without one): such a
    payment cannot be placed on a day, and the bill line naming it is reported missing rather
    than the whole bill failing."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=BEIJING)
