"""The outbox projection: one message per decision event and matching endpoint.

It follows the log's decision events (`PaymentSucceeded`, `RefundSucceeded`, `RefundClosed`,
`RefundAbnormal`, `AnomalyDetected`), loads the order as it stood at that event, and writes
the messages with its tracking position in one transaction. Message ids are derived from the
event and the endpoint, so replaying the log (or a second projector, or a rebuild) can never
queue a notification twice; the dispatcher (`projections/webhooks/dispatcher.py`) sends them.

A message's `data` is the order as it stood at that event (`message_data`): a service provider's
order carries `sp_mchid` and `sub_mchid`, a sub-order of a combined payment `combine_out_trade_no`;
a direct merchant's own order carries none of them, as before they existed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.projection import BaseProjectionRunner, Projection
from eventsourcing.utils import Environment, get_topic

from ledger.application import Ledger
from ledger.domain import WEBHOOK_EVENTS, PaymentOrder
from ledger.settings import EndpointSettings
from ledger.store.backends import persistence_env, schema_lock, small_pool
from ledger.store.views import PostgresViewRecorder, SQLiteViewRecorder, ViewRecorder
from projections.webhooks.endpoints import load_endpoints
from projections.webhooks.messages import enqueue
from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import create_tables, outbox_url

__all__ = [
    "DECISIONS",
    "OUTBOX_PROJECTION",
    "OutboxProjection",
    "OutboxView",
    "message_data",
    "open_outbox_view",
    "run_outbox_projector",
    "start_outbox_projector",
    "sync_endpoints",
]

OUTBOX_PROJECTION = "outbox"
DECISIONS = WEBHOOK_EVENTS
# Fields of an order's state that only some orders have a value for: left out of a message without one.
_WHEN_SET = ("sp_mchid", "sub_mchid", "combine_out_trade_no")


def message_data(order: PaymentOrder) -> dict[str, Any]:
    """What a message says of `order`: its state (`summary`), the partner and combined-payment fields
    only when they are set, so a direct merchant's messages keep exactly the fields they always had."""
    return {k: v for k, v in order.summary().items() if not (k in _WHEN_SET and v is None)}


def outbox_env(database_url: str) -> dict[str, str]:
    env = small_pool(persistence_env(database_url))
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        env[f"{OUTBOX_PROJECTION.upper()}_SQLITE_DBNAME"] = persistence_env(outbox_url(database_url))["SQLITE_DBNAME"]
    return env


class OutboxView(ViewRecorder):
    def create_outbox(self) -> None:
        with self.transaction() as curs:
            create_tables(curs, self)

    def record(self, event: Any, order: PaymentOrder, tracking: Tracking) -> int:
        """The event's messages and the tracking position, in one transaction."""
        with self.transaction() as curs:
            endpoints = load_endpoints(curs, self)
            added = enqueue(
                curs,
                self,
                source_id=f"{event.originator_id}:{event.originator_version}",
                event_type=type(event).__name__,
                mchid=order.mchid,
                out_trade_no=order.out_trade_no,
                stream_version=order.version,
                data=message_data(order),
                occurred_at=event.timestamp,
                endpoints=endpoints,
            )
            self.write_tracking(curs, tracking)
        return added


class PostgresOutboxView(OutboxView, PostgresViewRecorder):
    def create_table(self) -> None:
        super().create_table()
        self.create_outbox()


class SQLiteOutboxView(OutboxView, SQLiteViewRecorder):
    def create_table(self) -> None:
        super().create_table()
        self.create_outbox()


class OutboxProjection(Projection[Any]):
    name = OUTBOX_PROJECTION
    topics = tuple(get_topic(cls) for cls in DECISIONS)

    def __init__(self, view: Any) -> None:
        super().__init__(view)
        self.ledger: Ledger | None = None

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        assert self.ledger is not None, "the runner attaches the ledger before events flow"
        order: PaymentOrder = self.ledger.repository.get(
            domain_event.originator_id, version=domain_event.originator_version
        )
        self.view.record(domain_event, order, tracking)


def sync_endpoints(outbox: Outbox, endpoints: Sequence[EndpointSettings]) -> None:
    """Create or update the endpoints of the configuration file (an operator's disable stays)."""
    for endpoint in endpoints:
        outbox.endpoints.upsert(
            endpoint.id, endpoint.url, [secret.value for secret in endpoint.secrets], endpoint.events
        )


def open_outbox_view(database_url: str) -> OutboxView:
    """The projection's view (its tracking table; the outbox tables beside it), created if missing."""
    env = outbox_env(database_url)
    view_class = PostgresOutboxView if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres" else SQLiteOutboxView
    if view_class is SQLiteOutboxView:
        Path(env[f"{OUTBOX_PROJECTION.upper()}_SQLITE_DBNAME"]).parent.mkdir(parents=True, exist_ok=True)
    with schema_lock(database_url):
        view = InfrastructureFactory.construct(env=Environment(OUTBOX_PROJECTION, env)).tracking_recorder(view_class)
    assert isinstance(view, OutboxView)
    return view


def start_outbox_projector(database_url: str) -> tuple[BaseProjectionRunner[Ledger], Any, Ledger]:
    from projections.read_model.runner import projection_runner

    view = open_outbox_view(database_url)
    runner, loader = projection_runner(database_url, OutboxProjection(view), view, outbox_env(database_url))
    return runner, view, loader


def run_outbox_projector(database_url: str, stop: threading.Event, poll: float = 1.0) -> None:
    """The outbox half of `payledger project`: exclusive by its own lock."""
    from projections.locks import ProjectorLock
    from projections.read_model.runner import follow

    lock = ProjectorLock(database_url, OUTBOX_PROJECTION)
    if not lock.acquire(stop, poll):
        return
    try:
        follow(*start_outbox_projector(database_url), stop, poll)
    finally:
        lock.release()
