"""Daily bills over HTTP: a day's reconciliation report, and running one ([protocol: Daily bills]).

`GET /bills/{bill_date}` reads the report kept by the last run; `POST /bills/{bill_date}/reconcile`
runs one (fetching the bill if it is not kept yet) and answers its report: `200` when the bill
could be had, whatever it showed, `502` when it could not (not ready, or failed), with the report
under the usual failure shape. The operator pages run reconciliations through the same function.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ErrorAnswer, answer_for
from api.params import bill_date_param, mchid_param
from api.responses import LedgerJSONResponse, fail
from api.state import AppState, app_state
from ledger.errors import BillNotReady, WeChatPayError
from projections.bills.lines import BillLines
from projections.bills.reports import BillReport, fen_text

__all__ = ["UNAVAILABLE", "bill_figures", "get_bill", "reconcile_bill", "run_reconciliation", "unavailable_answer"]

UNAVAILABLE = frozenset({"not_ready", "failed"})  # the statuses of a run that had no bill to match


async def run_reconciliation(state: AppState, mchid: str, bill_date: dt.date) -> BillReport:
    """Reconcile one day in a worker thread (it blocks on WeChat Pay and the store); the saved report."""
    services = state.services
    return await anyio.to_thread.run_sync(
        lambda: services.bills.reconcile(mchid, bill_date), limiter=state.bills_limiter
    )


def unavailable_answer(report: BillReport) -> ErrorAnswer:
    """How a run without a bill is answered: as the error that stopped it would be."""
    return answer_for(BillNotReady if report.status == "not_ready" else WeChatPayError)


async def get_bill(request: Request) -> Response:
    """The report of the day's last reconciliation; 404 when the day was never reconciled."""
    state = app_state(request)
    bill_date = bill_date_param(request.path_params["bill_date"])
    mchid = mchid_param(state, request.query_params.get("mchid"))
    reports = state.services.bill_reports
    report = await anyio.to_thread.run_sync(lambda: reports.get(mchid, bill_date), limiter=state.limiter)
    if report is None:
        return fail(404, "that day was never reconciled", "NOT_FOUND")
    return LedgerJSONResponse(report.to_json())


async def reconcile_bill(request: Request) -> Response:
    """Run the day's reconciliation now; 200 with its report, 502 (FAIL, with the report) without a bill."""
    state = app_state(request)
    bill_date = bill_date_param(request.path_params["bill_date"])
    mchid = mchid_param(state, request.query_params.get("mchid"))
    report = await run_reconciliation(state, mchid, bill_date)
    if report.status in UNAVAILABLE:
        answer = unavailable_answer(report)
        body = {
            "code": answer.code,
            "message": report.reason or "the bill could not be had",
            "report": report.to_json(),
        }
        return LedgerJSONResponse(body, status_code=answer.status)
    return LedgerJSONResponse(report.to_json())


def bill_figures(lines: BillLines, mchid: str, order: Mapping[str, Any]) -> dict[str, str | None]:
    """The order's bill fee and net amount, exact decimal strings of fen; both None while never billed.

    A sub-merchant's order counts only the lines of its own payment and refunds: another
    sub-merchant of the provider may have an order of the same number."""
    line_ids = None
    if order.get("sub_mchid"):
        refunds = order.get("refunds") or []
        line_ids = {str(order.get("transaction_id"))} | {str(r.get("refund_id")) for r in refunds}
    fee = lines.order_fee(mchid, str(order["out_trade_no"]), line_ids=line_ids)
    if fee is None:
        return {"fee_fen": None, "net_fen": None}
    moved = (order.get("paid_total") or 0) - (order.get("refunded_total") or 0)
    return {"fee_fen": fen_text(fee), "net_fen": fen_text(Decimal(moved) / 100 - fee)}
