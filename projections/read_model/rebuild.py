"""Blue/green rebuild of the orders view: bulk-build a new version beside the live one, catch
up with the log, switch the pointer. The API, the projector and the dispatcher keep running.

Bulk phase (`projections.read_model.bulk`): the log up to the current head is read in
notification order (a sequential read), folded with a bounded cache of orders (memory does not
grow with the log) and written in bulk, the tracking position committed with the last write.
Catch-up phase: the ordinary per-event projection from that position until it reaches the head.
Then the pointer moves and the projector follows it. The outbox is a projection of its own with
deterministic message ids: a rebuild of the read model never sends or drops a notification.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from eventsourcing.persistence import Tracking

from ledger.application import Ledger, build_ledger
from ledger.store.views import drop_view
from projections.read_model.bulk import BulkStats, fold, log_rows, quiet_gc, rows_of, writer_for
from projections.read_model.live import live_view, next_version, set_live_view
from projections.read_model.runner import open_orders_view, orders_head, start_orders_projector, wake
from projections.read_model.view import ORDERS_VIEW

__all__ = ["RebuildSummary", "rebuild_orders_view"]


@dataclass(frozen=True)
class RebuildSummary:
    old: str
    new: str
    events: int
    orders: int
    caught_up: int
    seconds: float
    reloads: int = 0  # orders met again after leaving the bulk phase's cache (`projections.read_model.bulk`)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"rebuilt {self.new} (was {self.old}): {self.events:,} events, {self.orders:,} orders in "
            f"{self.seconds:.1f} s ({self.events_per_second:,.0f} events/s); {self.caught_up:,} more while "
            f"catching up; {self.new} is live"
        )


def rebuild_orders_view(
    database_url: str,
    *,
    ledger: Ledger | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> RebuildSummary:
    """Build the next version of the orders view beside the live one, catch it up, switch to it.

    `ledger` reads the log (the process's own, from `Services`); without one a ledger is built
    for the bulk phase and closed after it."""
    started = time.perf_counter()
    old = live_view(database_url, ORDERS_VIEW)
    new = next_version(old)
    drop_view(database_url, new, (f"{new}_orders", f"{new}_refunds"))  # what a crashed rebuild left
    view = open_orders_view(database_url, new)
    owned = ledger is None
    ledger = build_ledger(database_url) if ledger is None else ledger
    try:
        head = ledger.recorder.max_notification_id() or 0
        stats = BulkStats()
        writer = writer_for(view)
        try:
            with quiet_gc():
                for orders in fold(ledger, log_rows(ledger, head), stats):
                    writer.write(rows_of(orders))
                    if progress is not None:
                        progress(stats.events, head, time.perf_counter() - started)
            writer.finish(Tracking(notification_id=head, application_name=ledger.name) if head else None, stats.reloads)
        except BaseException:
            writer.abort()
            raise
        if progress is not None:
            progress(stats.events, head, time.perf_counter() - started)
        bulk_seconds = time.perf_counter() - started
    finally:
        if owned:
            ledger.close()
    caught_up_before = view.position()
    view.close()
    runner, caught_view, loader = start_orders_projector(database_url, name=new)
    with runner:
        # The newest order event, not the log's max: bill and inbox events are never tracked,
        # so the position would never reach one. None when there is no order event at all.
        runner.wait(orders_head(loader) or None, timeout=60)
        runner.stop()
        wake(loader)
    caught_up = caught_view.position() - caught_up_before
    loader.close()
    caught_view.close()
    set_live_view(database_url, ORDERS_VIEW, new)
    return RebuildSummary(old, new, stats.events, stats.orders, max(0, caught_up), bulk_seconds, stats.reloads)
