"""The unrouted notifications: verified, recorded and acknowledged, but naming no order.

A notification that is not a payment or refund of an order (complaints, profit-sharing, payouts,
coupons… [next: Other notification types]) is kept raw in a stream of its own, one per
notification id, and answered like any other. `GET /notifications?routed=false` lists them from
their view (`projections.read_model.notifications`), in the order they first came, with a keyset
cursor; `GET /notifications/{notification_id}/events` is one notification's raw history, every
delivery with its raw body and signature headers. A notification that names an order is in that
order's history (`GET /orders/{out_trade_no}/events`): `routed=true` is refused (400), not listed
twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response

from api.params import mchid_param
from api.responses import LedgerJSONResponse
from api.state import app_state
from ledger.application import Ledger
from ledger.errors import InvalidRequest, NotificationNotFound
from projections.read_model.notifications import (
    LISTED_FIELDS,
    NotificationsProjection,
    NotificationsView,
    notifications_head,
)

__all__ = [
    "EVENT_TYPE",
    "ListQuery",
    "event_type_param",
    "list_notifications",
    "list_query",
    "notification_events",
    "notification_item",
    "notifications_url",
    "unrouted_page",
]

# WeChat Pay's event types: COMPLAINT.CREATE, MCHTRANSFER.BILL.FINISHED, REFUND.V2 (ours), …
EVENT_TYPE = re.compile(r"[A-Z0-9_.]{1,64}")
MAX_NOTIFICATION_ID = 128  # WeChat's are 36 characters; an APIv2 one we derive is under 80
MAX_LIMIT = 500
ROUTED_TRUE = (
    "routed=true is not listed: a notification that names an order is in that order's history "
    "(GET /orders/{out_trade_no}/events)"
)
_BEHIND_CAP = 10_000  # events counted exactly; beyond, "at least this many"


def event_type_param(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not EVENT_TYPE.fullmatch(value):
        raise InvalidRequest("event_type must be a WeChat Pay event type such as COMPLAINT.CREATE")
    return value


def notifications_url(mchid: str, notification_id: str) -> str:
    """Where a notification's raw history is (the JSON API)."""
    return f"/notifications/{quote(notification_id, safe='')}/events?{urlencode({'mchid': mchid})}"


def notification_item(row: dict[str, Any]) -> dict[str, Any]:
    """One row of the view as the list shows it."""
    return {
        **{name: row[name] for name in LISTED_FIELDS},
        "routed": False,
        "events_url": notifications_url(row["mchid"], row["notification_id"]),
    }


@dataclass(frozen=True)
class ListQuery:
    """`?routed=false&mchid=&event_type=&limit=&cursor=`, checked."""

    mchid: str | None
    event_type: str | None
    limit: int
    after: int | None


def list_query(params: Any, *, default_limit: int = 50) -> ListQuery:
    routed = params.get("routed") or "false"
    if routed == "true":
        raise InvalidRequest(ROUTED_TRUE)
    if routed != "false":
        raise InvalidRequest("routed must be false (or absent)")
    raw_limit = params.get("limit") or str(default_limit)
    if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}")
    cursor = params.get("cursor") or None
    if cursor is not None and (not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18):
        raise InvalidRequest("bad cursor")
    return ListQuery(
        params.get("mchid") or None,
        event_type_param(params.get("event_type")),
        int(raw_limit),
        int(cursor) if cursor is not None else None,
    )


def view_position(ledger: Ledger, view: NotificationsView) -> dict[str, int]:
    """How far the view is: its position, the newest inbox delivery in the log, the deliveries between."""
    position, head = view.position(), notifications_head(ledger)
    behind = (
        ledger.event_log.count_in_range(position, head, NotificationsProjection.topics, _BEHIND_CAP)
        if head > position
        else 0
    )
    return {"position": position, "log_position": head, "behind": behind}


def unrouted_page(
    ledger: Ledger, view: NotificationsView, query: ListQuery
) -> tuple[list[dict[str, Any]], str | None, dict[str, int]]:
    """A page of the list (blocking): its items, the next page's cursor (None on the last), the view's position."""
    at = view_position(ledger, view)
    rows = view.unrouted(mchid=query.mchid, event_type=query.event_type, after=query.after, limit=query.limit)
    next_cursor = str(rows[-1]["position"]) if len(rows) == query.limit else None
    return [notification_item(row) for row in rows], next_cursor, at


async def list_notifications(request: Request) -> Response:
    """`GET /notifications?routed=false&mchid=&event_type=&limit=&cursor=` from the view, oldest first."""
    state = app_state(request)
    query = list_query(request.query_params)
    view = state.services.notifications_view.current()
    items, next_cursor, at = await anyio.to_thread.run_sync(
        lambda: unrouted_page(state.ledger, view, query), limiter=state.limiter
    )
    return LedgerJSONResponse({"notifications": items, "next_cursor": next_cursor, "view": at})


def inbox_events(ledger: Ledger, mchid: str, notification_id: str) -> list[dict[str, Any]]:
    """The notification's stream (blocking); `NotificationNotFound` when merchant `mchid` has none of that id."""
    events = ledger.inbox_history(mchid, notification_id) if len(notification_id) <= MAX_NOTIFICATION_ID else []
    if not events:
        raise NotificationNotFound(notification_id[:64])
    return events


async def notification_events(request: Request) -> Response:
    """`GET /notifications/{notification_id}/events[?mchid=]`: every delivery, raw, in stream order."""
    state = app_state(request)
    notification_id = request.path_params["notification_id"]
    mchid = mchid_param(state, request.query_params.get("mchid"))
    events = await anyio.to_thread.run_sync(
        lambda: inbox_events(state.ledger, mchid, notification_id), limiter=state.limiter
    )
    return LedgerJSONResponse({"mchid": mchid, "notification_id": notification_id, "routed": False, "events": events})
