"""The notify endpoint against each real store: concurrency, restarts, and a store that goes away."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from api.app import create_app
from ledger.application import build_ledger
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import MCHID
from tests.support.servers import running, through_proxy


def test_twenty_concurrent_deliveries_over_http_give_one_decision(
    database_url: str, merchant_env: dict[str, str], factory: NotificationFactory
) -> None:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url})
    body = factory.envelope(factory.transaction("ORDER-3001", 100))
    deliveries = [factory.deliver(body) for _ in range(20)]
    ledger = build_ledger(database_url)

    async def fire(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=20)) as client:
            responses = await asyncio.gather(
                *(client.post("/wechatpay/notify", content=d.body, headers=d.headers) for d in deliveries)
            )
        return [r.status_code for r in responses]

    try:
        with running(create_app(settings, ledger=ledger)) as url:
            statuses = asyncio.run(fire(url))
            order = httpx.get(f"{url}/orders/ORDER-3001").json()
        counts = Counter(e["type"] for e in ledger.order_history(MCHID, "ORDER-3001"))
    finally:
        ledger.close()
    assert statuses == [204] * 20
    assert counts["PaymentSucceeded"] == 1
    assert counts["NotificationReceived"] == 20
    assert (order["trade_state"], order["deliveries"]) == ("SUCCESS", 20)


def test_restart_keeps_history(database_url: str, merchant_env: dict[str, str], factory: NotificationFactory) -> None:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url})
    delivery = factory.paid("ORDER-3002", 100)
    with running(create_app(settings)) as url:
        assert httpx.post(f"{url}/wechatpay/notify", content=delivery.body, headers=delivery.headers).status_code == 204
    with running(create_app(settings)) as url:
        events = httpx.get(f"{url}/orders/ORDER-3002/events").json()["events"]
    assert [e["type"] for e in events] == ["Opened", "NotificationReceived", "PaymentSucceeded"]


@pytest.mark.postgres
def test_store_unavailable_is_503_and_nothing_is_acknowledged(
    postgres_url: str, merchant_env: dict[str, str], factory: NotificationFactory
) -> None:
    proxy, proxied = through_proxy(postgres_url)
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": proxied})
    ledger = build_ledger(proxied)
    try:
        with running(create_app(settings, ledger=ledger)) as url:
            first = factory.paid("ORDER-3003", 100)
            assert httpx.post(f"{url}/wechatpay/notify", content=first.body, headers=first.headers).status_code == 204
            proxy.cut()
            second = factory.paid("ORDER-3004", 100)
            started = time.monotonic()
            response = httpx.post(f"{url}/wechatpay/notify", content=second.body, headers=second.headers, timeout=30)
            elapsed = time.monotonic() - started
    finally:
        ledger.close()
    assert response.status_code == 503
    assert response.json() == {"code": "FAIL", "message": "store unavailable"}
    assert elapsed < 5, "WeChat gives up after 5 s: fail fast enough for it to retry"
    direct = build_ledger(postgres_url)
    try:
        assert direct.get_order(MCHID, "ORDER-3003").trade_state == "SUCCESS"
        assert direct.history(direct.get_order(MCHID, "ORDER-3003").id)[0]["type"] == "Opened"
        from ledger.errors import OrderNotFound

        with pytest.raises(OrderNotFound):
            direct.get_order(MCHID, "ORDER-3004")
    finally:
        direct.close()
