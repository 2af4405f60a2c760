"""The orders list under /ui: every order in the read model, filtered, newest first, and its CSV export.

`GET /ui/orders` shows a page of 50 (`?after=` is the last row's key: keyset paging, see
`projections.read_model.order_list`); `GET /ui/orders.csv` streams every order the same filters
pick, a batch at a time. The filters, all optional, all from the query string and so untrusted
(a value that is not one of these is answered 400 with what is wrong, nothing else):

    state        a trade_state (SUCCESS, REFUND, NOTPAY, …)
    mchid        a merchant id; sub_mchid a sub-merchant's (6-32 digits each)
    anomalies    "1": only orders with an anomaly
    from, to     Asia/Shanghai days (YYYY-MM-DD), inclusive, of when the order was first recorded
    min, max     the order's amount in yuan, at most 2 decimals ("12.5" is 1250 fen), inclusive
    q            the start of an out_trade_no or a transaction_id (letters, digits, _-|*@)
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.state import AppState, app_state
from api.ui.auth import Access
from api.ui.formatting import beijing, day_start
from ledger.domain import FINAL_TRADE_STATES, OPEN_TRADE_STATES
from projections.read_model.order_list import ListKey, OrderFilter, list_key, list_orders, walk_orders
from projections.read_model.runner import orders_head
from projections.read_model.view import OrdersView

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["CSV_COLUMNS", "OrderListPages", "csv_cell", "order_filter"]

PAGE = 50
TRADE_STATES = tuple(sorted(OPEN_TRADE_STATES | FINAL_TRADE_STATES))
FILTERS = ("state", "mchid", "sub_mchid", "anomalies", "from", "to", "min", "max", "q")
_MERCHANT = re.compile(r"[0-9]{6,32}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_YUAN = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,2}))?")
_NUMBER = re.compile(r"[0-9A-Za-z_\-|*@]{1,32}")
# What a spreadsheet would take for a formula at the start of a cell (OWASP's list, tab and CR included).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "created_at",
    "mchid",
    "sub_mchid",
    "out_trade_no",
    "transaction_id",
    "trade_state",
    "amount_total_fen",
    "paid_total_fen",
    "refunded_total_fen",
    "currency",
    "anomalies",
    "success_time",
)
_CSV_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class BadFilter(ValueError):
    """A filter value that is not one the list takes; its text says which and why (shown as is)."""


def _day(name: str, text: str) -> dt.date:
    try:
        if not _DAY.fullmatch(text):
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{name} must be a day written YYYY-MM-DD.") from None


def yuan_to_fen(name: str, text: str) -> int:
    """ "12", "12.5", "12.34" yuan as integer fen (exactly: no float on the way)."""
    match = _YUAN.fullmatch(text)
    if match is None:
        raise BadFilter(f"{name} must be an amount in yuan with at most 2 decimals, such as 12.50.")
    return int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))


def order_filter(params: QueryParams, state: AppState | None = None) -> OrderFilter:
    """The filters the query string names, checked (`BadFilter` says what is wrong)."""
    given = {name: params.get(name, "").strip() for name in FILTERS}
    if any(len(value) > 64 for value in given.values()):
        raise BadFilter("A filter value is too long.")
    trade_state = given["state"] or None
    if trade_state is not None and trade_state not in TRADE_STATES:
        raise BadFilter(f"state must be one of {', '.join(TRADE_STATES)}.")
    mchid, sub_mchid = given["mchid"] or None, given["sub_mchid"] or None
    for name, value in (("mchid", mchid), ("sub_mchid", sub_mchid)):
        if value is not None and not _MERCHANT.fullmatch(value):
            raise BadFilter(f"{name} must be a merchant id of 6-32 digits.")
    if mchid is not None and sub_mchid is None and state is not None and mchid in state.merchants:
        if not state.merchants[mchid].settings.partner:
            sub_mchid = ""  # a direct merchant's orders are all its own: one range of an index
    if given["anomalies"] not in ("", "1"):
        raise BadFilter("anomalies must be 1 (only orders with an anomaly) or left out.")
    first = _day("from", given["from"]) if given["from"] else None
    last = _day("to", given["to"]) if given["to"] else None
    if first is not None and last is not None and first > last:
        raise BadFilter("from must not be after to.")
    low = yuan_to_fen("min", given["min"]) if given["min"] else None
    high = yuan_to_fen("max", given["max"]) if given["max"] else None
    if low is not None and high is not None and low > high:
        raise BadFilter("min must not be more than max.")
    number = given["q"] or None
    if number is not None and not _NUMBER.fullmatch(number):
        raise BadFilter("q must be the start of an out_trade_no or transaction_id: letters, digits and _-|*@.")
    return OrderFilter(
        trade_state=trade_state,
        mchid=mchid,
        sub_mchid=sub_mchid,
        anomalous=given["anomalies"] == "1",
        since=day_start(first) if first is not None else None,
        until=day_start(last + dt.timedelta(days=1)) if last is not None else None,
        amount_min=low,
        amount_max=high,
        number=number,
    )


def encode_after(key: ListKey) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def decode_after(text: str) -> ListKey:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if (
        isinstance(value, list)
        and len(value) == 4
        and isinstance(value[0], int | float)
        and not isinstance(value[0], bool)
        and math.isfinite(value[0])
        and all(isinstance(part, str) and len(part) <= 64 for part in value[1:])
    ):
        return ListKey(float(value[0]), *value[1:])
    raise BadFilter("after is not a page of this list: start again from the first page.")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: text a spreadsheet would run as a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _csv_row(row: dict[str, Any]) -> list[Any]:
    values = [
        beijing(row["created_at"]),
        row["mchid"],
        row["sub_mchid"] or "",
        row["out_trade_no"],
        row["transaction_id"],
        row["trade_state"],
        row["amount_total"],
        row["paid_total"],
        row["refunded_total"],
        row["currency"],
        row["anomalies"],
        row["success_time"],
    ]
    return [csv_cell(value) for value in values]


def _list_url(path: str, params: QueryParams, **extra: str) -> str:
    kept = {name: params[name] for name in FILTERS if params.get(name)}
    query = urlencode({**kept, **extra})
    return f"{path}?{query}" if query else path


class OrderListPages:
    def __init__(self, pages: OperatorPages) -> None:
        self._pages = pages

    def routes(self) -> list[Route]:
        return [
            Route("/orders", self._pages.guarded(self.index), methods=["GET"]),
            Route("/orders.csv", self._pages.guarded(self.export), methods=["GET"]),
        ]

    def _view(self, state: AppState) -> OrdersView | None:
        view = state.orders_view
        return view if view is not None and not view.outdated else None

    def _bad(self, request: Request, access: Access, message: str) -> Response:
        return self._pages.page(request, "message.html", 400, access=access, message=message)

    async def index(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        params = request.query_params
        try:
            where_ = order_filter(params, state)
            after = decode_after(params["after"]) if params.get("after") else None
        except BadFilter as exc:
            return self._bad(request, access, str(exc))
        view = self._view(state)
        if view is None:
            return self._pages.page(
                request, "message.html", 503, access=access, message="The orders view awaits `payledger rebuild`."
            )

        def read() -> tuple[list[dict[str, Any]], bool]:
            rows = list_orders(view, where_, after=after, limit=PAGE + 1)
            return rows, view.position() < orders_head(state.ledger)

        rows, behind = await anyio.to_thread.run_sync(read, limiter=state.limiter)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        path = request.url.path
        return self._pages.page(
            request,
            "orders_list.html",
            access=access,
            rows=rows,
            behind=behind,
            f={name: params.get(name, "") for name in FILTERS},
            states=TRADE_STATES,
            next_url=_list_url(path, params, after=encode_after(list_key(rows[-1]))) if more else None,
            first_url=_list_url(path, params) if after is not None else None,
            csv_url=_list_url(path + ".csv", params),
            filtered=any(params.get(name) for name in FILTERS),
        )

    async def export(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        try:
            where_ = order_filter(request.query_params, state)
        except BadFilter as exc:
            return self._bad(request, access, str(exc))
        view = self._view(state)
        if view is None:
            return self._pages.page(
                request, "message.html", 503, access=access, message="The orders view awaits `payledger rebuild`."
            )
        batches = walk_orders(view, where_)

        def next_batch() -> list[dict[str, Any]] | None:
            return next(batches, None)

        async def lines() -> AsyncIterator[str]:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(CSV_COLUMNS)
            yield out.getvalue()
            while (batch := await anyio.to_thread.run_sync(next_batch, limiter=state.limiter)) is not None:
                out.seek(0)
                out.truncate()
                writer.writerows(_csv_row(row) for row in batch)
                yield out.getvalue()

        filename = f"orders-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.csv"
        headers = {**_CSV_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=headers)
