"""Catching the orders view up with the log before it is read for a decision (bill matching): the
head is the newest ORDER event (the log also holds bill events the view never tracks), the view
is projected here when no projector runs, waited for when one does, and a rebuild reaches such a
head too."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import date

import pytest
from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.errors import ReadModelBehind
from ledger.statements import BILL_STATEMENT_EVENTS
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.locks import ProjectorLock
from projections.read_model.live import live_view
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import catch_up_orders_view, open_orders_view, orders_head
from projections.read_model.view import ORDERS_VIEW, OrdersProjection
from tests.support.constants import MCHID
from tests.support.orders import as_replayed, fill
from tests.support.projectors import orders_projector_running, project_until_caught_up

BILL_DAY = date(2026, 11, 27)


def _orders_then_a_bill(ledger: Ledger, factory: NotificationFactory, orders: int = 4) -> int:
    """`orders` orders, then a bill event at the log's head; the newest order event's id."""
    fill(ledger, factory, orders)
    head = ledger.recorder.max_notification_id() or 0
    assert ledger.store_empty_bill(MCHID, BILL_DAY, "trade")
    assert (ledger.recorder.max_notification_id() or 0) > head
    return head


def _position(database_url: str) -> int:
    view = open_orders_view(database_url, live_view(database_url, ORDERS_VIEW))
    try:
        return view.position()
    finally:
        view.close()


def test_the_head_is_the_newest_event_of_the_topics_asked_for(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    bill_topics = [get_topic(cls) for cls in BILL_STATEMENT_EVENTS]
    assert orders_head(ledger) == 0 and ledger.event_log.last_id(bill_topics) == 0
    head = _orders_then_a_bill(ledger, factory)
    assert orders_head(ledger) == ledger.event_log.last_id(OrdersProjection.topics) == head
    assert ledger.event_log.last_id(bill_topics) == ledger.recorder.max_notification_id()
    assert ledger.event_log.last_id([]) == 0


def test_with_no_projector_running_the_catch_up_projects_up_to_the_last_order_event(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    head = _orders_then_a_bill(ledger, factory)
    started = time.monotonic()
    assert catch_up_orders_view(database_url, timeout=30) == head
    assert time.monotonic() - started < 20, "it waited for the bill event, which the view never tracks"
    with contextlib.closing(open_orders_view(database_url)) as view:
        as_replayed(view, ledger, ["ORDER-8003"])
    lock = ProjectorLock(database_url, ORDERS_VIEW)
    assert lock.try_acquire(), "the catch-up let the lock go"
    try:
        # Caught up already: nothing to do, even while a projector holds the lock.
        assert catch_up_orders_view(database_url, timeout=0.2, ledger=ledger) == head
    finally:
        lock.release()


def test_while_a_projector_holds_the_lock_the_catch_up_waits_for_it(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    head = _orders_then_a_bill(ledger, factory)
    holder = ProjectorLock(database_url, ORDERS_VIEW)
    assert holder.try_acquire()
    other = ProjectorLock(database_url, ORDERS_VIEW)
    assert not other.try_acquire()
    other.release()
    got: list[int | BaseException] = []

    def catch_up() -> None:
        try:
            got.append(catch_up_orders_view(database_url, timeout=30, ledger=ledger))
        except BaseException as exc:
            got.append(exc)

    waiter = threading.Thread(target=catch_up)
    try:
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and got == []
        assert _position(database_url) == 0, "the catch-up projected while another projector held the lock"
        project_until_caught_up(database_url, ledger)  # what the holder does
        waiter.join(20)
        assert got == [head]
    finally:
        holder.release()
        waiter.join(20)


def test_a_projector_that_stays_behind_is_a_clear_timeout(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    head = _orders_then_a_bill(ledger, factory, orders=2)
    holder = ProjectorLock(database_url, ORDERS_VIEW)
    assert holder.try_acquire()
    try:
        with pytest.raises(ReadModelBehind) as raised:
            catch_up_orders_view(database_url, timeout=0.3, ledger=ledger)
    finally:
        holder.release()
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.reason == "read model behind the log"
    assert (raised.value.position, raised.value.head) == (0, head)


def test_the_catch_up_follows_a_running_projector_past_a_bill_event(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    with orders_projector_running(database_url):
        probe = ProjectorLock(database_url, ORDERS_VIEW)
        deadline = time.monotonic() + 20
        while probe.try_acquire():  # until the projector has it
            probe.release()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        probe.release()
        head = _orders_then_a_bill(ledger, factory)
        assert catch_up_orders_view(database_url, timeout=30, ledger=ledger) == head


def test_a_rebuild_reaches_a_head_that_is_a_bill_event(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    _orders_then_a_bill(ledger, factory, orders=3)
    project_until_caught_up(database_url, ledger)
    incremental = open_orders_view(database_url)
    try:
        before = incremental.list_orders(limit=50)
    finally:
        incremental.close()
    started = time.monotonic()
    summary = rebuild_orders_view(database_url)
    assert time.monotonic() - started < 30
    assert live_view(database_url, ORDERS_VIEW) == summary.new and summary.orders == 3
    rebuilt = open_orders_view(database_url, summary.new)
    try:
        assert [r["document"] for r in rebuilt.list_orders(limit=50)] == [r["document"] for r in before]
    finally:
        rebuilt.close()
    assert catch_up_orders_view(database_url, timeout=10, ledger=ledger) >= orders_head(ledger)


def test_a_rebuild_of_a_log_without_orders(database_url: str, ledger_factory: Callable[[], Ledger]) -> None:
    ledger = ledger_factory()
    assert rebuild_orders_view(database_url).orders == 0
    ledger.store_empty_bill(MCHID, BILL_DAY, "trade")
    assert rebuild_orders_view(database_url).orders == 0
