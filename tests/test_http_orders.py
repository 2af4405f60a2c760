"""Orders API: registration, state, audit history, and the admin token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from ledger.wechatpay.signature import SignatureHeaders
from tests.support.constants import MCHID
from tests.support.servers import client_for

TOKEN = "t0ken-for-the-tests-only-0123456789"


@pytest.fixture
def client(merchant_env: dict[str, str], sqlite_url: str) -> Iterator[httpx.Client]:
    with client_for(merchant_env, sqlite_url) as c:
        yield c


def test_register_is_201_then_200_then_409(client: httpx.Client) -> None:
    body = {"out_trade_no": "ORDER-4001", "amount_total": 100, "description": "茶"}
    first = client.post("/orders", json=body)
    assert first.status_code == 201
    assert (first.json()["trade_state"], first.json()["amount_total"], first.json()["currency"]) == (
        "NOTPAY",
        100,
        "CNY",
    )
    assert client.post("/orders", json=body).status_code == 200
    conflict = client.post("/orders", json={**body, "amount_total": 101})
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "CONFLICT"


@pytest.mark.parametrize(
    "body",
    [
        {"out_trade_no": "ORDER-4002", "amount_total": 1.5},
        {"out_trade_no": "ORDER-4002", "amount_total": "100"},
        {"out_trade_no": "ORDER-4002", "amount_total": 0},
        {"out_trade_no": "ORDER-4002", "amount_total": True},
        {"out_trade_no": "no", "amount_total": 100},
        {"out_trade_no": "ORDER 4002", "amount_total": 100},
        {"out_trade_no": "ORDER-4002", "amount_total": 100, "currency": "cny"},
        {"out_trade_no": "ORDER-4002", "amount_total": 100, "mchid": "1900000999"},
        {"out_trade_no": "ORDER-4002", "amount": 100},
        [1, 2],
    ],
)
def test_register_rejects_bad_bodies_with_400(client: httpx.Client, body: Any) -> None:
    response = client.post("/orders", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_REQUEST"
    assert client.get("/orders/ORDER-4002").status_code == 404


def test_order_state_after_payment_and_refund(client: httpx.Client, factory: NotificationFactory) -> None:
    client.post("/orders", json={"out_trade_no": "ORDER-4003", "amount_total": 100})
    paid = factory.paid("ORDER-4003", 100, transaction_id="4200000000002104083200000488")
    assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
    refund = factory.refunded("ORDER-4003", "R-4003", 25, 100)
    assert client.post("/wechatpay/notify", content=refund.body, headers=refund.headers).status_code == 204
    order = client.get("/orders/ORDER-4003", params={"mchid": MCHID}).json()
    assert order["trade_state"] == "REFUND"
    assert order["transaction_id"] == "4200000000002104083200000488"
    assert isinstance(order["transaction_id"], str)
    assert (order["amount_total"], order["refunded_total"], order["anomalies"]) == (100, 25, [])
    assert order["success_time"] == "2026-11-27T10:34:56+08:00"
    assert order["version"] == 6


def test_unknown_order_is_404(client: httpx.Client) -> None:
    response = client.get("/orders/ORDER-4404")
    assert response.status_code == 404
    assert response.json() == {"code": "NOT_FOUND", "message": "order not found"}
    assert client.get("/orders/ORDER-4404/events").status_code == 404


def test_events_show_raw_deliveries_that_an_auditor_can_reverify(
    client: httpx.Client, factory: NotificationFactory
) -> None:
    delivery = factory.paid("ORDER-4005", 100)
    client.post("/wechatpay/notify", content=delivery.body, headers=delivery.headers)
    client.post("/wechatpay/notify", content=delivery.body, headers=factory.sign_headers(delivery.body))
    events = client.get("/orders/ORDER-4005/events").json()["events"]
    assert [(e["version"], e["type"]) for e in events] == [
        (1, "Opened"),
        (2, "NotificationReceived"),
        (3, "PaymentSucceeded"),
        (4, "NotificationReceived"),
    ]
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode(), clock=lambda: 0, tolerance=10**10)
    for event in (events[1], events[3]):
        data = event["data"]
        assert data["raw_body"].encode() == delivery.body
        assert set(SignatureHeaders.from_headers(data["signature_headers"]).as_dict()) >= {"Wechatpay-Signature"}
        assert verifier.verify(data["signature_headers"], data["raw_body"].encode()).id == delivery.notification_id
        assert event["recorded_at"].endswith("+00:00")


def test_admin_token_guards_everything_but_notify_and_healthz(
    merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory
) -> None:
    with client_for(merchant_env, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as client:
        assert client.get("/healthz").status_code == 200
        delivery = factory.paid("ORDER-4006", 100)
        assert client.post("/wechatpay/notify", content=delivery.body, headers=delivery.headers).status_code == 204
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            assert client.get("/orders/ORDER-4006", headers=headers).status_code == 401
            assert (
                client.post(
                    "/orders", json={"out_trade_no": "ORDER-4007", "amount_total": 1}, headers=headers
                ).status_code
                == 401
            )
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/orders/ORDER-4006", headers=auth).json()["trade_state"] == "SUCCESS"
        assert client.get("/orders/ORDER-4006/events", headers=auth).status_code == 200


def test_healthz_is_open(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_open_and_reports_the_store(merchant_env: dict[str, str], sqlite_url: str) -> None:
    with client_for(merchant_env, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
