"""When a day's bills are reconciled, and the loop of `payledger bills reconcile --follow`.

WeChat makes a day's bills the next morning ([protocol: Applying for a bill]): the loop
reconciles each day D at 10:00 Beijing time on D+1. A bill that could not be had (not ready, a
hash mismatch, WeChat unavailable) is tried again `RETRY_AFTER` later, until it is had; a day
whose bill was had (agreed, discrepancies, empty) is not run again by the loop, whichever process
reconciled it (the saved report says so). The schedule is a pure function of the time and of
what is done, so it is tested without sleeping; the loop takes its clock and its wait.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Protocol

from ledger.errors import LedgerError
from ledger.wechatpay.bills import BEIJING
from projections.bills.reports import BillReport

__all__ = [
    "DONE_STATUSES",
    "MAX_WAIT",
    "RETRY_AFTER",
    "RUN_AT",
    "Bills",
    "DayPlan",
    "follow_bills",
    "latest_due",
    "next_run",
    "runs_at",
]

log = logging.getLogger("ledger.bills")

RUN_AT = dt.time(10, 0)
"""A day's bills are reconciled from this Beijing time on the next day."""
RETRY_AFTER = dt.timedelta(minutes=30)
"""How long after a run that could not have the bill the day is tried again."""
MAX_WAIT = 15 * 60.0
"""The loop looks at the clock again at least this often (seconds): a wall clock may jump."""
DONE_STATUSES = frozenset({"agreed", "discrepancies", "empty"})
"""A day whose report has one of these was had: the loop does not run it again."""

_DAY = dt.timedelta(days=1)


def runs_at(day: dt.date) -> dt.datetime:
    """When `day`'s bills are first reconciled: `RUN_AT` Beijing time on the next day."""
    return dt.datetime.combine(day + _DAY, RUN_AT, tzinfo=BEIJING)


def latest_due(now: dt.datetime) -> dt.date:
    """The latest day whose bills are due at `now` (aware): yesterday in Beijing from 10:00, else the day before."""
    beijing = now.astimezone(BEIJING)
    return beijing.date() - (_DAY if beijing.time() >= RUN_AT else 2 * _DAY)


def next_run(
    now: dt.datetime, *, first: dt.date, done: Set[dt.date], retry_at: Mapping[dt.date, dt.datetime]
) -> tuple[dt.datetime, dt.date]:
    """The next day to reconcile from `first` on, and when (never before `now`).

    A day due (`runs_at(day) <= now`) and not `done` runs at once, or at its `retry_at` when a
    run could not have its bill; the first day not yet due runs at its `runs_at`. The earliest
    wins, the older day on a tie.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    candidates: list[tuple[dt.datetime, dt.date]] = []
    day = first
    while runs_at(day) <= now:
        if day not in done:
            candidates.append((max(now, retry_at.get(day, now)), day))
        day += _DAY
    while day in done:
        day += _DAY
    candidates.append((runs_at(day), day))
    return min(candidates)


class Bills(Protocol):
    """What the loop needs of `projections.bills.service.BillReconciler`."""

    def reconcile(self, mchid: str, bill_date: dt.date) -> BillReport: ...

    def report(self, mchid: str, bill_date: dt.date) -> BillReport | None: ...


@dataclass
class DayPlan:
    """One merchant's days in the loop: where it starts, what is done, when a day is retried."""

    first: dt.date
    done: set[dt.date] = field(default_factory=set)
    retry_at: dict[dt.date, dt.datetime] = field(default_factory=dict)

    def next_run(self, now: dt.datetime) -> tuple[dt.datetime, dt.date]:
        return next_run(now, first=self.first, done=self.done, retry_at=self.retry_at)

    def ran(self, day: dt.date, status: str | None, now: dt.datetime) -> None:
        """`status` None: the run raised (retried like a bill that could not be had)."""
        if status in DONE_STATUSES:
            self.done.add(day)
            self.retry_at.pop(day, None)
        else:
            self.retry_at[day] = now + RETRY_AFTER


def follow_bills(
    bills: Bills,
    merchants: Iterable[str],
    stop: threading.Event,
    *,
    on_report: Callable[[BillReport], None],
    first: dt.date | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    wait: Callable[[float], bool] | None = None,
) -> None:
    """Reconcile each merchant's days as `next_run` says until `stop` is set.

    `first` is the first day to reconcile (default: the latest day due when the loop starts).
    `wait(seconds)` returns True when the loop must stop (default: `stop.wait`); a test passes
    one that moves its `clock` on instead of sleeping. A report is handed to `on_report` as each
    run ends; a day whose report (from any process) says its bill was had is skipped silently.
    """
    pause = wait or stop.wait
    start = first or latest_due(clock())
    plans = {mchid: DayPlan(start) for mchid in merchants}
    if not plans:
        return
    while not stop.is_set():
        now = clock()
        when, day, mchid = min((*plan.next_run(now), mchid) for mchid, plan in plans.items())
        delay = (when - now).total_seconds()
        if delay > 0:
            if pause(min(delay, MAX_WAIT)):
                return
            continue
        plan = plans[mchid]
        try:
            kept = bills.report(mchid, day)
            if kept is not None and kept.status in DONE_STATUSES:
                plan.ran(day, kept.status, now)
                continue
            report = bills.reconcile(mchid, day)
        except LedgerError as exc:
            log.warning("bills mchid=%s day=%s: run failed (%s); retried in %s", mchid, day, exc.reason, RETRY_AFTER)
            plan.ran(day, None, clock())
            continue
        except Exception:  # keep the loop alive (the store away, say); the day is tried again
            log.exception("bills mchid=%s day=%s: run failed; retried in %s", mchid, day, RETRY_AFTER)
            plan.ran(day, None, clock())
            continue
        plan.ran(day, report.status, clock())
        on_report(report)
