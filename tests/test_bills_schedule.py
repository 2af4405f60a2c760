"""When the daily bills are reconciled ([protocol: Applying for a bill]): after 10:00 Beijing time for
the day before, a bill not had retried every 30 minutes, a day once had never run again. The schedule
is pure and the loop takes its clock and its wait, so none of this sleeps."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from ledger.errors import StoreUnavailable
from ledger.wechatpay.bills import BEIJING
from projections.bills.reports import BillReport, ReportStatus
from projections.bills.schedule import (
    MAX_WAIT,
    RETRY_AFTER,
    DayPlan,
    follow_bills,
    latest_due,
    next_run,
    runs_at,
)

DAY = dt.date(2026, 5, 4)  # the bill day; its bills are due at 10:00 Beijing on 5 May
NEXT = dt.date(2026, 5, 5)


def beijing(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 5, day, hour, minute, second, tzinfo=BEIJING)


# -- the schedule ----------------------------------------------------------------------------------


def test_a_days_bills_are_due_at_ten_beijing_time_the_next_day() -> None:
    assert runs_at(DAY) == beijing(5, 10)
    assert runs_at(DAY).astimezone(dt.UTC) == dt.datetime(2026, 5, 5, 2, 0, tzinfo=dt.UTC)
    assert latest_due(beijing(5, 9, 59, 59)) == dt.date(2026, 5, 3)
    assert latest_due(beijing(5, 10)) == DAY
    # 01:30 UTC is 09:30 in Beijing: not yet; a Beijing day is not a UTC day.
    assert latest_due(dt.datetime(2026, 5, 5, 1, 30, tzinfo=dt.UTC)) == dt.date(2026, 5, 3)
    assert latest_due(dt.datetime(2026, 5, 4, 23, 0, tzinfo=dt.UTC)) == dt.date(2026, 5, 3)  # 07:00 on the 5th


def test_before_ten_the_next_run_waits_for_ten_and_after_ten_it_runs_yesterday_at_once() -> None:
    assert next_run(beijing(5, 9, 30), first=DAY, done=set(), retry_at={}) == (beijing(5, 10), DAY)
    assert next_run(beijing(5, 10), first=DAY, done=set(), retry_at={}) == (beijing(5, 10), DAY)
    assert next_run(beijing(5, 17, 12), first=DAY, done=set(), retry_at={}) == (beijing(5, 17, 12), DAY)


def test_a_bill_not_ready_is_retried_thirty_minutes_later_until_it_is_had() -> None:
    plan = DayPlan(first=DAY)
    first = beijing(5, 10, 0, 2)
    plan.ran(DAY, "not_ready", first)
    assert plan.next_run(first) == (first + RETRY_AFTER, DAY) == (beijing(5, 10, 30, 2), DAY)
    assert plan.next_run(beijing(5, 10, 29)) == (beijing(5, 10, 30, 2), DAY)
    assert plan.next_run(beijing(5, 10, 45)) == (beijing(5, 10, 45), DAY)  # overdue: at once
    plan.ran(DAY, "failed", beijing(5, 10, 45))
    assert plan.next_run(beijing(5, 10, 45)) == (beijing(5, 11, 15), DAY)
    plan.ran(DAY, None, beijing(5, 11, 15))  # the run raised: the same
    assert plan.next_run(beijing(5, 11, 15)) == (beijing(5, 11, 45), DAY)
    plan.ran(DAY, "discrepancies", beijing(5, 11, 45))
    assert plan.next_run(beijing(5, 11, 45)) == (beijing(6, 10), NEXT)
    assert plan.retry_at == {}


@pytest.mark.parametrize("status", ["agreed", "discrepancies", "empty"])
def test_a_day_once_had_is_not_run_again(status: str) -> None:
    plan = DayPlan(first=DAY)
    plan.ran(DAY, status, beijing(5, 10))
    assert plan.next_run(beijing(5, 10, 1)) == (beijing(6, 10), NEXT)
    assert plan.next_run(beijing(6, 10, 1)) == (beijing(6, 10, 1), NEXT)


def test_days_missed_since_the_first_run_oldest_first_and_a_waiting_retry_lets_a_newer_day_go() -> None:
    now = beijing(8, 12)
    first = dt.date(2026, 5, 4)
    assert next_run(now, first=first, done={first}, retry_at={}) == (now, dt.date(2026, 5, 5))
    retry = {dt.date(2026, 5, 5): beijing(8, 12, 20)}
    assert next_run(now, first=first, done={first}, retry_at=retry) == (now, dt.date(2026, 5, 6))
    done = {first, dt.date(2026, 5, 6), dt.date(2026, 5, 7)}
    assert next_run(now, first=first, done=done, retry_at=retry) == (beijing(8, 12, 20), dt.date(2026, 5, 5))
    # A retry due after the next day's 10:00 waits behind it.
    late = {dt.date(2026, 5, 7): beijing(9, 11)}
    assert next_run(beijing(9, 9), first=dt.date(2026, 5, 7), done=set(), retry_at=late) == (
        beijing(9, 10),
        dt.date(2026, 5, 8),
    )


def test_the_schedule_wants_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_run(dt.datetime(2026, 5, 5, 10), first=DAY, done=set(), retry_at={})


# -- the loop, on an injected clock ----------------------------------------------------------------


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.waits: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += dt.timedelta(seconds=seconds)
        return False


class ScriptedBills:
    """Each run answers the next status of its (mchid, day); the loop stops after `stop_after` runs."""

    def __init__(
        self, clock: Clock, stop: threading.Event, script: dict[tuple[str, dt.date], list[str]], stop_after: int
    ) -> None:
        self.clock, self.stop, self.script, self.stop_after = clock, stop, script, stop_after
        self.runs: list[tuple[dt.datetime, str, dt.date, str]] = []
        self.kept: dict[tuple[str, dt.date], BillReport] = {}

    def report(self, mchid: str, bill_date: dt.date) -> BillReport | None:
        return self.kept.get((mchid, bill_date))

    def reconcile(self, mchid: str, bill_date: dt.date) -> BillReport:
        status = self.script[(mchid, bill_date)].pop(0)
        self.runs.append((self.clock(), mchid, bill_date, status))
        if len(self.runs) >= self.stop_after:
            self.stop.set()
        if status == "raise":
            raise StoreUnavailable("the store went away")
        self.clock.now += dt.timedelta(seconds=3)  # a run takes time
        report = BillReport(mchid, bill_date, _status(status), self.clock())
        self.kept[(mchid, bill_date)] = report
        return report


def _status(status: str) -> ReportStatus:
    assert status in ("agreed", "discrepancies", "empty", "not_ready", "failed")
    return status  # type: ignore[return-value]


def test_the_loop_retries_a_bill_not_ready_after_thirty_minutes_then_waits_for_the_next_morning() -> None:
    clock, stop = Clock(beijing(5, 9, 58)), threading.Event()
    bills = ScriptedBills(clock, stop, {("M1", DAY): ["not_ready", "not_ready", "agreed"], ("M1", NEXT): ["empty"]}, 4)
    shown: list[BillReport] = []
    follow_bills(bills, ["M1"], stop, on_report=shown.append, clock=clock, wait=clock.wait)
    assert [(at, day, status) for at, _, day, status in bills.runs] == [
        (beijing(5, 10), DAY, "not_ready"),
        (beijing(5, 10, 30, 3), DAY, "not_ready"),
        (beijing(5, 11, 0, 6), DAY, "agreed"),
        (beijing(6, 10), NEXT, "empty"),
    ]
    assert [r.status for r in shown] == ["not_ready", "not_ready", "agreed", "empty"]
    assert max(clock.waits) <= MAX_WAIT  # the clock is looked at again at least every 15 minutes


def test_the_loop_survives_a_failing_run_and_skips_a_day_another_process_had() -> None:
    clock, stop = Clock(beijing(5, 10, 5)), threading.Event()
    bills = ScriptedBills(clock, stop, {("M1", DAY): ["raise", "agreed"], ("M2", NEXT): ["discrepancies"]}, 3)
    bills.kept[("M2", DAY)] = BillReport("M2", DAY, "empty", beijing(5, 10, 1))  # a manual run, say
    follow_bills(bills, ["M2", "M1"], stop, on_report=lambda r: None, clock=clock, wait=clock.wait)
    assert [(at, mchid, day, status) for at, mchid, day, status in bills.runs] == [
        (beijing(5, 10, 5), "M1", DAY, "raise"),
        (beijing(5, 10, 35), "M1", DAY, "agreed"),
        (beijing(6, 10), "M2", NEXT, "discrepancies"),
    ]


def test_the_loop_starts_at_a_given_day_and_stops_when_told_while_waiting() -> None:
    clock, stop = Clock(beijing(5, 12)), threading.Event()
    first = dt.date(2026, 5, 2)
    script = {("M1", dt.date(2026, 5, d)): ["agreed"] for d in (2, 3, 4)}
    bills = ScriptedBills(clock, stop, script, 99)
    waited: list[float] = []

    def wait(seconds: float) -> bool:
        waited.append(seconds)
        return True  # stopped (SIGTERM) during the first wait

    follow_bills(bills, ["M1"], stop, on_report=lambda r: None, first=first, clock=clock, wait=wait)
    assert [day for _, _, day, _ in bills.runs] == [dt.date(2026, 5, d) for d in (2, 3, 4)]
    assert waited == [MAX_WAIT]
    stopped = threading.Event()
    stopped.set()
    follow_bills(bills, ["M1"], stopped, on_report=lambda r: None, clock=clock)  # returns at once
    assert len(bills.runs) == 3
