"""The unrouted notifications pages under /ui: the list, and one notification's raw history.

`/ui/notifications` lists the verified notifications that name no order (complaints,
profit-sharing, payouts, coupons…), newest first, from the same view as `GET /notifications`
(`?before=` pages to older ones, `?mchid=` and `?event_type=` filter); each links to
`/ui/notifications/{notification_id}?mchid=`, its stream with every delivery's raw body and
signature headers. Behind the same guard as the other pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.notifications import event_type_param, inbox_events, view_position
from api.state import app_state
from api.ui.auth import Access
from ledger.errors import InvalidRequest, NotificationNotFound
from projections.timeline import Timeline, build_timeline

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["NotificationPages", "notification_url"]

PAGE = 100


def notification_url(notification_id: str, mchid: str) -> str:
    return f"/ui/notifications/{quote(notification_id, safe='')}?{urlencode({'mchid': mchid})}"


def _older_url(before: int, mchid: str | None, event_type: str | None) -> str:
    params = {"before": str(before), "mchid": mchid or "", "event_type": event_type or ""}
    return f"/ui/notifications?{urlencode({k: v for k, v in params.items() if v})}"


class NotificationPages:
    def __init__(self, pages: OperatorPages) -> None:
        self._pages = pages
        pages.templates.globals.update(notification_url=notification_url)

    def routes(self) -> list[Route]:
        return [
            Route("/notifications", self._pages.guarded(self.index), methods=["GET"]),
            Route("/notifications/{notification_id}", self._pages.guarded(self.history), methods=["GET"]),
        ]

    async def index(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        params = request.query_params
        mchid = params.get("mchid") or None
        before_text = params.get("before", "")
        try:
            event_type = event_type_param(params.get("event_type"))
            if before_text and (not before_text.isascii() or not before_text.isdigit() or len(before_text) > 18):
                raise InvalidRequest("bad page")
        except InvalidRequest as exc:
            return self._pages.failure(request, access, exc, f"{exc}.")
        before = int(before_text) if before_text else None
        view = state.services.notifications_view.current()

        def read() -> tuple[list[dict[str, Any]], dict[str, int]]:
            at = view_position(state.ledger, view)
            rows = view.unrouted(mchid=mchid, event_type=event_type, before=before, limit=PAGE, newest_first=True)
            return rows, at

        rows, at = await anyio.to_thread.run_sync(read, limiter=state.limiter)
        older = _older_url(rows[-1]["position"], mchid, event_type) if len(rows) == PAGE else None
        return self._pages.page(
            request,
            "notifications.html",
            access=access,
            rows=rows,
            behind=at["behind"],
            older=older,
            mchid=mchid,
            event_type=event_type,
            first_page=before is None,
        )

    async def history(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        notification_id = request.path_params["notification_id"]
        mchid = self._pages.merchant(request, access)
        if isinstance(mchid, Response):
            return mchid

        def load() -> Timeline:
            events = inbox_events(state.ledger, mchid, notification_id)
            return build_timeline({"mchid": mchid, "notification_id": notification_id}, events)

        try:
            timeline = await anyio.to_thread.run_sync(load, limiter=state.limiter)
        except NotificationNotFound as exc:
            return self._pages.failure(request, access, exc, "No such notification.")
        return self._pages.page(
            request, "notification.html", access=access, t=timeline, mchid=mchid, notification_id=notification_id
        )
