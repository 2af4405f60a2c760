"""Reconciliation of missing callbacks: query open orders on a schedule until they are final.

WeChat does not guarantee that a notification ever arrives; its guidance is to query the
order when the callback is late. A pass: catch the worklist up with the log, lease the due
orders, check each one's state in the ledger first, query WeChat only if still open, record
what it says, and schedule the next query (a few seconds, then minutes, then hours) until
the order is final or expires.

A refund told by an APIv2 notification (its `req_info` is not authenticated) is confirmed by a
refund query when it arrives; when that query fails, the refund waits here: a pass asks again,
on the same schedule, until a final refund decision is recorded or it expires.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.domain import FINAL_TRADE_STATES, PAYMENT_LIFECYCLE_EVENTS, PaymentOrder
from ledger.errors import LedgerError, OrderNotFound, WeChatPayError
from ledger.identity import OrderKey
from ledger.settings import RECONCILE_EXPIRY, RECONCILE_SCHEDULE
from projections.reconcile.worklist import Due, DueRefund, Worklist

__all__ = ["RECONCILER", "Change", "RateLimiter", "Reconciler"]

log = logging.getLogger("ledger.reconcile")

# WeChat suggests querying a few seconds after a late callback; like Kill Bill's janitor we
# then back off to minutes and hours. [protocol: Querying an order]: unpaid orders are auto-closed after 7 days.
_PAGE = 500
# What adds a refund to confirm (an APIv2 refund delivery, a refund asked through the ledger) and what
# settles it (a final refund decision, WeChat's refusal of the request).
_REFUND_EVENTS = (
    PaymentOrder.NotificationReceived,
    PaymentOrder.RefundRequested,
    PaymentOrder.RefundSucceeded,
    PaymentOrder.RefundClosed,
    PaymentOrder.RefundRejected,
)
V2_REFUND = "REFUND.V2"
RECONCILER = "reconciler"  # who asked a close after LEDGER_CLOSE_AFTER, in the order's history


@dataclass(frozen=True)
class Change:
    mchid: str
    out_trade_no: str
    before: str
    after: str
    queried: bool
    error: str | None = None
    out_refund_no: str | None = None  # a refund's confirmation: before and after are the refund's status

    def __str__(self) -> str:
        what = self.out_trade_no if self.out_refund_no is None else f"{self.out_trade_no} refund {self.out_refund_no}"
        if self.error:
            return f"{what}: {self.before}, query failed ({self.error}); will retry"
        arrow = f"{self.before} -> {self.after}" if self.before != self.after else f"{self.after} (unchanged)"
        return f"{what}: {arrow}{'' if self.queried else ' (already final, not queried)'}"


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
        confirm_refund: Callable[..., PaymentOrder] | None = None,  # OrderQuery.refund
        schedule: Sequence[float] = RECONCILE_SCHEDULE,
        expiry: float = RECONCILE_EXPIRY,
        rate: float = 10.0,
        lease: float = 60.0,
        batch: int = 100,
        clock: Callable[[], float] = time.time,
        close_after: float | None = None,
        close: Callable[[OrderKey], PaymentOrder] | None = None,  # OrderRequester.close, by the reconciler
    ) -> None:
        self._ledger = ledger
        self._worklist = worklist
        self._query = query
        self._confirm_refund = confirm_refund
        self._schedule = tuple(schedule)
        self._expiry = expiry
        self._limiter = RateLimiter(rate)
        self._lease = lease
        self._batch = batch
        self._clock = clock
        self._close_after = close_after
        self._close = close
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- the worklist follows the log ------------------------------------------------------------

    def catch_up(self) -> int:
        """Feed the worklist from the log; returns how many events were applied."""
        recorder = self._ledger.recorder
        stop = recorder.max_notification_id() or 0
        topics = [get_topic(cls) for cls in PAYMENT_LIFECYCLE_EVENTS + _REFUND_EVENTS]
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
                    elif not self._refund_event(cur, event):
                        continue
                    applied += 1
                position = stop if len(page) < _PAGE else page[-1].id
            self._worklist.set_position(cur, position)
        return applied

    def _refund_event(self, cur: Any, event: Any) -> bool:
        """An APIv2 refund delivery or a refund asked through the ledger adds its refund, a final refund
        decision or WeChat's refusal settles it; False for other events."""
        stream_id = str(event.originator_id)
        if isinstance(event, PaymentOrder.RefundSucceeded | PaymentOrder.RefundClosed):
            self._worklist.settle_refund(cur, stream_id, event.out_refund_no, event.status)
            return True
        if isinstance(event, PaymentOrder.RefundRejected):
            self._worklist.settle_refund(cur, stream_id, event.out_refund_no, "REJECTED")
            return True
        if isinstance(event, PaymentOrder.RefundRequested):
            order: PaymentOrder = self._ledger.repository.get(event.originator_id, version=event.originator_version)
            out_refund_no, mchid, out_trade_no = event.out_refund_no, order.mchid, order.out_trade_no
        elif event.event_type == V2_REFUND:
            out_refund_no = event.resource.get("out_refund_no")
            mchid = event.resource.get("sp_mchid") or event.resource.get("mchid") or ""
            out_trade_no = event.resource.get("out_trade_no") or ""
        else:
            return False
        if not isinstance(out_refund_no, str) or not out_refund_no:
            return False
        received_at = event.timestamp.timestamp()
        due = DueRefund(stream_id, out_refund_no, str(mchid), str(out_trade_no), received_at + self._expiry, 0)
        self._worklist.add_refund(cur, due, received_at + self._schedule[0])
        return True

    # -- one pass -----------------------------------------------------------------------------------

    def _next_due(self, attempts: int, expires_at: float, now: float) -> float:
        step = self._schedule[min(attempts + 1, len(self._schedule) - 1)]
        return min(now + step, max(expires_at, now))

    def run_pass(self) -> list[Change]:
        self.catch_up()
        changes: list[Change] = []
        for due in self._worklist.claim(self.owner, self._clock(), self._lease, self._batch):
            changes.append(self._reconcile(due))
        if self._confirm_refund is not None:
            for refund in self._worklist.claim_refunds(self.owner, self._clock(), self._lease, self._batch):
                changes.append(self._reconcile_refund(refund, self._confirm_refund))
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
            self._worklist.reschedule(
                self.owner, due.stream_id, self._next_due(due.attempts, due.expires_at, now), exc.reason
            )
            return Change(due.mchid, due.out_trade_no, before.trade_state, before.trade_state, True, exc.reason)
        after = self._close_if_old(due, after, now)
        if after.is_final:
            self._worklist.finish(self.owner, due.stream_id, "done", after.trade_state)
        elif now >= due.expires_at:
            log.warning("order %s still %s at expiry; no more queries", due.out_trade_no, after.trade_state)
            self._worklist.finish(self.owner, due.stream_id, "expired", after.trade_state)
        else:
            self._worklist.reschedule(
                self.owner, due.stream_id, self._next_due(due.attempts, due.expires_at, now), None
            )
        return Change(due.mchid, due.out_trade_no, before.trade_state, after.trade_state, True)

    def _close_if_old(self, due: Due, order: PaymentOrder, now: float) -> PaymentOrder:
        """`LEDGER_CLOSE_AFTER`: an order still NOTPAY that long after its registration, after the query just
        made, is closed at WeChat Pay (a payer mid-payment, USERPAYING, is left alone)."""
        if self._close is None or self._close_after is None or order.trade_state != "NOTPAY":
            return order
        if now < due.registered_at + self._close_after:
            return order
        try:
            closed = self._close(order.key)
        except (WeChatPayError, LedgerError) as exc:
            log.warning("closing %s mchid=%s failed: %s", order.out_trade_no, order.mchid, exc.reason)
            return order
        log.info(
            "closed %s mchid=%s: unpaid %.0f s after registration",
            order.out_trade_no,
            order.mchid,
            now - due.registered_at,
        )
        return closed

    def _reconcile_refund(self, due: DueRefund, confirm: Callable[..., PaymentOrder]) -> Change:
        """Ask about a refund an APIv2 notification told or the ledger asked, unless a final decision about it
        (or WeChat's refusal of the request) came meanwhile."""
        try:
            order = self._ledger.get_order_by_id(uuid.UUID(due.stream_id))
        except OrderNotFound:
            self._worklist.release_refund(self.owner, due, state="done", refund_status="UNKNOWN")
            return Change(due.mchid, due.out_trade_no, "UNKNOWN", "UNKNOWN", False, out_refund_no=due.out_refund_no)
        before = order.refunds.get(due.out_refund_no, {}).get("status") or "UNCONFIRMED"
        if order.refund_requests.get(due.out_refund_no, {}).get("outcome") == "rejected":
            before = "REJECTED"
        if before in {*PaymentOrder.FINAL_REFUND_STATES, "REJECTED"}:
            self._worklist.release_refund(self.owner, due, state="done", refund_status=before)
            return Change(order.mchid, order.out_trade_no, before, before, False, out_refund_no=due.out_refund_no)
        self._limiter.acquire()
        now = self._clock()
        change = functools.partial(Change, order.mchid, order.out_trade_no, before, out_refund_no=due.out_refund_no)
        try:
            after_order = confirm(order.mchid, order.out_trade_no, due.out_refund_no, sub_mchid=order.sub_mchid)
        except WeChatPayError as exc:
            next_due = self._next_due(due.attempts, due.expires_at, now)
            self._worklist.release_refund(self.owner, due, next_due_at=next_due, error=exc.reason)
            return change(before, True, exc.reason)
        after = after_order.refunds.get(due.out_refund_no, {}).get("status") or "UNCONFIRMED"
        if after in PaymentOrder.FINAL_REFUND_STATES:
            self._worklist.release_refund(self.owner, due, state="done", refund_status=after)
        elif now >= due.expires_at:
            log.warning(
                "refund %s of %s still %s at expiry; no more queries", due.out_refund_no, due.out_trade_no, after
            )
            self._worklist.release_refund(self.owner, due, state="expired", refund_status=after)
        else:
            next_due = self._next_due(due.attempts, due.expires_at, now)
            self._worklist.release_refund(self.owner, due, next_due_at=next_due, refund_status=after)
        return change(after, True)

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
