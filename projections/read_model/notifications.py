"""The unrouted notifications: one row per verified notification that names no order, from the log.

A verified notification that is not a payment or refund of an order (complaints, profit-sharing,
payouts, coupons… [next: Other notification types]) is recorded raw in a stream of its own, its
inbox (`NotificationInbox`, one per mchid and notification id), and acknowledged. This projection
follows the inboxes' deliveries and keeps one row per notification: whose it is, what it is
(`event_type`, the envelope's `resource_type`, `original_type` and `summary`), when it first came,
how many deliveries. `GET /notifications?routed=false` and `/ui/notifications` list it. The row and
the tracking position are written in one transaction, as the orders view does.

Its own projection, not a table of the orders view: its tracking position is its own, so a ledger
upgraded to this version lists the notifications its log already holds with no rebuild (the
orders view's position is past them, and its bulk rebuild is tuned for order events only), and the
orders view's head, which read-your-writes waits for, stays about orders. A row is the first
delivery's facts with the count and time of the latest, the position of the first delivery's event
in the log being its place in the list (a keyset that grows only at its end, as the log does).
Rebuildable like the orders view: `payledger rebuild notifications_view` projects a new version
from the start of the log beside the live one, then switches the live pointer to it.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import BaseProjectionRunner, Projection
from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.domain import NotificationInbox
from ledger.store.views import PostgresViewRecorder, SQLiteViewRecorder, ViewRecorder, open_view, view_env
from projections.read_model.followed import REBUILD_TIMEOUT, rebuild_live_view, run_live_projector
from projections.read_model.runner import projection_runner
from projections.read_model.sql import filters, upsert, where

__all__ = [
    "LISTED_FIELDS",
    "NOTIFICATIONS_VIEW",
    "NOTIFICATION_FIELDS",
    "NotificationsProjection",
    "NotificationsRebuild",
    "NotificationsView",
    "notifications_head",
    "open_notifications_view",
    "rebuild_notifications_view",
    "run_notifications_projector",
    "start_notifications_projector",
]

log = logging.getLogger("projections.runner")

NOTIFICATIONS_VIEW = "notifications_view"
NOTIFICATION_KEY = ("mchid", "notification_id")
# What a row tells of its notification; the rest of it places the row in the log.
_FACTS = ("event_type", "resource_type", "original_type", "summary", "received_at", "last_received_at", "deliveries")
NOTIFICATION_FIELDS = (*NOTIFICATION_KEY, "stream_id", "position", *_FACTS, "version")
LISTED_FIELDS = (*NOTIFICATION_KEY, *_FACTS)  # what a list of the notifications shows of each
# What a later delivery of the same notification changes; the rest is the first delivery's.
_LATEST = ("last_received_at", "deliveries", "version")
_TIMES = ("received_at", "last_received_at")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def notification_row(inbox: NotificationInbox, event: Any, position: int) -> dict[str, Any]:
    """The row of `inbox` as it stands after its delivery `event` (the notification's `position`th
    event in the log, which places a first delivery in the list)."""
    envelope = event.envelope if isinstance(event.envelope, dict) else {}
    resource = envelope.get("resource")
    received = event.received_at.timestamp()
    return {
        "mchid": inbox.mchid,
        "notification_id": inbox.notification_id,
        "stream_id": str(inbox.id),
        "position": position,
        "event_type": str(event.event_type),
        "resource_type": _text(envelope.get("resource_type")),
        "original_type": _text(resource.get("original_type")) if isinstance(resource, dict) else None,
        "summary": _text(envelope.get("summary")),
        "received_at": received,
        "last_received_at": received,
        "deliveries": inbox.deliveries,
        "version": inbox.version,
    }


def _row_out(row: Any) -> dict[str, Any]:
    values = dict(zip(NOTIFICATION_FIELDS, row, strict=True))
    for name in _TIMES:
        values[name] = dt.datetime.fromtimestamp(values[name], dt.UTC)
    return values


class NotificationsView(ViewRecorder):
    """The table and its queries, for both stores; SQL written once with %s placeholders."""

    table_prefix: str = NOTIFICATIONS_VIEW

    @functools.cached_property
    def _slots(self) -> dict[str, str]:
        return {
            "notifications": self.qualify(f"{self.table_prefix}_notifications"),
            "by_position": self.quote(f"{self.table_prefix}_notifications_position"),
        }

    def _sql(self, text: str) -> str:
        return self.sql(text, **self._slots)

    def view_statements(self) -> list[str]:
        return [
            self._sql(
                "CREATE TABLE IF NOT EXISTS {notifications} (mchid TEXT NOT NULL, notification_id TEXT NOT NULL,"
                " stream_id TEXT NOT NULL, position BIGINT NOT NULL, event_type TEXT NOT NULL, resource_type TEXT,"
                " original_type TEXT, summary TEXT, received_at DOUBLE PRECISION NOT NULL,"
                " last_received_at DOUBLE PRECISION NOT NULL, deliveries INTEGER NOT NULL, version INTEGER NOT NULL,"
                " PRIMARY KEY (mchid, notification_id))"
            ),
            self._sql("CREATE UNIQUE INDEX IF NOT EXISTS {by_position} ON {notifications} (position)"),
        ]

    def record(self, row: dict[str, Any], tracking: Tracking) -> None:
        """The notification's row (the first delivery inserts it, a later one updates `_LATEST`) and
        the tracking position, in one transaction."""
        with self.transaction() as curs:
            curs.execute(
                self._sql(upsert("notifications", NOTIFICATION_FIELDS, NOTIFICATION_KEY, _LATEST)),
                [row[name] for name in NOTIFICATION_FIELDS],
            )
            self.write_tracking(curs, tracking)

    def unrouted(
        self,
        *,
        mchid: str | None = None,
        event_type: str | None = None,
        after: int | None = None,
        before: int | None = None,
        limit: int = 50,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Notifications in the order they first came (the newest first with `newest_first`), filtered;
        `after`/`before`: the `position` of the last row of the page before (a keyset)."""
        clauses, params = filters(
            ("mchid = %s", mchid),
            ("event_type = %s", event_type),
            ("position > %s", after),
            ("position < %s", before),
        )
        text = f"SELECT {', '.join(NOTIFICATION_FIELDS)} FROM {{notifications}}{where(clauses)}"
        text += f" ORDER BY position {'DESC' if newest_first else 'ASC'} LIMIT %s"
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql(text), [*params, limit])
            return [_row_out(row) for row in curs.fetchall()]

    def count(self) -> int:
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql("SELECT COUNT(*) FROM {notifications}"))
            row = curs.fetchone()
        return int(row[0]) if row else 0

    def position(self, application_name: str = Ledger.name) -> int:
        return self.max_tracking_id(application_name) or 0


