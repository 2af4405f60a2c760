"""The anomalies page, `GET /ui/anomalies`, and acknowledging one, `POST /ui/anomalies/ack`.

Anomalies are listed from the orders view (the orders with any, each order's `anomalies` as its
summary has them): open ones first, then those an operator acknowledged, each linking to its
order. Acknowledging asks `Services.actions.acknowledge` (an event on the order's stream naming
the operator and their note); a viewer sees no form and is refused the POST (403).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.params import OUT_TRADE_NO, mchid_param, sub_mchid_param
from api.state import app_state
from api.ui.auth import Access
from ledger.errors import InvalidRequest, LedgerError, OrderNotFound
from ledger.identity import OrderKey
from ledger.operators import Role
from ledger.order_actions import NOTE_LIMIT

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["AnomalyEntry", "AnomalyPages", "anomaly_entries"]

log = logging.getLogger("api.ui")

LISTED_OPEN = 100  # orders with an open anomaly listed, the most recently changed first
LISTED_ACKNOWLEDGED = 50  # and orders with an acknowledged one, after them
MAX_KEY = 300


@dataclass(frozen=True)
class AnomalyEntry:
    """One anomaly of one order, as the pages show it."""

    mchid: str
    sub_mchid: str | None
    out_trade_no: str
    kind: str
    key: str | None  # what acknowledging names it by (None: an order summarised before anomalies had keys)
    detail: dict[str, Any]
    evidence: str
    detected_at: Any  # when it was detected, or (the summary does not say when) the order's last change
    detected_exact: bool
    acknowledged: dict[str, Any] | None  # who, when, with which note; None while open

    @property
    def open(self) -> bool:
        return self.acknowledged is None


def _acknowledged(anomaly: dict[str, Any]) -> dict[str, Any] | None:
    """Who acknowledged `anomaly`, when, with which note (the order's summary says); None while open."""
    found = anomaly.get("acknowledged")
    return found if isinstance(found, dict) else None


def anomaly_entries(rows: list[dict[str, Any]]) -> list[AnomalyEntry]:
    """The anomalies of the orders view's `rows` (see `OrdersView.with_anomalies`): open ones first, each
    group in the rows' order, an order's newest anomaly first."""
    entries: list[AnomalyEntry] = []
    for row in rows:
        document = row["document"]
        for anomaly in reversed(document.get("anomalies") or []):
            detected = anomaly.get("detected_at")
            entries.append(
                AnomalyEntry(
                    mchid=row["mchid"],
                    sub_mchid=row["sub_mchid"],
                    out_trade_no=row["out_trade_no"],
                    kind=str(anomaly.get("kind", "")),
                    key=anomaly.get("key"),
                    detail=anomaly.get("detail") or {},
                    evidence=str(anomaly.get("evidence", "")),
                    detected_at=detected if detected is not None else row["updated_at"],
                    detected_exact=detected is not None,
                    acknowledged=_acknowledged(anomaly),
                )
            )
    return sorted(entries, key=lambda e: not e.open)  # stable: each group keeps the rows' order


class AnomalyPages:
    def __init__(self, pages: OperatorPages) -> None:
        self._pages = pages

    def routes(self) -> list[Route]:
        return [
            Route("/anomalies", self._pages.guarded(self.index), methods=["GET"]),
            Route("/anomalies/ack", self._pages.guarded(self.acknowledge, Role.OPERATOR), methods=["POST"]),
        ]

    async def index(self, request: Request, access: Access, *, error: str | None = None, status: int = 200) -> Response:
        state = app_state(request)
        view = state.orders_view
        missing = view is None or view.outdated
        open_rows: list[dict[str, Any]] = []
        acknowledged_rows: list[dict[str, Any]] = []
        open_count = total = 0
        if view is not None and not missing:

            def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[int, int]]:
                return (
                    view.with_anomalies(LISTED_OPEN),
                    view.with_anomalies(LISTED_ACKNOWLEDGED, acknowledged=True),
                    view.anomaly_totals(),
                )

            open_rows, acknowledged_rows, (open_count, total) = await anyio.to_thread.run_sync(
                read, limiter=state.limiter
            )
        # An order with open and acknowledged anomalies is in both lists: each keeps its own kind.
        entries = [e for e in anomaly_entries(open_rows) if e.open]
        entries += [e for e in anomaly_entries(acknowledged_rows) if not e.open]
        return self._pages.page(
            request,
            "anomalies.html",
            status,
            access=access,
            entries=entries,
            open_count=open_count,
            total=total,
            capped=len(open_rows) == LISTED_OPEN or len(acknowledged_rows) == LISTED_ACKNOWLEDGED,
            listed=(LISTED_OPEN, LISTED_ACKNOWLEDGED),
            view_missing=missing,
            error=error,
            acked=request.query_params.get("acked", "")[:80],
        )

    async def acknowledge(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        form = await self._pages.form(request, access)
        if isinstance(form, Response):
            return form
        out_trade_no, key, note = (
            form.get("out_trade_no", ""),
            form.get("key", "").strip(),
            form.get("note", "").strip(),
        )
        try:
            mchid = mchid_param(state, form.get("mchid"))
            sub_mchid = sub_mchid_param(state, mchid, form.get("sub_mchid") or None)
            if not OUT_TRADE_NO.fullmatch(out_trade_no):
                raise InvalidRequest("not an out_trade_no")
            if not key or len(key) > MAX_KEY:
                raise InvalidRequest("no anomaly named")
            if len(note) > NOTE_LIMIT:
                raise InvalidRequest(f"the note is longer than {NOTE_LIMIT} characters")
        except InvalidRequest as exc:
            return await self.index(request, access, error=f"{exc}.", status=400)
        order = OrderKey(mchid, out_trade_no, sub_mchid)
        actions = state.services.actions
        try:
            done = await anyio.to_thread.run_sync(
                lambda: actions.acknowledge(order, key, note=note, operator=access.operator), limiter=state.limiter
            )
        except OrderNotFound as exc:
            return self._pages.failure(request, access, exc, "No such order.")
        except InvalidRequest as exc:
            return await self.index(request, access, error=f"{exc}.", status=400)
        except LedgerError as exc:
            return self._pages.failure(request, access, exc, "The anomaly could not be acknowledged.")
        log.info(
            "operator %s acknowledged %s of %s mchid=%s sub_mchid=%s",
            access.operator,
            key,
            out_trade_no,
            mchid,
            sub_mchid,
        )
        said = f"{out_trade_no}: " + ("acknowledged" if done else "already acknowledged")
        return self._pages.redirect("/ui/anomalies?" + urlencode({"acked": said}))
