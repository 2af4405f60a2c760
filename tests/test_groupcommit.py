"""Group commit: batched appends keep every per-delivery guarantee."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from ledger.domain import Outcome
from ledger.errors import OrderNotFound, StoreUnavailable
from ledger.groupcommit import GroupCommitter
from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.constants import APPID, MCHID


@pytest.fixture
def verify(factory: NotificationFactory) -> Callable[[Delivery], VerifiedNotification]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    return lambda d: verifier.verify(d.headers, d.body)


@pytest.mark.parametrize("lanes", [1, 2])
def test_many_orders_and_retries_through_the_pipeline(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any, lanes: int
) -> None:
    """Every delivery recorded once, every order decided once, versions without gaps (with one lane,
    and with two: a batch read while the one before it is written)."""
    ledger = ledger_factory()
    orders = [f"GC-{n:04d}" for n in range(40)]
    for out_trade_no in orders:
        ledger.register_order(MCHID, out_trade_no, 100)
    bodies = {n: factory.paid(n, 100).body for n in orders}
    committer = GroupCommitter(ledger, max_batch=8, lanes=lanes)
    try:
        futures = []
        for _ in range(3):  # WeChat's retries: same notification, freshly signed each time
            for out_trade_no in orders:
                futures.append(
                    committer.submit(MCHID, verify(factory.deliver(bodies[out_trade_no])), expected_appid=APPID)
                )
        results = [f.result(timeout=30) for f in futures]
    finally:
        committer.close()
    assert Counter(r.outcome for r in results) == {Outcome.RECORDED: 3 * len(orders)}
    assert committer.batches > 1 and committer.requests == 3 * len(orders)
    for out_trade_no in orders:
        history = ledger.order_history(MCHID, out_trade_no)
        types = [e["type"] for e in history]
        assert types.count("NotificationReceived") == 3
        assert types.count("PaymentSucceeded") == 1
        assert [e["version"] for e in history] == list(range(1, len(history) + 1))
        assert ledger.get_order(MCHID, out_trade_no).trade_state == "SUCCESS"


class _SlowSaves:
    """The ledger with a slow commit, counting the fallbacks to one-by-one recording."""

    def __init__(self, ledger: Any, delay: float) -> None:
        self._ledger = ledger
        self._delay = delay
        self.fallbacks = 0
        self.saving = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def save_all(self, aggregates: Any) -> None:
        self.saving.set()
        time.sleep(self._delay)
        self._ledger.save_all(aggregates)

    def record_notification(self, *args: Any, **kwargs: Any) -> Any:
        self.fallbacks += 1
        return self._ledger.record_notification(*args, **kwargs)


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_stream_being_written_is_read_after_the_write(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any, lanes: int
) -> None:
    """The reader never decides on a stream whose previous batch is still being committed: with two
    lanes the second delivery is taken while the first is written, and waits for that write."""
    slow = _SlowSaves(ledger_factory(), delay=0.3)
    slow.register_order(MCHID, "GC-SLOW-1", 100)
    paid = factory.paid("GC-SLOW-1", 100)
    committer = GroupCommitter(slow, lanes=lanes)  # type: ignore[arg-type]
    try:
        first = committer.submit(MCHID, verify(paid), expected_appid=APPID)
        assert slow.saving.wait(5)
        # Submitted while the first is being written: read before that write ends, it would
        # decide on a stale stream and conflict.
        second = committer.submit(MCHID, verify(factory.deliver(paid.body)), expected_appid=APPID)
        results = [first.result(timeout=10), second.result(timeout=10)]
    finally:
        committer.close()
    assert [r.outcome for r in results] == [Outcome.RECORDED, Outcome.RECORDED]
    assert results[1].version == results[0].version + 1
    assert slow.fallbacks == 0
    types = [e["type"] for e in slow.order_history(MCHID, "GC-SLOW-1")]
    assert types.count("NotificationReceived") == 2 and types.count("PaymentSucceeded") == 1


def test_under_load_a_batch_lingers_for_company_and_a_lone_callback_never_waits(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    """After a batch of several, the committer waits a moment for more; after a batch of one
    (no load) it does not. Saves are slowed so the arrivals fall where the test wants them, with
    about half a second to spare on a loaded machine."""
    save, linger = 0.6, 1.0
    slow = _SlowSaves(ledger_factory(), delay=save)
    sizes: list[int] = []
    original_save_all = slow.save_all

    def save_all(aggregates: Any) -> None:
        aggregates = list(aggregates)
        sizes.append(len(aggregates))
        original_save_all(aggregates)

    slow.save_all = save_all  # type: ignore[method-assign]
    committer = GroupCommitter(slow, linger=linger, linger_target=3)  # type: ignore[arg-type]

    def submit(no: str) -> Any:
        return committer.submit(MCHID, verify(factory.paid(no, 100)), expected_appid=APPID)

    try:
        started = time.monotonic()
        a = submit("GC-LINGER-A")  # alone: committed without waiting for company
        time.sleep(0.1)
        b, c = submit("GC-LINGER-B"), submit("GC-LINGER-C")  # queued behind A's save
        assert a.result(timeout=10).outcome is Outcome.RECORDED
        assert time.monotonic() - started < save + linger  # saved at once, not after the linger
        time.sleep(0.15)  # B and C are being saved together now
        d = submit("GC-LINGER-D")
        b.result(timeout=10)
        time.sleep(0.2)  # D was taken after a batch of two: its batch waits for more
        e = submit("GC-LINGER-E")
        results = [f.result(timeout=10) for f in (c, d, e)]
    finally:
        committer.close()
    assert [r.outcome for r in results] == [Outcome.RECORDED] * 3
    assert sizes == [1, 2, 2]


def test_store_failure_answers_every_request_and_the_committer_recovers(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    from eventsourcing.persistence import OperationalError

    ledger = ledger_factory()
    broken = {"on": True}
    original = ledger.save_all

    def save_all(aggregates: Any) -> None:
        if broken["on"]:
            raise OperationalError("connection refused")
        original(aggregates)

    ledger.save_all = save_all
    committer = GroupCommitter(ledger)
    try:
        failing = [committer.submit(MCHID, verify(factory.paid(f"GC-DOWN-{n}", 100))) for n in range(5)]
        for future in failing:
            with pytest.raises(StoreUnavailable):
                future.result(timeout=10)
        broken["on"] = False
        result = committer.submit(MCHID, verify(factory.paid("GC-DOWN-0", 100))).result(timeout=10)
    finally:
        committer.close()
    assert result.outcome is Outcome.RECORDED
    assert [e["type"] for e in ledger.order_history(MCHID, "GC-DOWN-0")].count("NotificationReceived") == 1
    with pytest.raises(OrderNotFound):
        ledger.order_history(MCHID, "GC-DOWN-1")


@pytest.mark.parametrize(("lanes", "overlaps"), [(1, False), (2, True)])
def test_with_two_lanes_the_next_batch_is_read_while_one_is_written(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any, lanes: int, overlaps: bool
) -> None:
    """With two lanes, a delivery for another order is read and decided while the batch before it is
    still being written; with one lane, only after."""
    slow = _SlowSaves(ledger_factory(), delay=0.8)
    for no in ("GC-LANE-A", "GC-LANE-B"):
        slow.register_order(MCHID, no, 100)
    reads: list[float] = []
    saved: list[float] = []
    original_get_many, original_save_all = slow.get_many, slow.save_all

    def get_many(ids: Any) -> Any:
        reads.append(time.monotonic())
        return original_get_many(ids)

    def save_all(aggregates: Any) -> None:
        original_save_all(aggregates)
        saved.append(time.monotonic())

    slow.get_many, slow.save_all = get_many, save_all  # type: ignore[method-assign]
    committer = GroupCommitter(slow, lanes=lanes)  # type: ignore[arg-type]
    try:
        first = committer.submit(MCHID, verify(factory.paid("GC-LANE-A", 100)), expected_appid=APPID)
        assert slow.saving.wait(5)
        other = committer.submit(MCHID, verify(factory.paid("GC-LANE-B", 100)), expected_appid=APPID)
        results = [first.result(timeout=10), other.result(timeout=10)]
    finally:
        committer.close()
    assert [r.outcome for r in results] == [Outcome.RECORDED] * 2
    assert len(reads) == 2 and slow.fallbacks == 0
    assert (reads[1] < saved[0]) is overlaps
    for no in ("GC-LANE-A", "GC-LANE-B"):
        assert [e["type"] for e in slow.order_history(MCHID, no)].count("PaymentSucceeded") == 1
