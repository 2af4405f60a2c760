"""Blue/green rebuild of the orders view: bulk-build a new version beside the live one, catch
up with the log, switch the pointer. The API, the projector and the dispatcher keep running.

Bulk phase: the log up to the current head is read in notification order (a sequential read)
and folded with a bounded cache of orders (memory does not grow with the log), and rows are
written in large batches, the tracking position committed with the last batch. Catch-up phase:
the ordinary per-event projection from that position until it reaches the head. Then the
pointer moves and the projector follows it. The outbox is a projection of its own with
deterministic message ids: a rebuild of the read model never sends or drops a notification.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Queue
from typing import Any

from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import get_topic

from ledger.application import Ledger, build_ledger
from ledger.domain import PaymentOrder
from ledger.store.cipher import RotatingAESCipher
from ledger.store.eventlog import Row
from ledger.store.views import drop_view
from projections.read_model.live import live_view, next_version, set_live_view
from projections.read_model.runner import open_orders_view, orders_head, start_orders_projector, wake
from projections.read_model.view import ORDERS_VIEW, OrdersProjection, OrdersView, order_row, refund_rows

__all__ = ["RebuildSummary", "rebuild_orders_view"]

PAGE = 10_000
BATCH = 2_000
CACHE = 20_000  # orders in memory at once: bounds the rebuild's memory whatever the log's size


@dataclass(frozen=True)
class RebuildSummary:
    old: str
    new: str
    events: int
    orders: int
    caught_up: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"rebuilt {self.new} (was {self.old}): {self.events:,} events, {self.orders:,} orders in "
            f"{self.seconds:.1f} s ({self.events_per_second:,.0f} events/s); {self.caught_up:,} more while "
            f"catching up; {self.new} is live"
        )


# Deliveries carry the raw body, headers, envelope and resource (most of the log's bytes), yet
# the view needs only their count, version and time: it reads just enough of each to get those.
_DELIVERY_TOPIC = get_topic(PaymentOrder.NotificationReceived)
_TIMESTAMP_PREFIX = b'{"timestamp":{"_type_":"datetime_iso","_data_":"'
_DELIVERY_HEAD = len(_TIMESTAMP_PREFIX) + 40


def _plain_states(ledger: Ledger) -> bool:
    """Stored states are the transcoder's JSON as is: no compressor, no encryption key."""
    mapper: Any = ledger.mapper
    cipher = mapper.cipher
    # Our cipher is always installed; without keys it stores (and passes through) plaintext.
    encrypting = cipher is not None and not (isinstance(cipher, RotatingAESCipher) and not cipher.key_ids)
    return mapper.compressor is None and not encrypting


def _log_pages(ledger: Ledger, head: int) -> Iterator[list[Row]]:
    """The log in notification order (a sequential read), PaymentOrder events only, in pages;
    delivery events cut to their first bytes where the store can (and the states are plain)."""
    heads = (_DELIVERY_TOPIC, _DELIVERY_HEAD) if _plain_states(ledger) else None
    return ledger.event_log.select_pages(head, OrdersProjection.topics, page=PAGE, heads=heads)


def _delivery_timestamp(state: bytes) -> dt.datetime | None:
    """The `timestamp` a delivery event's state opens with, or None if it is not laid out so."""
    if not state.startswith(_TIMESTAMP_PREFIX):
        return None
    end = state.find(b'"', len(_TIMESTAMP_PREFIX))
    if end < 0:
        return None
    return dt.datetime.fromisoformat(state[len(_TIMESTAMP_PREFIX) : end].decode())


def _prefetched(pages: Iterator[list[Row]]) -> Iterator[Row]:
    """Read the next page while this one is folded and written: the database and Python overlap."""
    queue: Queue[list[Row] | BaseException | None] = Queue(maxsize=2)

    def read() -> None:
        try:
            for page in pages:
                queue.put(page)
            queue.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)

    threading.Thread(target=read, name="rebuild-reader", daemon=True).start()
    while (item := queue.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield from item


def _write(view: OrdersView, orders: list[PaymentOrder], tracking: Tracking | None) -> int:
    with view.transaction() as curs:
        view.upsert_many(
            curs,
            [order_row(order, order.modified_on) for order in orders],
            [refund for order in orders for refund in refund_rows(order)],
        )
        if tracking is not None:
            view.write_tracking(curs, tracking)
    return len(orders)


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
        events = orders = 0
        written: list[PaymentOrder] = []
        # Orders being folded, least recently touched first. An order's events sit close
        # together in the log, so it is nearly always complete when it leaves the cache; if a
        # later event comes for it, it is reloaded at that version and its row written again.
        cache: OrderedDict[Any, PaymentOrder] = OrderedDict()
        plain = _plain_states(ledger)
        cut = plain and ledger.event_log.cuts_heads
        for originator_id, version, topic, state in _prefetched(_log_pages(ledger, head)):
            order: Any = cache.pop(originator_id, None)
            if order is None and version > PaymentOrder.INITIAL_VERSION:
                order = ledger.repository.get(originator_id, version=version - 1)
            timestamp = _delivery_timestamp(state) if plain and topic == _DELIVERY_TOPIC else None
            if timestamp is not None and order is not None and order.version == version - 1:
                # What NotificationReceived does to an order, as far as its row can tell.
                order.deliveries += 1
                order.version, order.modified_on = version, timestamp
            else:
                stored = StoredEvent(originator_id, version, topic, bytes(state))
                if cut and topic == _DELIVERY_TOPIC:  # only its head was read: fetch it whole
                    stored = ledger.recorder.select_events(originator_id, gt=version - 1, lte=version)[0]
                event: Any = ledger.mapper.to_domain_event(stored)
                order = event.mutate(order)
            cache[originator_id] = order
            events += 1
            if len(cache) > CACHE:
                written.append(cache.popitem(last=False)[1])
                if len(written) >= BATCH:
                    orders += _write(view, written, None)
                    written = []
                    if progress is not None:
                        progress(events, head, time.perf_counter() - started)
        written.extend(cache.values())
        cache.clear()
        orders += _write(view, written, Tracking(notification_id=head, application_name=ledger.name) if head else None)
        if progress is not None:
            progress(events, head, time.perf_counter() - started)
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
    return RebuildSummary(old, new, events, orders, max(0, caught_up), bulk_seconds)
