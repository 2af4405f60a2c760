"""What people (and the ledger's own automation) did, newest first: one row per action, from the log.

The rows come from the events that name who acted ([`ledger.order_actions`], [`ledger.journal`],
[`ledger.order_requests`]): an anomaly acknowledged, a re-query or resend asked (`OperatorActed`), a
refund asked (`RefundRequested.requested_by`), a close (`OrderClosed.requested_by`), and the actions on
no single order in an operator's journal (`OperatorJournal.Acted`). `/ui/activity` lists them, by
operator and by action. A row's place is its event's position in the log (a keyset that only grows).
Rebuildable like the other views: `payledger rebuild activity_view`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import BaseProjectionRunner, Projection
from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.domain import PaymentOrder
from ledger.journal import OperatorJournal
from ledger.store.views import PostgresViewRecorder, SQLiteViewRecorder, ViewRecorder, open_view, view_env
from projections.read_model.followed import REBUILD_TIMEOUT, Rebuilt, rebuild_live_view, run_live_projector
from projections.read_model.runner import projection_runner
from projections.read_model.sql import filters, where

__all__ = [
    "ACTIVITY_FIELDS",
    "ACTIVITY_VIEW",
    "ActivityProjection",
    "ActivityView",
    "activity_head",
    "activity_row",
    "open_activity_view",
    "rebuild_activity_view",
    "run_activity_projector",
]

ACTIVITY_VIEW = "activity_view"
ACTIVITY_FIELDS = (
    "position",
    "at",
    "operator",
    "action",
    "mchid",
    "sub_mchid",
    "out_trade_no",
    "target",
    "note",
    "detail",
)
# The events that name who acted, and the action each is listed as.
_ORDER_ACTIONS: dict[type, str] = {
    PaymentOrder.AnomalyAcknowledged: "anomaly_acknowledged",
    PaymentOrder.RefundRequested: "refund_requested",
    PaymentOrder.OrderClosed: "order_closed",
}


def activity_row(event: Any, position: int, order: PaymentOrder | None) -> dict[str, Any]:
    """The row of one acting event (the `position`th of the log); `order`: the order it is about, if any."""
    row: dict[str, Any] = {"position": position, "mchid": "", "sub_mchid": "", "out_trade_no": "", "note": ""}
    if order is not None:
        row.update(mchid=order.mchid, sub_mchid=order.sub_mchid or "", out_trade_no=order.out_trade_no)
    detail: dict[str, Any] = {}
    if isinstance(event, OperatorJournal.Acted):
        at, operator, action, target, detail = event.acted_at, event.operator, event.action, event.target, event.detail
    elif isinstance(event, PaymentOrder.OperatorActed):
        at, operator, action, detail = event.acted_at, event.operator, event.action, event.detail
        target = str(detail.get("message_id", ""))
    elif isinstance(event, PaymentOrder.AnomalyAcknowledged):
        at, operator, action, target = event.acknowledged_at, event.operator, _ORDER_ACTIONS[type(event)], event.key
        row["note"] = event.note
    elif isinstance(event, PaymentOrder.RefundRequested):
        at, operator, target = event.requested_at, event.requested_by, event.out_refund_no
        action, row["note"] = _ORDER_ACTIONS[type(event)], event.reason
        detail = {"refund": event.refund}
    else:
        at, operator, action, target = event.closed_at, event.requested_by, _ORDER_ACTIONS[type(event)], ""
    row.update(at=at.timestamp(), operator=operator, action=action, target=target)
    row["detail"] = json.dumps(detail, ensure_ascii=False, separators=(",", ":"), default=str)
    return row


def _row_out(row: Any) -> dict[str, Any]:
    values = dict(zip(ACTIVITY_FIELDS, row, strict=True))
    values["at"] = dt.datetime.fromtimestamp(values["at"], dt.UTC)
    values["sub_mchid"] = values["sub_mchid"] or None
    values["detail"] = json.loads(values["detail"])
    return values


class ActivityView(ViewRecorder):
    """The table and its queries, for both stores."""

    table_prefix: str = ACTIVITY_VIEW

    @functools.cached_property
    def _slots(self) -> dict[str, str]:
        return {
            "activity": self.qualify(f"{self.table_prefix}_activity"),
            "by_operator": self.quote(f"{self.table_prefix}_activity_operator"),
        }

    def _sql(self, text: str) -> str:
        return self.sql(text, **self._slots)

    def view_statements(self) -> list[str]:
        return [
            self._sql(
                "CREATE TABLE IF NOT EXISTS {activity} (position BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL,"
                " operator TEXT NOT NULL, action TEXT NOT NULL, mchid TEXT NOT NULL, sub_mchid TEXT NOT NULL,"
                " out_trade_no TEXT NOT NULL, target TEXT NOT NULL, note TEXT NOT NULL, detail TEXT NOT NULL)"
            ),
            self._sql("CREATE INDEX IF NOT EXISTS {by_operator} ON {activity} (operator, position)"),
        ]

    def record(self, row: dict[str, Any], tracking: Tracking) -> None:
        with self.transaction() as curs:
            names = ", ".join(ACTIVITY_FIELDS)
            curs.execute(
                self._sql(
                    f"INSERT INTO {{activity}} ({names}) VALUES ({', '.join(['%s'] * len(ACTIVITY_FIELDS))})"
                    " ON CONFLICT (position) DO NOTHING"
                ),
                [row[name] for name in ACTIVITY_FIELDS],
            )
            self.write_tracking(curs, tracking)

    def recent(
        self, *, operator: str | None = None, action: str | None = None, before: int | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The newest actions first, filtered; `before`: the position of the last row of the page before."""
        clauses, params = filters(("operator = %s", operator), ("action = %s", action), ("position < %s", before))
        text = f"SELECT {', '.join(ACTIVITY_FIELDS)} FROM {{activity}}{where(clauses)} ORDER BY position DESC LIMIT %s"
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql(text), [*params, limit])
            return [_row_out(row) for row in curs.fetchall()]

    def operators(self) -> list[str]:
        """Everyone who has acted, by name."""
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql("SELECT DISTINCT operator FROM {activity} ORDER BY operator"))
            return [str(row[0]) for row in curs.fetchall()]

    def count(self) -> int:
        with self.transaction(commit=False) as curs:
            curs.execute(self._sql("SELECT COUNT(*) FROM {activity}"))
            row = curs.fetchone()
        return int(row[0]) if row else 0

    def position(self, application_name: str = Ledger.name) -> int:
        return self.max_tracking_id(application_name) or 0


