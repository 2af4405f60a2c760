"""Group commit: concurrent notifications share one load and one transaction.

Each HTTP worker hands its verified notification to the committer and waits for *its own*
commit; the committer takes everything that is waiting, loads the streams in one read,
decides each delivery in arrival order (two deliveries of one order apply one after the
other to the same aggregate), and saves all of them with one ``save()``. On PostgreSQL every
insert transaction takes the events table lock, so amortising it is what lets an event
store keep up with a plain UPDATE. If the batch conflicts with another process, each
delivery is retried on its own through the ordinary reload-and-retry path.

The work runs as a two-stage pipeline on two threads: while the writer commits batch N, the
reader already loads and decides batch N+1 (whose streams cannot overlap N's: a request for a
stream that is still being written waits for that write). A batch's cycle is then the longer
of the two stages instead of their sum.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError

from ledger.application import Ledger, RecordResult, evidence_from
from ledger.domain import NotificationInbox, Outcome, PaymentOrder, inbox_id, order_id
from ledger.errors import StoreUnavailable
from ledger.wechatpay.notification import VerifiedNotification

__all__ = ["GroupCommitter"]

log = logging.getLogger("ledger.groupcommit")


@dataclass
class _Request:
    mchid: str
    notification: VerifiedNotification
    expected_appid: str | None
    future: Future[RecordResult] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    afuture: asyncio.Future[RecordResult] | None = None
    outcome: RecordResult | BaseException | None = None

    @functools.cached_property
    def stream_id(self) -> UUID:
        out_trade_no = self.notification.resource.get("out_trade_no")
        if isinstance(out_trade_no, str) and out_trade_no:
            return order_id(self.mchid, out_trade_no)
        return inbox_id(self.mchid, self.notification.id)

    def withdrawn(self) -> bool:
        """True when the caller gave up before the committer picked the request up."""
        if self.future is not None:
            return not self.future.set_running_or_notify_cancel()
        return self.afuture is not None and self.afuture.cancelled()


def _resolve(requests: list[_Request]) -> None:
    for request in requests:
        assert request.afuture is not None
        if request.afuture.done():  # the caller stopped waiting (deadline)
            continue
        if isinstance(request.outcome, BaseException):
            request.afuture.set_exception(request.outcome)
        else:
            request.afuture.set_result(request.outcome)  # type: ignore[arg-type]


@dataclass
class _Prepared:
    batch: list[_Request]
    streams: list[Any]
    outcomes: list[tuple[Outcome, Any]]


class GroupCommitter:
    def __init__(self, ledger: Ledger, max_batch: int = 64) -> None:
        self._ledger = ledger
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # One prepared batch waits while another is written: enough to overlap the stages.
        self._prepared: queue.Queue[_Prepared | None] = queue.Queue(maxsize=1)
        self._inflight: set[UUID] = set()
        self._inflight_changed = threading.Condition()
        self.batches = 0
        self.requests = 0
        self._reader = threading.Thread(target=self._read_loop, name="group-commit-read", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="group-commit-write", daemon=True)
        self._reader.start()
        self._writer.start()

    def submit(
        self, mchid: str, notification: VerifiedNotification, *, expected_appid: str | None = None
    ) -> Future[RecordResult]:
        """Queue a notification; the future resolves once its events are committed.

        Cancelling the future before the committer picks it up withdraws the request.
        """
        request = _Request(mchid, notification, expected_appid, future=Future())
        self._queue.put(request)
        assert request.future is not None
        return request.future

    def submit_async(
        self, mchid: str, notification: VerifiedNotification, *, expected_appid: str | None = None
    ) -> asyncio.Future[RecordResult]:
        """Like `submit`, for a caller on an event loop: one loop wake-up per batch, not per request."""
        loop = asyncio.get_running_loop()
        request = _Request(mchid, notification, expected_appid, loop=loop, afuture=loop.create_future())
        self._queue.put(request)
        assert request.afuture is not None
        return request.afuture

    def record_notification(
        self, mchid: str, notification: VerifiedNotification, *, expected_appid: str | None = None
    ) -> RecordResult:
        """Same contract as `Ledger.record_notification`: durable on return."""
        return self.submit(mchid, notification, expected_appid=expected_appid).result()

    def close(self) -> None:
        """Finish what was submitted, then stop both threads."""
        self._queue.put(None)
        self._reader.join(10)
        self._writer.join(10)

    # -- stage 1: take a batch, load its streams, decide -----------------------------------

    def _read_loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                batch = [r for r in batch if not r.withdrawn()]
                if batch:
                    self._prepare(batch)
        finally:
            self._prepared.put(None)

    def _next_batch(self) -> list[_Request] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _prepare(self, batch: list[_Request]) -> None:
        self.batches += 1
        self.requests += len(batch)
        ids = {r.stream_id for r in batch}
        with self._inflight_changed:
            # A stream still being written must be read after that write, never before.
            self._inflight_changed.wait_for(lambda: self._inflight.isdisjoint(ids))
            self._inflight |= ids
        try:
            streams, outcomes = self._decide(batch, ids)
        except IntegrityError:  # cannot happen on a read, but never strand a request
            self._individually_all(batch, ids)
            return
        except PersistenceError as exc:
            log.error("event store unavailable: %s", type(exc).__name__)
            for request in batch:
                request.outcome = StoreUnavailable(type(exc).__name__)
            self._finish(batch, ids)
            return
        except Exception:
            log.exception("group commit failed; retrying individually")
            self._individually_all(batch, ids)
            return
        self._prepared.put(_Prepared(batch, streams, outcomes))

    def _decide(self, batch: list[_Request], ids: set[UUID]) -> tuple[list[Any], list[tuple[Outcome, Any]]]:
        streams: dict[UUID, Any] = self._ledger.get_many(ids)
        outcomes: list[tuple[Outcome, Any]] = []
        for request in batch:
            stream = streams.get(request.stream_id)
            evidence = evidence_from(request.notification)
            if isinstance(stream, NotificationInbox) or (
                stream is None and request.stream_id == inbox_id(request.mchid, request.notification.id)
            ):
                inbox = stream or NotificationInbox.open(request.mchid, request.notification.id)
                streams[request.stream_id] = inbox
                outcomes.append((inbox.receive(evidence), inbox))
                continue
            order = stream or PaymentOrder.open(request.mchid, str(request.notification.resource["out_trade_no"]))
            streams[request.stream_id] = order
            outcomes.append((order.receive(evidence, expected_appid=request.expected_appid), order))
        return list(streams.values()), outcomes

    # -- stage 2: commit, answer -----------------------------------------------------------

    def _write_loop(self) -> None:
        while (prepared := self._prepared.get()) is not None:
            self._commit(prepared)

    def _commit(self, prepared: _Prepared) -> None:
        batch = prepared.batch
        ids = {r.stream_id for r in batch}
        try:
            self._ledger.save_all(prepared.streams)
        except IntegrityError:
            # Another process appended to one of these streams: retry each on its own.
            self._individually_all(batch, ids)
            return
        except PersistenceError as exc:
            log.error("event store unavailable: %s", type(exc).__name__)
            for request in batch:
                request.outcome = StoreUnavailable(type(exc).__name__)
            self._finish(batch, ids)
            return
        except Exception:  # never strand a waiting request
            log.exception("group commit failed; retrying individually")
            self._individually_all(batch, ids)
            return
        for request, (outcome, stream) in zip(batch, prepared.outcomes, strict=True):
            request.outcome = RecordResult(outcome, stream.id, stream.version, isinstance(stream, PaymentOrder))
        self._finish(batch, ids)

    def _individually_all(self, batch: list[_Request], ids: set[UUID]) -> None:
        for request in batch:
            try:
                request.outcome = self._ledger.record_notification(
                    request.mchid, request.notification, expected_appid=request.expected_appid
                )
            except Exception as exc:
                request.outcome = exc
        self._finish(batch, ids)

    def _finish(self, batch: list[_Request], ids: set[UUID]) -> None:
        with self._inflight_changed:
            self._inflight -= ids
            self._inflight_changed.notify_all()
        self._deliver(batch)

    @staticmethod
    def _deliver(batch: list[_Request]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
        for request in batch:
            if request.future is not None:
                if isinstance(request.outcome, BaseException):
                    request.future.set_exception(request.outcome)
                else:
                    request.future.set_result(request.outcome)  # type: ignore[arg-type]
            elif request.loop is not None:
                by_loop.setdefault(request.loop, []).append(request)
        for loop, requests in by_loop.items():
            loop.call_soon_threadsafe(_resolve, requests)
