"""`/ui/activity`: what operators (and the ledger's automation) did, newest first, from the activity
view (`projections.read_model.activity`): `?operator=` and `?action=` filter, `?before=` pages to
older actions. Each row links to the order it was about. Behind the same guard as the other pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.state import app_state
from api.ui.auth import Access
from ledger.errors import InvalidRequest
from projections.read_model.activity import activity_head

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["ActivityPages"]

PAGE = 100
ACTIONS = (
    "anomaly_acknowledged",
    "requery",
    "resend",
    "refund_requested",
    "order_closed",
    "endpoint_enabled",
    "endpoint_disabled",
    "messages_recovered",
)


def _older_url(before: int, operator: str | None, action: str | None) -> str:
    params = {"before": str(before), "operator": operator or "", "action": action or ""}
    return f"/ui/activity?{urlencode({k: v for k, v in params.items() if v})}"


class ActivityPages:
    def __init__(self, pages: OperatorPages) -> None:
        self._pages = pages

    def routes(self) -> list[Route]:
        return [Route("/activity", self._pages.guarded(self.index), methods=["GET"])]

    async def index(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        params = request.query_params
        operator = params.get("operator", "").strip()[:64] or None
        action = params.get("action") or None
        before_text = params.get("before", "")
        try:
            if action is not None and action not in ACTIONS:
                raise InvalidRequest("unknown action")
            if before_text and (not before_text.isascii() or not before_text.isdigit() or len(before_text) > 18):
                raise InvalidRequest("bad page")
        except InvalidRequest as exc:
            return self._pages.failure(request, access, exc, f"{exc}.")
        before = int(before_text) if before_text else None
        view = state.services.activity_view.current()

        def read() -> tuple[list[dict[str, Any]], list[str], int]:
            behind = max(0, activity_head(state.ledger) - view.position()) if before is None else 0
            rows = view.recent(operator=operator, action=action, before=before, limit=PAGE)
            return rows, view.operators(), behind

        rows, operators, behind = await anyio.to_thread.run_sync(read, limiter=state.limiter)
        older = _older_url(rows[-1]["position"], operator, action) if len(rows) == PAGE else None
        return self._pages.page(
            request,
            "activity.html",
            access=access,
            rows=rows,
            operators=operators,
            actions=ACTIONS,
            chosen_operator=operator,
            chosen_action=action,
            behind=behind > 0,
            older=older,
            first_page=before is None,
        )
