"""Reconciliation of missing callbacks: query open orders on a schedule until they are final.

WeChat does not guarantee that a notification ever arrives; its guidance is to query the
order when the callback is late. A pass: catch the worklist up with the log, lease the due
orders, check each one's state in the ledger first, query WeChat only if still open, record
what it says, and schedule the next query (a few seconds, then minutes, then hours) until
the order is final or expires.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.domain import FINAL_TRADE_STATES, PAYMENT_LIFECYCLE_EVENTS, PaymentOrder
from ledger.errors import OrderNotFound, WeChatPayError
from ledger.settings import RECONCILE_EXPIRY, RECONCILE_SCHEDULE
from projections.reconcile.worklist import Due, Worklist

__all__ = ["Change", "RateLimiter", "Reconciler"]

log = logging.getLogger("ledger.reconcile")

# WeChat suggests querying a few seconds after a late callback; like Kill Bill's janitor we
# then back off to minutes and hours. [protocol: Querying an order]: unpaid orders are auto-closed after 7 days.
_PAGE = 500


@dataclass(frozen=True)
class Change:
    mchid: str
    out_trade_no: str
    before: str
    after: str
    queried: bool
    error: str | None = None

    def __str__(self) -> str:
        if self.error:
            return f"{self.out_trade_no}: {self.before}, query failed ({self.error}); will retry"
        arrow = f"{self.before} -> {self.after}" if self.before != self.after else f"{self.after} (unchanged)"
        return f"{self.out_trade_no}: {arrow}{'' if self.queried else ' (already final, not queried)'}"


class RateLimiter:
    """At most `rate` acquisitions per second in this process (a token bucket)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._clock = clock
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            time.sleep(wait)


class Reconciler:
    def __init__(
        self,
        ledger: Ledger,
        worklist: Worklist,
        query: Callable[..., PaymentOrder],  # OrderQuery: (mchid, out_trade_no, *, sub_mchid, combine_out_trade_no)
        *,
        schedule: Sequence[float] = RECONCILE_SCHEDULE,
        expiry: float = RECONCILE_EXPIRY,
        rate: float = 10.0,
        lease: float = 60.0,
        batch: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._worklist = worklist
        self._query = query
        self._schedule = tuple(schedule)
        self._expiry = expiry
        self._limiter = RateLimiter(rate)
        self._lease = lease
        self._batch = batch
        self._clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- the worklist follows the log ------------------------------------------------------------

    def catch_up(self) -> int:
        """Feed the worklist from the log; returns how many events were applied."""
        recorder = self._ledger.recorder
        stop = recorder.max_notification_id() or 0
        topics = [get_topic(cls) for cls in PAYMENT_LIFECYCLE_EVENTS]
        applied = 0
        with self._worklist.transaction() as cur:
            position = self._worklist.position(cur)
            while position < stop:
                page = recorder.select_notifications(
                    position, _PAGE, stop=stop, topics=topics, inclusive_of_start=False
                )
                for notification in page:
                    event = self._ledger.mapper.to_domain_event(notification)
                    stream_id = str(event.originator_id)
                    if isinstance(event, PaymentOrder.Registered):
                        order: PaymentOrder = self._ledger.repository.get(event.originator_id)
                        registered_at = event.timestamp.timestamp()
                        due = Due(
                            stream_id,
                            order.mchid,
                            order.out_trade_no,
                            registered_at,
                            registered_at + self._expiry,
                            0,
                        )
                        self._worklist.add(cur, due, registered_at + self._schedule[0])
                        if order.is_final:
                            self._worklist.settle(cur, stream_id, order.trade_state)
                    elif isinstance(event, PaymentOrder.PaymentSucceeded):
                        self._worklist.settle(cur, stream_id, "SUCCESS")
                    elif isinstance(event, PaymentOrder.TradeStateChanged) and event.to_state in FINAL_TRADE_STATES:
                        self._worklist.settle(cur, stream_id, event.to_state)
                    applied += 1
                position = stop if len(page) < _PAGE else page[-1].id
            self._worklist.set_position(cur, position)
        return applied

    # -- one pass -----------------------------------------------------------------------------------

    def _next_due(self, due: Due, now: float) -> float:
        step = self._schedule[min(due.attempts + 1, len(self._schedule) - 1)]
        return min(now + step, max(due.expires_at, now))

    def run_pass(self) -> list[Change]:
        self.catch_up()
        changes: list[Change] = []
        for due in self._worklist.claim(self.owner, self._clock(), self._lease, self._batch):
            changes.append(self._reconcile(due))
        return changes

    def _reconcile(self, due: Due) -> Change:
        try:
            before = self._ledger.get_order_by_id(uuid.UUID(due.stream_id))
        except OrderNotFound:
            self._worklist.finish(self.owner, due.stream_id, "done", "UNKNOWN")
            return Change(due.mchid, due.out_trade_no, "UNKNOWN", "UNKNOWN", False)
        if before.is_final:  # the callback came after all: check the state before querying
            self._worklist.finish(self.owner, due.stream_id, "done", before.trade_state)
            return Change(due.mchid, due.out_trade_no, before.trade_state, before.trade_state, False)
        self._limiter.acquire()
        now = self._clock()
        try:
            # A sub-merchant's order by the partner path, a combined payment's sub-order through its combination.
            after = self._query(
                before.mchid,
                before.out_trade_no,
                sub_mchid=before.sub_mchid,
                combine_out_trade_no=before.combine_out_trade_no,
            )
        except WeChatPayError as exc:
            self._worklist.reschedule(self.owner, due.stream_id, self._next_due(due, now), exc.reason)
            return Change(due.mchid, due.out_trade_no, before.trade_state, before.trade_state, True, exc.reason)
        if after.is_final:
            self._worklist.finish(self.owner, due.stream_id, "done", after.trade_state)
        elif now >= due.expires_at:
            log.warning("order %s still %s at expiry; no more queries", due.out_trade_no, after.trade_state)
            self._worklist.finish(self.owner, due.stream_id, "expired", after.trade_state)
        else:
            self._worklist.reschedule(self.owner, due.stream_id, self._next_due(due, now), None)
        return Change(due.mchid, due.out_trade_no, before.trade_state, after.trade_state, True)

    def follow(self, stop: threading.Event, idle: float = 1.0, report: Callable[[Change], None] = print) -> None:
        """Run passes until `stop` is set; sleeps `idle` seconds when nothing was due."""
        while not stop.is_set():
            try:
                changes = self.run_pass()
            except Exception:  # keep the sweeper alive; the next pass retries
                log.exception("reconciliation pass failed")
                changes = []
            for change in changes:
                report(change)
            if not changes:
                stop.wait(idle)