class PostgresNotificationsView(NotificationsView, PostgresViewRecorder):
    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        # One version per tracking table: "notifications_view_v2_tracking" -> "notifications_view_v2".
        self.table_prefix = self.tracking_table_name.removesuffix("_tracking")


class SQLiteNotificationsView(NotificationsView, SQLiteViewRecorder):
    pass  # every version has a file of its own: the tables' names need not differ


class NotificationsProjection(Projection[Any]):
    """Each delivery to a notification inbox, as its notification's row."""

    name = NOTIFICATIONS_VIEW
    topics = (get_topic(NotificationInbox.NotificationReceived),)

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self.ledger: Ledger | None = None  # set by the runner: loads the inbox (its mchid) at the event

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        assert self.ledger is not None, "the runner attaches the ledger before events flow"
        inbox: Any = self.ledger.repository.get(domain_event.originator_id, version=domain_event.originator_version)
        assert isinstance(inbox, NotificationInbox)
        self.view.record(notification_row(inbox, domain_event, tracking.notification_id), tracking)


# -- running it ------------------------------------------------------------------------------


def open_notifications_view(database_url: str, name: str = NOTIFICATIONS_VIEW) -> NotificationsView:
    """The view for reading (the API) or writing (the projector); its table created if missing."""
    view = open_view(database_url, name, postgres=PostgresNotificationsView, sqlite=SQLiteNotificationsView)
    assert isinstance(view, NotificationsView)
    return view


def start_notifications_projector(
    database_url: str, name: str = NOTIFICATIONS_VIEW
) -> tuple[BaseProjectionRunner[Ledger], NotificationsView, Ledger]:
    """Start following the log; returns the runner (a context manager), its view and its loader."""
    view = open_notifications_view(database_url, name)
    runner, loader = projection_runner(database_url, NotificationsProjection(view), view, view_env(database_url, name))
    return runner, view, loader


def notifications_head(ledger: Ledger) -> int:
    """The log position of the newest delivery to an inbox: what the view must reach (0: none yet)."""
    return ledger.event_log.last_id(NotificationsProjection.topics)


def run_notifications_projector(database_url: str, stop: threading.Event, poll: float = 1.0) -> None:
    """Part of `payledger project`: wait for the lock, follow the log and the live version until `stop`."""
    run_live_projector(database_url, NOTIFICATIONS_VIEW, start_notifications_projector, stop, poll)


@dataclass(frozen=True)
class NotificationsRebuild:
    old: str
    new: str
    notifications: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"rebuilt {self.new} (was {self.old}): {self.notifications:,} unrouted notification(s) in "
            f"{self.seconds:.1f} s; {self.new} is live"
        )


def rebuild_notifications_view(database_url: str, *, timeout: float = REBUILD_TIMEOUT) -> NotificationsRebuild:
    """Project the next version of the view from the start of the log beside the live one, up to the
    newest inbox delivery, then switch to it (the projector follows the switch)."""
    done = rebuild_live_view(
        database_url,
        NOTIFICATIONS_VIEW,
        start_notifications_projector,
        notifications_head,
        lambda new: (f"{new}_notifications",),
        timeout=timeout,
    )
    return NotificationsRebuild(done.old, done.new, done.rows, done.seconds)
