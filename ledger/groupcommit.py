"""Group commit: concurrent notifications share one load and one transaction.

Each HTTP worker hands its verified notification to the committer and waits for *its own*
commit; the committer takes everything that is waiting, loads the streams in one read,
decides each delivery in arrival order (two deliveries of one order apply one after the
other to the same aggregate), and saves all of them with one ``save()``. On PostgreSQL every
insert transaction takes the events table lock, so amortising it is what lets an event
store keep up with a plain UPDATE. If the batch conflicts with another process, each
delivery is retried on its own through the ordinary reload-and-retry path.

With two lanes (threads), the next batch is taken, read and decided while the one before it is
being written: a lane spends most of a commit waiting on the database (the round trips and the WAL
flush), and with one lane every callback waited for the whole cycle of the batch ahead of it. One
lane at a time takes and decides (the next lane starts taking once the one before has decided), so
batches stay as full as with one lane. Batches are taken in arrival order, and a batch that names a
stream an earlier batch is still writing waits for that write to end before it reads, so no lane
ever decides on a stale stream (the appends themselves queue on the table lock, in the same order).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError

from ledger.application import Ledger
from ledger.domain import Evidence
from ledger.errors import StoreUnavailable
from ledger.routing import RecordResult, Route
from ledger.wechatpay.notification import VerifiedNotification

__all__ = ["LANES", "GroupCommitter"]

log = logging.getLogger("ledger.groupcommit")

# Under load a batch waits this long for company: fewer, larger commits cost less CPU in both
# processes per callback without moving p99 (measured: docs/benchmarks.md, "Group commit").
LINGER = 0.001
LINGER_TARGET = 12
# The HTTP service's lanes: one batch read and decided while one is written (docs/benchmarks.md).
LANES = 2


@dataclass
class _Request:
    route: Route
    future: Future[RecordResult] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    afuture: asyncio.Future[RecordResult] | None = None
    outcome: RecordResult | BaseException | None = None

    def withdrawn(self) -> bool:
        """True when the caller gave up before the committer picked the request up."""
        if self.future is not None:
            return not self.future.set_running_or_notify_cancel()
        return self.afuture is not None and self.afuture.cancelled()


class _Once:
    """`lock`, acquired now and released by the first `release()` only."""

    def __init__(self, lock: threading.Lock) -> None:
        lock.acquire()
        self._lock: threading.Lock | None = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


def _streams_of(request: _Request) -> list[UUID]:
    """The streams a request writes to; none when its notification names them wrongly (its commit
    then fails on its own, as it would alone)."""
    try:
        return request.route.stream_ids
    except Exception:
        return []


def _resolve(requests: list[_Request]) -> None:
    for request in requests:
        assert request.afuture is not None
        if request.afuture.done():  # the caller stopped waiting (deadline)
            continue
        if isinstance(request.outcome, BaseException):
            request.afuture.set_exception(request.outcome)
        else:
            request.afuture.set_result(request.outcome)  # type: ignore[arg-type]


class GroupCommitter:
    def __init__(
        self,
        ledger: Ledger,
        max_batch: int = 64,
        *,
        linger: float = LINGER,
        linger_target: int = LINGER_TARGET,
        lanes: int = 1,
    ) -> None:
        self._ledger = ledger
        self._max_batch = max_batch
        self._linger = linger
        self._linger_target = linger_target
        self._last_batch = 0
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Held while a lane takes its batch and claims its streams: batches are claimed in order.
        self._taking = threading.Lock()
        # Streams being written, each with the event its batch sets once the write has ended.
        self._writing: dict[UUID, threading.Event] = {}
        self._writing_lock = threading.Lock()
        self.batches = 0
        self.requests = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"group-commit-{n}", daemon=True) for n in range(max(1, lanes))
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        mchid: str,
        notification: VerifiedNotification | Evidence,
        *,
        expected_appid: str | None = None,
        sub_mchids: frozenset[str] | None = None,
    ) -> Future[RecordResult]:
        """Queue a notification; the future resolves once its events are committed.

        Cancelling the future before the committer picks it up withdraws the request.
        """
        request = _Request(Route(mchid, notification, expected_appid, sub_mchids), future=Future())
        self._queue.put(request)
        assert request.future is not None
        return request.future

    def submit_async(
        self,
        mchid: str,
        notification: VerifiedNotification | Evidence,
        *,
        expected_appid: str | None = None,
        sub_mchids: frozenset[str] | None = None,
    ) -> asyncio.Future[RecordResult]:
        """Like `submit`, for a caller on an event loop: one loop wake-up per batch, not per request."""
        loop = asyncio.get_running_loop()
        route = Route(mchid, notification, expected_appid, sub_mchids)
        request = _Request(route, loop=loop, afuture=loop.create_future())
        self._queue.put(request)
        assert request.afuture is not None
        return request.afuture

    def record_notification(
        self,
        mchid: str,
        notification: VerifiedNotification | Evidence,
        *,
        expected_appid: str | None = None,
        sub_mchids: frozenset[str] | None = None,
    ) -> RecordResult:
        """Same contract as `Ledger.record_notification`: durable on return."""
        return self.submit(mchid, notification, expected_appid=expected_appid, sub_mchids=sub_mchids).result()

    def close(self) -> None:
        self._queue.put(None)  # each lane leaving puts it back for the next
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        while self._lane():
            pass

    def _lane(self) -> bool:
        """Take, read and decide one batch, then let the next lane take its own while this one saves
        and answers. False when the committer is closing."""
        taking = _Once(self._taking)
        try:
            first = self._queue.get()
            if first is None:
                self._queue.put(None)
                return False
            batch = self._gather(first)
            self._last_batch = len(batch)
            batch = [r for r in batch if not r.withdrawn()]
            self.batches += 1 if batch else 0
            self.requests += len(batch)
            written, earlier = self._claim(batch)
            try:
                for event in earlier:
                    event.wait()
                if batch:
                    self._commit(batch, taking.release)
                    taking.release()
                    self._deliver(batch)
            finally:
                self._release(written)
        finally:
            taking.release()
        return True

    def _claim(self, batch: list[_Request]) -> tuple[threading.Event, set[threading.Event]]:
        """Mark the batch's streams as being written; the writes of earlier batches to wait for."""
        written = threading.Event()
        streams = {stream_id for request in batch for stream_id in _streams_of(request)}
        with self._writing_lock:
            earlier = {self._writing[s] for s in streams if s in self._writing}
            for stream_id in streams:
                self._writing[stream_id] = written
        return written, earlier

    def _release(self, written: threading.Event) -> None:
        with self._writing_lock:
            for stream_id in [s for s, event in self._writing.items() if event is written]:
                del self._writing[stream_id]
        written.set()

    def _gather(self, first: _Request) -> list[_Request]:
        """`first` and whatever waits behind it; while busy, linger briefly for more.

        Each batch costs a read and a transaction whatever its size (about half a millisecond
        of our CPU and some of the database's), so under load a slightly longer wait for a
        fuller batch costs every callback less. When the previous batch held a single
        callback there is no load to amortise and nothing waits."""
        batch = [first]
        deadline = time.monotonic() + self._linger if self._last_batch >= 2 else 0.0
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if len(batch) >= self._linger_target or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _commit(self, batch: list[_Request], decided: Callable[[], None]) -> None:
        """Decide and save `batch`, calling `decided` between the two (or on failure, before the retries)."""
        try:
            results = self._decide_and_save(batch, decided)
        except IntegrityError:
            decided()
            # Another process appended to one of these streams: retry each on its own.
            for request in batch:
                self._individually(request)
            return
        except PersistenceError as exc:
            decided()
            log.error("event store unavailable: %s", type(exc).__name__)
            for request in batch:
                request.outcome = StoreUnavailable(type(exc).__name__)
            return
        except Exception:  # never strand a waiting request
            decided()
            log.exception("group commit failed; retrying individually")
            for request in batch:
                self._individually(request)
            return
        for request, result in zip(batch, results, strict=True):
            request.outcome = result

    def _individually(self, request: _Request) -> None:
        try:
            route = request.route
            request.outcome = self._ledger.record_notification(
                route.mchid, route.notification, expected_appid=route.expected_appid, sub_mchids=route.sub_mchids
            )
        except Exception as exc:
            request.outcome = exc

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
            try:
                loop.call_soon_threadsafe(_resolve, requests)
            except RuntimeError:  # that event loop has closed (shutdown): nobody is waiting
                log.warning("%d commits finished after their event loop closed", len(requests))

    def _decide_and_save(self, batch: list[_Request], decided: Callable[[], None]) -> list[RecordResult]:
        """Every delivery decided in arrival order on one read of their streams, all saved at once."""
        streams: dict[UUID, Any] = self._ledger.get_many({i for r in batch for i in r.route.stream_ids})
        outcomes = [request.route.decide(streams) for request in batch]
        decided()
        self._ledger.save_all(streams.values())
        return [RecordResult.of(outcome, stream) for outcome, stream in outcomes]