class PostgresActivityView(ActivityView, PostgresViewRecorder):
    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.table_prefix = self.tracking_table_name.removesuffix("_tracking")


class SQLiteActivityView(ActivityView, SQLiteViewRecorder):
    pass


class ActivityProjection(Projection[Any]):
    """Each event that names who acted, as a row."""

    name = ACTIVITY_VIEW
    topics = tuple(get_topic(cls) for cls in (*_ORDER_ACTIONS, PaymentOrder.OperatorActed, OperatorJournal.Acted))

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self.ledger: Ledger | None = None  # set by the runner: names the order an event is about

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        assert self.ledger is not None, "the runner attaches the ledger before events flow"
        order = None
        if not isinstance(domain_event, OperatorJournal.Acted):
            # The order's identity is in its first event: replay only that.
            opened: Any = self.ledger.repository.get(domain_event.originator_id, version=1)
            order = opened if isinstance(opened, PaymentOrder) else None
        self.view.record(activity_row(domain_event, tracking.notification_id, order), tracking)


def open_activity_view(database_url: str, name: str = ACTIVITY_VIEW) -> ActivityView:
    view = open_view(database_url, name, postgres=PostgresActivityView, sqlite=SQLiteActivityView)
    assert isinstance(view, ActivityView)
    return view


def start_activity_projector(
    database_url: str, name: str = ACTIVITY_VIEW
) -> tuple[BaseProjectionRunner[Ledger], ActivityView, Ledger]:
    view = open_activity_view(database_url, name)
    runner, loader = projection_runner(database_url, ActivityProjection(view), view, view_env(database_url, name))
    return runner, view, loader


def activity_head(ledger: Ledger) -> int:
    """The log position of the newest acting event: what the view must reach (0: none yet)."""
    return ledger.event_log.last_id(ActivityProjection.topics)


def run_activity_projector(database_url: str, stop: threading.Event, poll: float = 1.0) -> None:
    run_live_projector(database_url, ACTIVITY_VIEW, start_activity_projector, stop, poll)


def rebuild_activity_view(database_url: str, *, timeout: float = REBUILD_TIMEOUT) -> Rebuilt:
    """`payledger rebuild activity_view`: the next version from the log, then the switch."""
    return rebuild_live_view(
        database_url,
        ACTIVITY_VIEW,
        start_activity_projector,
        activity_head,
        lambda new: (f"{new}_activity",),
        timeout=timeout,
    )
