"""The daily bills pages under /ui: each merchant's recent days, one day's report, and a run now.

`/ui/bills` lists the kept reports; `/ui/bills/{bill_date}?mchid=` shows one day with each
difference linking to its order; `POST /ui/bills/reconcile` (CSRF like every form here) runs
the day as `POST /bills/{bill_date}/reconcile` does. Behind the same guard as the other pages.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.bills import UNAVAILABLE, run_reconciliation
from api.params import bill_date_param, mchid_param
from api.state import AppState, app_state
from api.ui.auth import Access
from ledger.errors import InvalidRequest
from ledger.operators import Role
from projections.bills.reports import BillReport
from projections.bills.service import beijing_today

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["BillPages", "bill_url"]

log = logging.getLogger("api.ui")

RECENT_DAYS = 31


def bill_url(bill_date: dt.date | str, mchid: str, **params: str) -> str:
    day = bill_date.isoformat() if isinstance(bill_date, dt.date) else bill_date
    return f"/ui/bills/{day}?{urlencode({'mchid': mchid, **params})}"


@dataclass(frozen=True)
class MerchantBills:
    mchid: str
    reports: list[BillReport]


class BillPages:
    def __init__(self, pages: OperatorPages) -> None:
        self._pages = pages

    def routes(self) -> list[Route]:
        return [
            Route("/bills", self._pages.guarded(self.index), methods=["GET"]),
            Route("/bills/reconcile", self._pages.guarded(self.reconcile, Role.OPERATOR), methods=["POST"]),
            Route("/bills/{bill_date}", self._pages.guarded(self.day), methods=["GET"]),
        ]

    async def index(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        reports = state.services.bill_reports
        merchants = sorted(state.merchants)

        def read() -> list[MerchantBills]:
            return [MerchantBills(mchid, reports.recent(mchid=mchid, limit=RECENT_DAYS)) for mchid in merchants]

        found = await anyio.to_thread.run_sync(read, limiter=state.limiter)
        yesterday = beijing_today() - dt.timedelta(days=1)
        return self._pages.page(request, "bills.html", access=access, merchants=found, default_day=yesterday)

    async def day(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        try:
            bill_date = bill_date_param(request.path_params["bill_date"])
            mchid = mchid_param(state, request.query_params.get("mchid"))
        except InvalidRequest as exc:
            return self._pages.failure(request, access, exc, str(exc))
        return await self._day_page(request, access, state, mchid, bill_date)

    async def _day_page(
        self,
        request: Request,
        access: Access,
        state: AppState,
        mchid: str,
        bill_date: dt.date,
        *,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        reports = state.services.bill_reports
        report = await anyio.to_thread.run_sync(lambda: reports.get(mchid, bill_date), limiter=state.limiter)
        return self._pages.page(
            request,
            "bill.html",
            404 if report is None and status == 200 else status,
            access=access,
            mchid=mchid,
            day=bill_date.isoformat(),
            report=report,
            error=error,
            ran=request.query_params.get("ran") == "1",
        )

    async def reconcile(self, request: Request, access: Access) -> Response:
        """Run the day now; back to its page, with the reason when the bill could not be had (502)."""
        state = app_state(request)
        form = await self._pages.form(request, access)
        if isinstance(form, Response):
            return form
        try:
            bill_date = bill_date_param(form.get("bill_date"))
            mchid = mchid_param(state, form.get("mchid"))
            report = await run_reconciliation(state, mchid, bill_date)
        except InvalidRequest as exc:
            return self._pages.failure(request, access, exc, str(exc))
        log.info("operator reconciled bills mchid=%s day=%s -> %s", mchid, bill_date, report.status)
        if report.status in UNAVAILABLE:
            error = f"The bill could not be had: {report.reason or report.status}."
            return await self._day_page(request, access, state, mchid, bill_date, error=error, status=502)
        return self._pages.redirect(bill_url(bill_date, mchid, ran="1"))
