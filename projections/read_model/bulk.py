"""The bulk phase of a rebuild (`projections.read_model.rebuild`): the log up to a head folded
into the orders view's rows, written in bulk into a new version's tables.

* **Reading**: the log in notification order (a sequential read), PaymentOrder events only, in
  pages, the next page read while this one is folded. Deliveries carry the raw body, headers,
  envelope and resource (most of the log's bytes), yet a row needs only their count, version and
  time: where the store can, they are read as their first bytes only.
* **Folding**: each event with the domain's own code (`mutate`, hence `apply`), through a bounded
  cache of orders, so memory does not grow with the log; the cache is an LRU of orders by their
  last event. An order's events sit close together in the log, so an order is nearly always
  complete when it leaves the cache; if a later event comes for one, it is reloaded at that
  version and its row written again (`reloads`).
* **Writing**: on PostgreSQL by COPY into the new version's tables, made without keys or indexes,
  which are built once at the end (far cheaper than maintaining seven indexes row by row); the
  rows of a reloaded order, written twice, are deduplicated first (the higher version wins for an
  order, the later write for its refunds). On SQLite by upserts, in batches. Either way the
  tracking position is committed last, once every row is in.

The fold allocates hundreds of thousands of small objects that live until their order leaves
the cache; the cyclic garbage collector would walk the whole cache again and again (a quarter
of the rebuild's time, docs/benchmarks.md) while finding nothing to free: the fold creates no
reference cycles, so it runs with automatic collection paused.
"""

from __future__ import annotations

import datetime as dt
import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.utils import get_topic, resolve_topic

from ledger.application import Ledger
from ledger.domain import PaymentOrder
from ledger.store.cipher import RotatingAESCipher
from ledger.store.eventlog import Row
from projections.read_model.view import (
    ORDER_FIELDS,
    ORDER_KEY,
    REFUND_FIELDS,
    OrdersProjection,
    OrdersView,
    order_values,
    refund_values,
)

__all__ = ["BulkStats", "fold", "log_rows", "quiet_gc", "writer_for"]

PAGE = 10_000  # notification ids per read
BATCH = 5_000  # orders per write
CACHE = 20_000  # orders in memory at once: bounds the rebuild's memory whatever the log's size

Values = tuple[Any, ...]
Batch = tuple[list[Values], list[Values]]  # order rows, refund rows

# A delivery's state opens with its `timestamp` (the transcoder writes the fields in order).
_DELIVERY_TOPIC = get_topic(PaymentOrder.NotificationReceived)
_TIMESTAMP_PREFIX = b'{"timestamp":{"_type_":"datetime_iso","_data_":"'
_DELIVERY_HEAD = len(_TIMESTAMP_PREFIX) + 40


@dataclass
class BulkStats:
    events: int = 0
    written: int = 0  # order rows written
    reloads: int = 0  # orders met again after leaving the cache: their rows are written again

    @property
    def orders(self) -> int:
        return self.written - self.reloads


def plain_states(ledger: Ledger) -> bool:
    """Stored states are the transcoder's JSON as is: no compressor, no encryption key."""
    mapper: Any = ledger.mapper
    cipher = mapper.cipher
    # Our cipher is always installed; without keys it stores (and passes through) plaintext.
    encrypting = cipher is not None and not (isinstance(cipher, RotatingAESCipher) and not cipher.key_ids)
    return mapper.compressor is None and not encrypting


def log_rows(ledger: Ledger, head: int) -> Iterator[Row]:
    """The log up to `head` in notification order, PaymentOrder events only, the next page read
    (by another thread) while this one is folded; delivery events cut to their first bytes where
    the store can (and the states are plain)."""
    heads = (_DELIVERY_TOPIC, _DELIVERY_HEAD) if plain_states(ledger) else None
    pages = ledger.event_log.select_pages(head, OrdersProjection.topics, page=PAGE, heads=heads)
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


def delivery_timestamp(state: bytes) -> dt.datetime | None:
    """The `timestamp` a delivery event's state opens with, or None if it is not laid out so."""
    if not state.startswith(_TIMESTAMP_PREFIX):
        return None
    end = state.find(b'"', len(_TIMESTAMP_PREFIX))
    if end < 0:
        return None
    return dt.datetime.fromisoformat(state[len(_TIMESTAMP_PREFIX) : end].decode())


