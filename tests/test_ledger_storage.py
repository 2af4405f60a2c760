"""The ledger on real stores: the same contract on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ledger.application import build_ledger
from ledger.domain import Outcome
from ledger.errors import OrderConflict, OrderNotFound, StoreUnavailable
from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.constants import APPID, MCHID


@pytest.fixture
def verify(factory: NotificationFactory) -> Callable[[Delivery], VerifiedNotification]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    return lambda d: verifier.verify(d.headers, d.body)


def types_of(history: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in history]


def test_register_pay_refund_and_restart_keeps_history(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    ledger = ledger_factory()
    order, created = ledger.register_order(MCHID, "ORDER-1001", 100, "CNY", "tea")
    assert created and order.version == 2
    ledger.record_notification(MCHID, verify(factory.paid("ORDER-1001", 100)), expected_appid=APPID)
    ledger.record_notification(MCHID, verify(factory.refunded("ORDER-1001", "R-1", 40, 100)))
    ledger.close()

    restarted = ledger_factory()
    order = restarted.get_order(MCHID, "ORDER-1001")
    assert (order.trade_state, order.refunded_total, order.amount_total) == ("REFUND", 40, 100)
    assert types_of(restarted.order_history(MCHID, "ORDER-1001")) == [
        "Opened",
        "Registered",
        "NotificationReceived",
        "PaymentSucceeded",
        "NotificationReceived",
        "RefundSucceeded",
    ]


def test_registration_is_idempotent_and_conflicts_are_refused(ledger_factory: Callable[[], Any]) -> None:
    ledger = ledger_factory()
    ledger.register_order(MCHID, "ORDER-1002", 100)
    _, created = ledger.register_order(MCHID, "ORDER-1002", 100)
    assert created is False
    with pytest.raises(OrderConflict):
        ledger.register_order(MCHID, "ORDER-1002", 101)
    assert len(ledger.order_history(MCHID, "ORDER-1002")) == 2


def test_history_keeps_the_raw_body_and_headers_byte_for_byte(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    ledger = ledger_factory()
    delivery = factory.paid("ORDER-1003", 100)
    ledger.record_notification(MCHID, verify(delivery))
    received = next(e for e in ledger.order_history(MCHID, "ORDER-1003") if e["type"] == "NotificationReceived")
    assert received["data"]["raw_body"].encode() == delivery.body
    headers = received["data"]["signature_headers"]
    # An auditor can re-verify the stored delivery independently.
    again = verify(Delivery(received["data"]["raw_body"].encode(), headers, delivery.notification_id))
    assert again.resource["out_trade_no"] == "ORDER-1003"


def test_callback_for_unknown_order_is_recorded_and_visible(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    ledger = ledger_factory()
    with pytest.raises(OrderNotFound):
        ledger.get_order(MCHID, "ORDER-1004")
    ledger.record_notification(MCHID, verify(factory.paid("ORDER-1004", 555)))
    order = ledger.get_order(MCHID, "ORDER-1004")
    assert (order.registered, order.trade_state, order.amount_total) == (False, "SUCCESS", 555)


def test_notification_without_order_goes_to_its_own_stream(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    ledger = ledger_factory()
    resource = {
        "mchid": MCHID,
        "appid": APPID,
        "out_contract_code": "C-1",
        "create_time": "2026-11-27T10:00:00+08:00",
    }
    body = factory.envelope(resource, "PAYSCORE.USER_OPEN_SERVICE", associated_data="payscore")
    delivery = factory.deliver(body)
    result = ledger.record_notification(MCHID, verify(delivery))
    assert result.outcome is Outcome.RECORDED and not result.routed_to_order
    history = ledger.inbox_history(MCHID, delivery.notification_id)
    assert types_of(history) == ["Opened", "NotificationReceived"]
    assert history[1]["data"]["resource"]["out_contract_code"] == "C-1"


def test_twenty_concurrent_deliveries_from_several_replicas_decide_once(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    replicas = [ledger_factory() for _ in range(4)]
    body = factory.envelope(factory.transaction("ORDER-1005", 100))
    retries = [verify(factory.deliver(body)) for _ in range(10)]  # re-signed, like WeChat's retries
    replays = [retries[0]] * 10  # byte-identical
    deliveries = retries + replays
    barrier = threading.Barrier(len(deliveries))

    def deliver(i: int) -> Outcome:
        barrier.wait()
        return replicas[i % len(replicas)].record_notification(MCHID, deliveries[i]).outcome

    with ThreadPoolExecutor(len(deliveries)) as pool:
        outcomes = list(pool.map(deliver, range(len(deliveries))))
    history = types_of(replicas[0].order_history(MCHID, "ORDER-1005"))
    counts = Counter(history)
    assert counts["PaymentSucceeded"] == 1
    assert counts["NotificationReceived"] == 10  # every retry kept, no replay duplicated
    assert Counter(outcomes) == Counter({Outcome.RECORDED: 10, Outcome.DUPLICATE: 10})


def test_concurrent_registration_and_callback_both_land(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, verify: Any
) -> None:
    a, b = ledger_factory(), ledger_factory()
    notification = verify(factory.paid("ORDER-1006", 100))
    barrier = threading.Barrier(2)

    def register() -> None:
        barrier.wait()
        a.register_order(MCHID, "ORDER-1006", 100)

    def callback() -> None:
        barrier.wait()
        b.record_notification(MCHID, notification)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(register), pool.submit(callback)]:
            future.result()
    order = a.get_order(MCHID, "ORDER-1006")
    assert (order.registered, order.trade_state, order.anomalies) == (True, "SUCCESS", [])


def test_unreachable_store_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        build_ledger("postgresql://127.0.0.1:1/test?connect_timeout=1")
