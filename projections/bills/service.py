"""One day's reconciliation: WeChat's bills fetched if not kept yet, the trade bill matched, each
difference recorded once as an event in its order's stream ([protocol: Daily bills]).

A run for (mchid, Beijing day D):

1. the trade bill: kept already, or applied for and downloaded (the SHA-1 of the decompressed bytes
   checked against the announced one) and kept as evidence before anything is read from it;
   WeChat's "no bill that day" is kept as the day's emptiness (final), "not ready" keeps nothing;
2. the bill's payment and refund lines are read into the lines table as the bill streams by (once
   per bill: a day matched again reads the lines kept), so memory stays flat whatever the bill's
   size; the orders read model is caught up with the log, and the lines are matched against the
   ledger's decisions by joins (`projections.bills.lines`);
3. each difference becomes a `BillDiscrepancy` in its order's stream (once per bill however often
   the day is reconciled); a payment the ledger lacks is queried at once, and when the query
   decides it with the bill's amount the difference is reported resolved;
4. the fund-flow bill of the day is fetched and kept the same way and its summary checked;
5. the report is saved (differences an earlier run reported and this one no longer finds are
   kept in it, resolved) and returned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from ledger.application import Ledger
from ledger.bill_matching import BillMatch, Discrepancy, DiscrepancyKind
from ledger.domain import PaymentOrder
from ledger.errors import (
    BillMalformed,
    BillNotFound,
    BillNotReady,
    InvalidRequest,
    LedgerError,
    WeChatPayError,
    WeChatPayRejected,
)
from ledger.wechatpay.bill_download import BillDownload, BillTicket, download_bill_to_temp
from ledger.wechatpay.bills import BEIJING, read_fundflow_bill, read_trade_bill
from projections.bills.lines import BillLines
from projections.bills.reports import BillReport, BillReports, fen_text
from projections.read_model.view import OrdersView

__all__ = ["QUERY_LIMIT", "BillClient", "BillReconciler", "beijing_today"]

log = logging.getLogger("ledger.bills")

QUERY_LIMIT = 100
"""Payments missing from the ledger queried per run (a bill that names thousands of unknown payments is
a configuration problem, not a queue to drain at WeChat's rate limit): the rest on the next run."""
_READ = 1 << 20

Obtained = Literal["fetched", "kept", "empty"]


class BillClient(Protocol):
    """What a run needs of `ledger.wechatpay.client.WeChatPayClient`."""

    def apply_trade_bill(self, bill_date: dt.date) -> BillTicket: ...

    def apply_fundflow_bill(self, bill_date: dt.date) -> BillTicket: ...

    def download_bill(self, ticket: BillTicket, into: BinaryIO) -> BillDownload: ...


def beijing_today(now: dt.datetime | None = None) -> dt.date:
    return (now or dt.datetime.now(dt.UTC)).astimezone(BEIJING).date()


class _Unavailable(Exception):
    """The bill could not be had: the run's status and a reason fit to show."""

    def __init__(self, status: Literal["not_ready", "failed"], reason: str) -> None:
        super().__init__(reason)
        self.status: Literal["not_ready", "failed"] = status
        self.reason = reason


def _reason(kind: str, exc: LedgerError) -> str:
    """A fixed text per error class (and WeChat's code), never the exception's own message."""
    code = f" ({exc.code})" if isinstance(exc, WeChatPayRejected) else ""
    return f"{kind} bill: {exc.reason}{code}"


class BillReconciler:
    """Reconciles a merchant's Beijing day against WeChat's bills; safe to run again at any time."""

    def __init__(
        self,
        ledger: Ledger,
        reports: BillReports,
        clients: Mapping[str, BillClient],
        lines: BillLines,
        view: Callable[[], OrdersView],
        catch_up: Callable[[], object],
        query: Callable[..., PaymentOrder] | None = None,  # OrderQuery: (mchid, out_trade_no, *, sub_mchid)
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        folder: Path | None = None,
    ) -> None:
        self._ledger = ledger
        self.reports = reports
        self._clients = clients
        self.lines = lines
        self._view = view  # the orders read model's live version, asked for on each run
        self._catch_up = catch_up
        self._query = query
        self._clock = clock
        self._folder = folder  # where a bill is downloaded before it is kept (the temp folder by default)

    @property
    def merchants(self) -> list[str]:
        return sorted(self._clients)

    def report(self, mchid: str, bill_date: dt.date) -> BillReport | None:
        return self.reports.get(mchid, bill_date)

    def reconcile(self, mchid: str, bill_date: dt.date) -> BillReport:
        """Reconcile one day (see the module's docstring); the report is saved and returned."""
        client = self._clients.get(mchid)
        if client is None:
            raise InvalidRequest(f"merchant {mchid} is not configured to call WeChat Pay (bills need its API key)")
        if bill_date > beijing_today(self._clock()):
            raise InvalidRequest("bill_date is in the future (Beijing time)")
        now = self._clock()
        try:
            with self.lines.exclusive(mchid):  # one run per merchant at a time, in any process
                report = self._reconcile(client, mchid, bill_date, now)
        except _Unavailable as unavailable:
            log.warning("bills mchid=%s day=%s: %s", mchid, bill_date, unavailable.reason)
            report = BillReport(mchid, bill_date, unavailable.status, now, reason=unavailable.reason)
        self.reports.save(report)
        log.info(
            "bills mchid=%s day=%s: %s, %d lines, %d differences (%d unresolved)",
            mchid,
            bill_date,
            report.status,
            report.rows,
            len(report.discrepancies),
            len(report.unresolved),
        )
        return report

    # -- one run -----------------------------------------------------------------------------------

    def _reconcile(self, client: BillClient, mchid: str, bill_date: dt.date, now: dt.datetime) -> BillReport:
        with self._obtained(client, mchid, bill_date, "trade") as (how, source, sha1):
            if how == "empty":
                report = BillReport(mchid, bill_date, "empty", now, totals=_totals(BillMatch(bill_date)))
            else:
                report = self._match(mchid, bill_date, source, sha1, now)
        try:
            with self._obtained(client, mchid, bill_date, "fundflow") as (how, source, fundflow_sha1):
                if how != "empty":
                    report.totals["fundflow"] = self._fundflow(source, fundflow_sha1)
        except _Unavailable as unavailable:
            # The trade bill's differences are recorded and reported; the day is not done until both are had.
            log.warning("bills mchid=%s day=%s: %s", mchid, bill_date, unavailable.reason)
            report.status, report.reason = unavailable.status, unavailable.reason
        return report

    def _match(
        self, mchid: str, bill_date: dt.date, source: Iterable[bytes], sha1: str, now: dt.datetime
    ) -> BillReport:
        match = self.lines.loaded(mchid, bill_date, sha1)
        if match is None:
            try:
                match = self.lines.load(mchid, bill_date, sha1, read_trade_bill(source))
            except BillMalformed as exc:
                raise _Unavailable("failed", _reason("trade", exc)) from None
        self._catch_up()
        match.discrepancies = self.lines.match(mchid, bill_date, self._view())
        evidence = f"bill:trade:{bill_date.isoformat()}:{sha1}"
        self._ledger.record_bill_discrepancies(mchid, bill_date, evidence, match.discrepancies)
        found = self._resolve(mchid, match.discrepancies)
        previous = self.reports.get(mchid, bill_date)
        if previous is not None:
            now_found = {_identity(d) for d in found}
            found += [
                dataclasses.replace(d, resolved=True) for d in previous.discrepancies if _identity(d) not in now_found
            ]
        status: Literal["agreed", "discrepancies"] = "discrepancies" if any(not d.resolved for d in found) else "agreed"
        return BillReport(
            mchid,
            bill_date,
            status,
            now,
            sha1=sha1,
            rows=match.rows,
            payments=match.payments,
            refunds=match.refunds,
            totals=_totals(match),
            discrepancies=found,
        )

    def _resolve(self, mchid: str, found: list[Discrepancy]) -> list[Discrepancy]:
        """Query each payment the ledger lacked (up to `QUERY_LIMIT`); resolved when the query decided it
        with the bill's transaction and amount."""
        if self._query is None:
            return list(found)
        resolved: list[Discrepancy] = []
        queried = 0
        for discrepancy in found:
            if discrepancy.kind is DiscrepancyKind.MISSING_IN_LEDGER and discrepancy.refund_id is None:
                if queried < QUERY_LIMIT:
                    queried += 1
                    discrepancy = self._query_payment(mchid, discrepancy)
            resolved.append(discrepancy)
        return resolved

    def _query_payment(self, mchid: str, discrepancy: Discrepancy) -> Discrepancy:
        assert self._query is not None
        try:
            order = self._query(mchid, discrepancy.out_trade_no, sub_mchid=discrepancy.sub_mchid)
        except (WeChatPayError, LedgerError) as exc:
            log.warning("bills: query %s mchid=%s failed: %s", discrepancy.out_trade_no, mchid, exc.reason)
            return discrepancy
        decided = (
            order.paid
            and order.transaction_id == discrepancy.transaction_id
            and order.paid_total == discrepancy.bill_amount
        )
        return (
            dataclasses.replace(discrepancy, resolved=True, ledger_amount=order.paid_total) if decided else discrepancy
        )

    def _fundflow(self, source: Iterable[bytes], sha1: str) -> dict[str, Any]:
        bill = read_fundflow_bill(source)
        try:
            for _ in bill:
                pass
            summary = bill.summary
        except BillMalformed as exc:
            raise _Unavailable("failed", _reason("fund-flow", exc)) from None
        return {
            "sha1": sha1,
            "rows": summary.count,
            "income": summary.income_fen,
            "expense": summary.expense_fen,
        }

    # -- having a bill ---------------------------------------------------------------------------

    def _obtained(self, client: BillClient, mchid: str, bill_date: dt.date, kind: str) -> _Obtaining:
        return _Obtaining(
            self._ledger, functools.partial(self._fetch, client, mchid, bill_date, kind), (mchid, bill_date, kind)
        )

    def _fetch(self, client: BillClient, mchid: str, bill_date: dt.date, kind: str) -> tuple[Path, BillDownload] | None:
        """Apply and download now (a download URL lives minutes: never kept); None for an empty day."""
        apply = client.apply_trade_bill if kind == "trade" else client.apply_fundflow_bill
        label = "trade" if kind == "trade" else "fund-flow"
        try:
            ticket = apply(bill_date)
            return download_bill_to_temp(client.download_bill, ticket, folder=self._folder)
        except BillNotFound:
            return None
        except BillNotReady as exc:
            raise _Unavailable("not_ready", _reason(label, exc)) from None
        except WeChatPayError as exc:
            raise _Unavailable("failed", _reason(label, exc)) from None


class _Obtaining:
    """`with` it: the bill kept (fetched first if need be), as (how, its bytes, its SHA-1)."""

    def __init__(
        self,
        ledger: Ledger,
        fetch: Callable[[], tuple[Path, BillDownload] | None],
        bill: tuple[str, dt.date, str],
    ) -> None:
        self._ledger, self._fetch = ledger, fetch
        self._mchid, self._day, self._kind = bill
        self._path: Path | None = None

    def __enter__(self) -> tuple[Obtained, Iterable[bytes], str]:
        ledger = self._ledger
        status = ledger.bill_status(self._mchid, self._day, self._kind)
        if status.state == "empty":
            return "empty", (), ""
        if status.state == "stored":
            assert status.sha1 is not None
            return "kept", ledger.open_stored_bill(self._mchid, self._day, self._kind), status.sha1
        fetched = self._fetch()
        if fetched is None:
            ledger.store_empty_bill(self._mchid, self._day, self._kind)
            return "empty", (), ""
        self._path, download = fetched
        ledger.store_bill(self._mchid, self._day, self._kind, self._path, download.sha1, download.size)
        # Read back from the verified file just kept: the same bytes, without inflating the chunks.
        return "fetched", _file_chunks(self._path), download.sha1

    def __exit__(self, *exc: object) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(_READ):
            yield chunk


def _identity(d: Discrepancy) -> tuple[str, str, str | None]:
    return (str(d.kind), d.transaction_id, d.refund_id or d.out_refund_no)


def _totals(match: BillMatch) -> dict[str, Any]:
    """The day's figures in fen; fees (5 decimals of yuan in the bill) as exact decimal strings of fen."""
    return {
        "payments": match.payments_fen,
        "refunds": match.refunds_fen,
        "fees": fen_text(match.fees),
        "net": fen_text(Decimal(match.payments_fen - match.refunds_fen) / 100 - match.fees),
    }