def event_reader(ledger: Ledger) -> Callable[[Any, int, str, bytes], Any]:
    """(originator_id, version, topic, state) -> the domain event, as `Mapper.to_domain_event` makes it.

    Where the states are plain JSON that is what the mapper does, less its per-event steps that
    change nothing here (no cipher, no compressor, ids already UUIDs, no class versions): the
    state decoded by the ledger's transcoder becomes the event's fields. Anything else (an
    encrypted or otherwise unexpected state, another id type, an event class with versions) goes
    through the mapper, which reads it or raises as it always does."""
    mapper: Any = ledger.mapper

    def mapped(originator_id: Any, version: int, topic: str, state: bytes) -> Any:
        return mapper.to_domain_event(StoredEvent(originator_id, version, topic, bytes(state)))

    if not plain_states(ledger):
        return mapped
    decode = mapper.transcoder.decode
    classes: dict[str, type | None] = {}  # None: not for the short way

    def read(originator_id: Any, version: int, topic: str, state: bytes) -> Any:
        cls = classes.get(topic, ...)
        if cls is ...:
            cls = resolve_topic(topic)
            cls = classes[topic] = cls if getattr(cls, "class_version", 1) == 1 else None
        if cls is None or type(originator_id) is not UUID or not state.startswith(b"{"):
            return mapped(originator_id, version, topic, state)
        fields = decode(state)
        if "class_version" in fields:
            return mapped(originator_id, version, topic, state)
        fields["originator_id"] = originator_id
        fields["originator_version"] = version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", fields)
        return event

    return read


def fold(ledger: Ledger, rows: Iterator[Row], stats: BulkStats) -> Iterator[list[PaymentOrder]]:
    """The orders of `rows` folded, in batches of about `BATCH` to write: each order once it
    leaves the cache, then those still in it. `stats` is kept up to date."""
    # Orders being folded, least recently touched first.
    cache: OrderedDict[int, PaymentOrder] = OrderedDict()
    done: list[PaymentOrder] = []
    plain = plain_states(ledger)
    cut = plain and ledger.event_log.cuts_heads
    event_of = event_reader(ledger)
    initial = PaymentOrder.INITIAL_VERSION
    limit, batch, delivery, head_time = CACHE, BATCH, _DELIVERY_TOPIC, delivery_timestamp  # read once
    events = stats.events
    for originator_id, version, topic, state in rows:
        key = originator_id.int  # hashed in C, where a UUID's hash is Python code
        order: Any = cache.pop(key, None)
        if order is None and version > initial:
            order = ledger.repository.get(originator_id, version=version - 1)
            stats.reloads += 1
        timestamp = head_time(state) if plain and topic == delivery else None
        if timestamp is not None and order is not None and order.version == version - 1:
            # What NotificationReceived does to an order, as far as its row can tell.
            order.deliveries += 1
            order.version, order.modified_on = version, timestamp
        else:
            if cut and topic == delivery:  # only its head was read: fetch it whole
                state = ledger.recorder.select_events(originator_id, gt=version - 1, lte=version)[0].state
            order = event_of(originator_id, version, topic, state).mutate(order)
        cache[key] = order
        events += 1
        if len(cache) > limit:
            done.append(cache.popitem(last=False)[1])
            if len(done) >= batch:
                stats.events, stats.written = events, stats.written + len(done)
                yield done
                done = []
    done.extend(cache.values())
    cache.clear()
    stats.events, stats.written = events, stats.written + len(done)
    yield done


