"""The ledger application: commands in, events stored, state by replay.

Every command is load → decide → save, retried on a version conflict (another worker or
replica appended first), so concurrent deliveries are never lost and never decided twice.
The library is synchronous; the web layer calls it from worker threads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent, Transcoder

from ledger.bill_evidence import BillInflater, BillStatus, check_bill_file, compress_bill
from ledger.bill_matching import Discrepancy
from ledger.domain import (
    Evidence,
    PaymentOrder,
    QueryEvidence,
    inbox_id,
    order_id,
)
from ledger.errors import (
    BillNotStored,
    ConfigurationError,
    EventUndecryptable,
    InvalidRequest,
    OrderNotFound,
    StoredBillCorrupt,
    StoreUnavailable,
)
from ledger.identity import OrderKey
from ledger.journal import OperatorJournal, beijing_day, journal_id
from ledger.routing import RecordResult, Route, evidence_from, v2_evidence
from ledger.statements import BillStatement, bill_statement_id
from ledger.store.backends import persistence_env, schema_lock
from ledger.store.cipher import SETTING as ENCRYPTION_SETTING
from ledger.store.eventlog import EventLog
from ledger.store.sql import STORE_UNAVAILABLE
from ledger.store.transcoder import FastJSONTranscoder
from ledger.wechatpay.notification import VerifiedNotification
from ledger.wechatpay.v2 import V2Notification

__all__ = ["Ledger", "RecordResult", "build_ledger", "event_to_dict", "evidence_from", "v2_evidence"]

log = logging.getLogger("ledger.application")

T = TypeVar("T")
_BASE_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic", "chain"}
MAX_CONFLICT_RETRIES = 50
KEEP_SLICE = 8
"""A kept bill's chunk events appended per transaction: 1 MiB of gzip (`ledger.bill_evidence.STORED_CHUNK`
each), which passes through about 19 MB of Python objects on its way to the store (encoded, chained,
transcoded): the whole of a 37 MB bill at once peaked above 200 MB (docs/benchmarks.md, "Daily bills")."""
_UNAVAILABLE: tuple[type[Exception], ...] = (PersistenceError, *STORE_UNAVAILABLE)


def event_to_dict(event: Any) -> dict[str, Any]:
    """A stored event as the audit API shows it."""
    data = {f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name not in _BASE_FIELDS}
    return {
        "version": event.originator_version,
        "type": type(event).__name__,
        "recorded_at": event.timestamp,
        "data": data,
        "chain": event.chain,
    }


class Ledger(Application[UUID]):
    name = "ledger"

    @functools.cached_property
    def event_log(self) -> EventLog:
        """The recorder, with the reads the library's interface lacks (see `ledger.store.eventlog`)."""
        recorder = self.recorder
        assert isinstance(recorder, EventLog), "persistence_env installs one of our recorders"
        return recorder

    def construct_transcoder(self) -> Transcoder:
        """The library's format and transcodings, encoded faster (see `ledger.store.transcoder`)."""
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    # -- commands -------------------------------------------------------------------------

    def register_order(
        self,
        mchid: str,
        out_trade_no: str,
        amount_total: int,
        currency: str = "CNY",
        description: str = "",
        *,
        sub_mchid: str | None = None,
        combine_out_trade_no: str | None = None,
    ) -> tuple[PaymentOrder, bool]:
        """Register an expected order (a sub-merchant's in partner mode, a sub-order of a combined
        payment); returns (order, created). Same body again: not created."""
        if not isinstance(amount_total, int) or isinstance(amount_total, bool) or amount_total <= 0:
            raise InvalidRequest("amount_total must be a positive integer in fen")

        def attempt() -> tuple[PaymentOrder, bool]:
            order = self._load_or_open(mchid, out_trade_no, sub_mchid)
            changed = order.register(amount_total, currency, description, combine_out_trade_no)
            if changed:
                self.save(order)
            return order, changed

        return self._with_retries(attempt)

    def record_notification(
        self,
        mchid: str,
        notification: VerifiedNotification | Evidence,
        *,
        expected_appid: str | None = None,
        sub_mchids: frozenset[str] | None = None,
    ) -> RecordResult:
        """Append a verified delivery (and its decisions) to the stream of every order it names (a
        combined payment names several: all are written in one transaction), or to its inbox
        stream when it names none; durable on return. The result names the first stream. An APIv3
        notification is turned into evidence here; an APIv2 one comes as evidence (`v2_evidence`)."""
        route = Route(mchid, notification, expected_appid, sub_mchids)

        def attempt() -> RecordResult:
            streams = self.get_many(route.stream_ids)
            outcome, first = route.decide(streams)
            self.save_all(streams.values())
            return RecordResult.of(outcome, first)

        return self._with_retries(attempt)

    def record_v2_notification(
        self,
        mchid: str,
        notification: V2Notification,
        *,
        expected_appid: str | None = None,
        sub_mchids: frozenset[str] | None = None,
    ) -> RecordResult:
        """Append a legacy APIv2 delivery to the same order stream as an APIv3 one ([protocol: APIv2 as
        APIv3]): one order has one history whichever API told us, and the domain decides once."""
        evidence = v2_evidence(notification)
        return self.record_notification(mchid, evidence, expected_appid=expected_appid, sub_mchids=sub_mchids)

    def load_orders(self, keys: Sequence[OrderKey]) -> list[PaymentOrder]:
        """The orders `keys` name, current (opened, unsaved, for those never seen), in one read."""
        ids = [key.stream_id for key in keys]
        found = self.get_many(ids)
        return [
            found.get(i) or PaymentOrder.open(k.mchid, k.out_trade_no, k.sub_mchid)
            for i, k in zip(ids, keys, strict=True)
        ]

    def record_query(
        self,
        mchid: str,
        out_trade_no: str,
        evidence: QueryEvidence,
        *,
        expected_appid: str | None = None,
        sub_mchid: str | None = None,
    ) -> PaymentOrder:
        """Append a verified status-query answer (and its decisions) to the order's stream."""

        def attempt() -> PaymentOrder:
            order = self._load_or_open(mchid, out_trade_no, sub_mchid)
            order.record_query(evidence, expected_appid=expected_appid)
            self.save(order)
            return order

        return self._with_retries(attempt)

    def change_order(self, key: OrderKey, change: Callable[[PaymentOrder], T]) -> tuple[PaymentOrder, T]:
        """Apply `change` (the order's own commands) to the order as it stands and append what they
        triggered; on a version conflict the order is loaded again and `change` decides again, so a
        decision is always taken against the latest state. `OrderNotFound` when there is no such order."""

        def attempt() -> tuple[PaymentOrder, T]:
            order = self.get_order_by_id(key.stream_id, key.out_trade_no)
            result = change(order)
            self.save(order)
            return order, result

        return self._with_retries(attempt)

    def record_journal(
        self, operator: str, action: str, *, target: str, detail: dict[str, Any], at: dt.datetime | None = None
    ) -> OperatorJournal:
        """Append an operator's action that is about no single order to their journal of the day."""
        at = at or dt.datetime.now(dt.UTC)

        def attempt() -> OperatorJournal:
            day = beijing_day(at)
            with self._store():
                try:
                    journal: Any = self.repository.get(journal_id(operator, day))
                except AggregateNotFoundError:
                    journal = OperatorJournal.open(operator, day)
            journal.act(action, target=target, detail=detail, at=at)
            self.save(journal)
            assert isinstance(journal, OperatorJournal)
            return journal

        return self._with_retries(attempt)

    def save_all(self, aggregates: Iterable[Any]) -> None:
        """`save()` for aggregates only, in one transaction.

        The library's `save()` checks every object against runtime-checkable Protocols, a
        measurable share of a group commit's cost (docs/benchmarks.md). Snapshots are off and nothing
        overrides the notify hooks, so collecting the events and putting them is all it does here.
        """
        events = [event for aggregate in aggregates for event in aggregate.collect_events()]
        if events:
            self.events.put(events)

    # -- daily bills, kept as evidence ([protocol: Keeping a bill]) --------------------------

    def store_bill(self, mchid: str, bill_date: dt.date, kind: str, path: Path, sha1: str, size: int) -> bool:
        """Keep a downloaded, verified bill (the file at `path`, its SHA-1 and size); False when
        that bill, or the day's emptiness, is kept already.

        Its chunk events are appended `KEEP_SLICE` at a time and its `Fetched` last, so memory stays
        at a slice whatever the bill's size (one transaction for all held the chunks in several
        copies at once: docs/benchmarks.md, "Daily bills"). The bill is kept only once `Fetched` is
        appended; a keep that stopped half-way (a crash) is resumed by the next, after checking that
        the chunks appended already are this bill's (`StoredBillCorrupt` if not)."""
        stream_id = bill_statement_id(mchid, bill_date, kind)
        if self._bill_head(stream_id) is not None:
            return False  # settled: do not even read the file
        check_bill_file(path, sha1=sha1, size=size)
        fetched_at = utcnow()

        def attempt() -> bool:
            statement = self._load_statement(mchid, bill_date, kind)
            if statement is None:
                return False
            chunks = compress_bill(path)
            if kept := statement.chunks:
                pairs = zip(itertools.islice(chunks, kept), self._kept_chunks(stream_id, kept), strict=False)
                if sum(1 for mine, theirs in pairs if mine == theirs) != kept:
                    raise StoredBillCorrupt(f"bill stream {stream_id}: the chunks kept before are another bill's")
            while part := list(itertools.islice(chunks, KEEP_SLICE)):
                statement.add_chunks(part)
                self.save(statement)
            statement.store([], sha1=sha1, size=size, fetched_at=fetched_at)
            self.save(statement)
            return True

        return self._with_retries(attempt)

    def store_empty_bill(self, mchid: str, bill_date: dt.date, kind: str) -> bool:
        """Keep the fact that WeChat has no bill of that day (NO_STATEMENT_EXIST); False when settled already."""
        bill_statement_id(mchid, bill_date, kind)  # refuses an unknown kind before any read

        def attempt() -> bool:
            statement = self._load_statement(mchid, bill_date, kind)
            changed = statement is not None and statement.record_empty(utcnow())
            if changed:
                self.save(statement)
            return changed

        return self._with_retries(attempt)

    def record_bill_discrepancies(
        self, mchid: str, bill_date: dt.date, evidence: str, found: Iterable[Discrepancy], *, batch: int = 500
    ) -> int:
        """A `BillDiscrepancy` in each concerned order's stream (opened if the ledger never heard of the
        order), once per bill and difference however often a day is reconciled; `evidence` names the
        kept bill. Orders are written `batch` at a time, each batch in one transaction. Returns how
        many events were appended."""
        by_order: dict[tuple[str, str | None], list[Discrepancy]] = {}
        for discrepancy in found:
            by_order.setdefault((discrepancy.out_trade_no, discrepancy.sub_mchid), []).append(discrepancy)
        orders = list(by_order)
        appended = 0
        for start in range(0, len(orders), batch):
            part = orders[start : start + batch]
            appended += self._with_retries(
                functools.partial(self._note_discrepancies, mchid, bill_date, evidence, part, by_order)
            )
        return appended

    def _note_discrepancies(
        self,
        mchid: str,
        bill_date: dt.date,
        evidence: str,
        orders: list[tuple[str, str | None]],
        by_order: dict[tuple[str, str | None], list[Discrepancy]],
    ) -> int:
        changed: list[PaymentOrder] = []
        for order in self.load_orders([OrderKey(mchid, number, sub_mchid) for number, sub_mchid in orders]):
            noted = [
                order.note_bill_discrepancy(
                    bill_date=bill_date.isoformat(),
                    kind=str(d.kind),
                    evidence=evidence,
                    transaction_id=d.transaction_id,
                    out_refund_no=d.out_refund_no,
                    refund_id=d.refund_id,
                    bill_amount=d.bill_amount,
                    ledger_amount=d.ledger_amount,
                )
                for d in by_order[(order.out_trade_no, order.sub_mchid)]
            ]
            if any(noted):
                changed.append(order)
        appended = sum(len(order.pending_events) for order in changed)
        self.save_all(changed)
        return appended

    def bill_status(self, mchid: str, bill_date: dt.date, kind: str) -> BillStatus:
        head = self._bill_head(bill_statement_id(mchid, bill_date, kind))
        if isinstance(head, BillStatement.Fetched):
            return BillStatus("stored", head.sha1, head.size)
        return BillStatus("empty" if head is not None else "absent")

    def open_stored_bill(self, mchid: str, bill_date: dt.date, kind: str) -> Iterator[bytes]:
        """The kept bill's bytes, as stored, in pieces of at most 1 MiB: one chunk event is read at a
        time, so memory stays flat whatever the bill's size. Nothing is re-checked here (`payledger
        verify` re-hashes); `BillNotStored` when no bill is kept, `StoredBillCorrupt` when its chunks
        are not a whole gzip stream."""
        stream_id = bill_statement_id(mchid, bill_date, kind)
        head = self._bill_head(stream_id)
        if not isinstance(head, BillStatement.Fetched):
            raise BillNotStored(f"no {kind} bill of {bill_date.isoformat()} is kept for mchid {mchid}")
        return self._stored_bill(stream_id, head.chunks)

    def _stored_bill(self, stream_id: UUID, chunks: int) -> Iterator[bytes]:
        inflater = BillInflater()
        for data in self._kept_chunks(stream_id, chunks):
            yield from inflater.feed(data)
        yield from inflater.finish()

    def _kept_chunks(self, stream_id: UUID, chunks: int) -> Iterator[str]:
        """The data of a bill stream's first `chunks` chunk events, one event read at a time."""
        for index in range(chunks):
            version = index + 2  # after Opened
            with self._store():
                found = self.recorder.select_events(stream_id, gt=version - 1, lte=version)
                event = self.mapper.to_domain_event(found[0]) if found else None
            if not isinstance(event, BillStatement.ChunkStored) or event.index != index:
                raise StoredBillCorrupt(f"bill stream {stream_id}: chunk {index} is missing")
            yield event.data

    def _bill_head(self, stream_id: UUID) -> BillStatement.Fetched | BillStatement.FoundEmpty | None:
        """The event that settles a bill's stream (its last: `Fetched` is appended after every chunk), or None."""
        with self._store():
            last = self.recorder.select_events(stream_id, desc=True, limit=1)
            event = self.mapper.to_domain_event(last[0]) if last else None
        return event if isinstance(event, BillStatement.Fetched | BillStatement.FoundEmpty) else None

    def _load_statement(self, mchid: str, bill_date: dt.date, kind: str) -> BillStatement | None:
        """The stream to append to, or None when it is settled (without replaying its chunks)."""
        stream_id = bill_statement_id(mchid, bill_date, kind)
        if self._bill_head(stream_id) is not None:
            return None
        try:
            statement: BillStatement = self.repository.get(stream_id)
        except AggregateNotFoundError:
            return BillStatement.open(mchid, bill_date, kind)
        assert isinstance(statement, BillStatement)
        return statement

    # -- queries --------------------------------------------------------------------------

    def get_order(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> PaymentOrder:
        return self.get_order_by_id(order_id(mchid, out_trade_no, sub_mchid), out_trade_no)

    def get_order_by_id(self, stream_id: UUID, name: str | None = None) -> PaymentOrder:
        """The order whose stream is `stream_id`; `OrderNotFound` (naming `name`) when there is none."""
        with self._store():
            try:
                order: Any = self.repository.get(stream_id)
            except AggregateNotFoundError:
                raise OrderNotFound(name or str(stream_id)) from None
        if not isinstance(order, PaymentOrder):
            raise OrderNotFound(name or str(stream_id))
        return order

    def history(self, stream_id: UUID) -> list[dict[str, Any]]:
        with self._store():
            return [event_to_dict(e) for e in self.events.get(stream_id)]

    def order_history(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> list[dict[str, Any]]:
        events = self.history(order_id(mchid, out_trade_no, sub_mchid))
        if not events:
            raise OrderNotFound(out_trade_no)
        return events

    def order_events(
        self,
        mchid: str,
        out_trade_no: str,
        *,
        since_version: int = 0,
        types: Iterable[str] | None = None,
        sub_mchid: str | None = None,
    ) -> list[dict[str, Any]]:
        """The order's events after `since_version` (exclusive), optionally of some types only.

        An order that exists but has nothing newer gives an empty list; an unknown order raises.
        """
        stream_id = order_id(mchid, out_trade_no, sub_mchid)
        wanted = None if types is None else set(types)
        with self._store():
            found = [
                event_to_dict(e)
                for e in self.events.get(stream_id, gt=since_version or None)
                if wanted is None or type(e).__name__ in wanted
            ]
            if not found and not self.recorder.select_events(stream_id, limit=1):
                raise OrderNotFound(out_trade_no)
        return found

    def order_as_of(self, mchid: str, out_trade_no: str, version: int, sub_mchid: str | None = None) -> PaymentOrder:
        """The order replayed up to and including `version` (an audit's "as it was then")."""
        with self._store():
            try:
                order: PaymentOrder = self.repository.get(order_id(mchid, out_trade_no, sub_mchid), version=version)
            except AggregateNotFoundError:
                raise OrderNotFound(out_trade_no) from None
        assert isinstance(order, PaymentOrder)
        if order.version < version:
            raise OrderNotFound(f"{out_trade_no} has no version {version}", reason="order has no such version")
        return order

    def inbox_history(self, mchid: str, notification_id: str) -> list[dict[str, Any]]:
        return self.history(inbox_id(mchid, notification_id))

    def get_many(self, ids: Iterable[UUID]) -> dict[UUID, Any]:
        """Current aggregates by id (missing ids absent); one read on PostgreSQL."""
        wanted = list(ids)
        if len(wanted) < 2:
            found: dict[UUID, Any] = {}
            for stream_id in wanted:
                try:
                    found[stream_id] = self.repository.get(stream_id)
                except AggregateNotFoundError:
                    pass
            return found
        aggregates: dict[UUID, Any] = {}
        for originator_id, version, topic, state in self.event_log.select_streams(wanted):
            event: Any = self.mapper.to_domain_event(StoredEvent(originator_id, version, topic, bytes(state)))
            aggregates[event.originator_id] = event.mutate(aggregates.get(event.originator_id))
        return aggregates

    # -- plumbing -------------------------------------------------------------------------

    def _load_or_open(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> PaymentOrder:
        try:
            order: PaymentOrder = self.repository.get(order_id(mchid, out_trade_no, sub_mchid))
        except AggregateNotFoundError:
            return PaymentOrder.open(mchid, out_trade_no, sub_mchid)
        assert isinstance(order, PaymentOrder)
        return order

    @contextmanager
    def _store(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError:
            raise
        except PersistenceError as exc:
            log.error("event store unavailable: %s", type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from None

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        for n in range(MAX_CONFLICT_RETRIES):
            try:
                with self._store():
                    return attempt()
            except IntegrityError:
                # Another writer appended to this stream first: reload and decide again.
                time.sleep(random.uniform(0, 0.002 * (n + 1)))
        log.error("gave up after %d version conflicts", MAX_CONFLICT_RETRIES)
        raise StoreUnavailable("too many concurrent writers on one stream")


def build_ledger(database_url: str, extra_env: Mapping[str, str] | None = None) -> Ledger:
    """Construct the application on the configured store (tables created if missing)."""
    env = persistence_env(database_url)
    env.update(extra_env or {})
    try:
        with schema_lock(database_url):
            ledger = Ledger(env=env)
        _check_newest_event_decrypts(ledger)
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(type(exc).__name__) from None
    return ledger


def _check_newest_event_decrypts(ledger: Ledger) -> None:
    """A key missing from LEDGER_ENCRYPTION_KEYS fails at start-up, not at the first read."""
    cipher = ledger.mapper.cipher
    head = ledger.recorder.max_notification_id()
    if cipher is None or not head:
        return
    for stored in ledger.recorder.select_notifications(head, 1):
        try:
            cipher.decrypt(stored.state)
        except EventUndecryptable as exc:
            ledger.close()
            raise ConfigurationError(
                ENCRYPTION_SETTING, f"the newest stored event needs key {exc.key_id}, which is not configured"
            ) from None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