def rows_of(orders: list[PaymentOrder]) -> Batch:
    """The view's rows of `orders`: each order's, and its refunds'."""
    return (
        [order_values(order, order.modified_on) for order in orders],
        [values for order in orders if order.refunds for values in refund_values(order)],
    )


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Automatic garbage collection paused for the block (see the module's docstring)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class BulkWriter:
    """Writes the rows of a new version of the view; `finish` makes it complete and consistent."""

    def write(self, batch: Batch) -> None:
        raise NotImplementedError

    def finish(self, tracking: Tracking | None, reloads: int) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Stop after a failure elsewhere; what was written is left for `drop_view`."""


def writer_for(view: OrdersView) -> BulkWriter:
    return _CopyWriter(view) if view.dialect == "postgres" else _UpsertWriter(view)


class _UpsertWriter(BulkWriter):
    """SQLite: each batch upserted in a transaction of its own; a reloaded order's later rows
    replace its earlier ones by key."""

    def __init__(self, view: OrdersView) -> None:
        self.view = view

    def write(self, batch: Batch) -> None:
        with self.view.transaction() as curs:
            self.view.upsert_values(curs, *batch)

    def finish(self, tracking: Tracking | None, reloads: int) -> None:
        if tracking is not None:
            with self.view.transaction() as curs:
                self.view.write_tracking(curs, tracking)


_KEY = ", ".join(ORDER_KEY)
_REFUND_KEY = "mchid, sub_mchid, out_refund_no"
_STAGED = "rebuild_refunds"  # a temporary table: the refunds' rows in the order they were written


class _CopyWriter(BulkWriter):
    """PostgreSQL: COPY, by a thread of its own so that the database works while Python folds.

    The new version's tables (just made, empty) are made again without keys or indexes; each
    batch is one COPY of orders and one of refunds, into a temporary table numbering them, in a
    transaction. `finish` drops the rows a reloaded order superseded, moves the refunds in, adds
    the keys and indexes and the tracking position, in one transaction."""

    def __init__(self, view: OrdersView) -> None:
        self.view = view
        self.tables = {"orders": view.qualify(view.orders_table), "refunds": view.qualify(view.refunds_table)}
        self.queue: Queue[Batch | None] = Queue(maxsize=2)
        self.failure: BaseException | None = None
        self.held = ExitStack()
        self.conn: Any = self.held.enter_context(view.datastore.get_connection())  # type: ignore[attr-defined]
        self.held.callback(self._drop_staged)
        try:
            with self.conn.transaction(), self.conn.cursor() as curs:
                curs.execute(self._sql("DROP TABLE {orders}, {refunds}"))
                for statement in view.table_statements(keyed=False):
                    curs.execute(statement)
                curs.execute(
                    self._sql(
                        f"CREATE TEMP TABLE {_STAGED} (seq BIGINT GENERATED ALWAYS AS IDENTITY, LIKE {{refunds}})"
                    )
                )
        except BaseException:
            self.held.close()
            raise
        self.thread = threading.Thread(target=self._run, name="rebuild-writer", daemon=True)
        self.thread.start()

    def _sql(self, template: str) -> str:
        return self.view.sql(template, **self.tables)

    def _run(self) -> None:
        orders = self._sql(f"COPY {{orders}} ({', '.join(ORDER_FIELDS)}) FROM STDIN")
        refunds = f"COPY {_STAGED} ({', '.join(REFUND_FIELDS)}) FROM STDIN"
        try:
            while (batch := self.queue.get()) is not None:
                with self.conn.transaction(), self.conn.cursor() as curs:
                    for statement, rows in ((orders, batch[0]), (refunds, batch[1])):
                        if rows:
                            with curs.copy(statement) as copy:
                                for row in rows:
                                    copy.write_row(row)
        except BaseException as exc:  # raised in the folding thread by `write` or `finish`
            self.failure = exc

    def _put(self, item: Batch | None) -> None:
        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except Full:
                continue
        raise self.failure or RuntimeError("the rebuild's writer stopped")

    def write(self, batch: Batch) -> None:
        if self.failure is not None:
            raise self.failure
        self._put(batch)

    def finish(self, tracking: Tracking | None, reloads: int) -> None:
        with self.held:
            self._put(None)
            self.thread.join()
            if self.failure is not None:
                raise self.failure
            fields = ", ".join(REFUND_FIELDS)
            with self.conn.transaction(), self.conn.cursor() as curs:
                if reloads:  # an order's newest row stays
                    match = " AND ".join(f"o.{name} = newest.{name}" for name in ORDER_KEY)
                    curs.execute(
                        self._sql(
                            f"DELETE FROM {{orders}} AS o USING (SELECT {_KEY}, max(version) AS version"
                            f" FROM {{orders}} GROUP BY {_KEY} HAVING count(*) > 1) AS newest"
                            f" WHERE {match} AND o.version < newest.version"
                        )
                    )
                curs.execute(  # a refund's last written row
                    self._sql(
                        f"INSERT INTO {{refunds}} ({fields}) SELECT DISTINCT ON ({_REFUND_KEY}) {fields}"
                        f" FROM {_STAGED} ORDER BY {_REFUND_KEY}, seq DESC"
                    )
                )
                for statement in (*self.view.key_statements(), *self.view.index_statements()):
                    curs.execute(statement)
                curs.execute(self._sql("ANALYZE {orders}"))
                curs.execute(self._sql("ANALYZE {refunds}"))
                if tracking is not None:
                    self.view.write_tracking(curs, tracking)

    def abort(self) -> None:
        with self.held:
            while True:  # whatever is queued is not written
                try:
                    self.queue.get_nowait()
                except Empty:
                    break
            self.queue.put(None)
            self.thread.join()

    def _drop_staged(self) -> None:
        if not self.conn.closed and not self.conn.broken:
            with self.conn.cursor() as curs:
                curs.execute(f"DROP TABLE IF EXISTS {_STAGED}")
