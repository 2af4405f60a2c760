"""The audit API: event filters and the order as it was at a version, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.servers import client_for


@pytest.fixture
def client(merchant_env: dict[str, str], database_url: str) -> Iterator[httpx.Client]:
    with client_for(merchant_env, database_url) as c:
        yield c


def paid_retried_and_refunded(client: httpx.Client, factory: NotificationFactory, no: str) -> None:
    """v1 Opened, v2 Registered, v3 NotificationReceived, v4 PaymentSucceeded,
    v5 NotificationReceived (WeChat's retry), v6 NotificationReceived (refund), v7 RefundSucceeded."""
    assert client.post("/orders", json={"out_trade_no": no, "amount_total": 100}).status_code == 201
    paid = factory.paid(no, 100, transaction_id="4200000000002104083200000777")
    assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
    retry = factory.sign_headers(paid.body)
    assert client.post("/wechatpay/notify", content=paid.body, headers=retry).status_code == 204
    refund = factory.refunded(no, f"R-{no}", 30, 100)
    assert client.post("/wechatpay/notify", content=refund.body, headers=refund.headers).status_code == 204


def versions(response: httpx.Response) -> list[tuple[int, str]]:
    assert response.status_code == 200, response.text
    return [(e["version"], e["type"]) for e in response.json()["events"]]


def test_events_filter_by_type_and_since_version(client: httpx.Client, factory: NotificationFactory) -> None:
    paid_retried_and_refunded(client, factory, "ORDER-8101")
    url = "/orders/ORDER-8101/events"
    assert len(versions(client.get(url))) == 7
    assert versions(client.get(url, params={"type": "NotificationReceived"})) == [
        (3, "NotificationReceived"),
        (5, "NotificationReceived"),
        (6, "NotificationReceived"),
    ]
    assert versions(client.get(url, params={"type": "PaymentSucceeded, RefundSucceeded"})) == [
        (4, "PaymentSucceeded"),
        (7, "RefundSucceeded"),
    ]
    # since_version is exclusive: "what happened after the version I last saw".
    assert versions(client.get(url, params={"since_version": "5"})) == [
        (6, "NotificationReceived"),
        (7, "RefundSucceeded"),
    ]
    assert versions(client.get(url, params={"since_version": "0"}))[0] == (1, "Opened")
    assert versions(client.get(url, params={"since_version": "3", "type": "NotificationReceived"})) == [
        (5, "NotificationReceived"),
        (6, "NotificationReceived"),
    ]
    # Nothing newer is an empty list for a known order, still 404 for an unknown one.
    assert versions(client.get(url, params={"since_version": "7"})) == []
    assert client.get("/orders/ORDER-8199/events", params={"since_version": "7"}).status_code == 404


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"type": "Paid"}, "type must be comma-separated event types"),
        ({"type": ""}, "type must be comma-separated event types"),
        ({"type": ",,"}, "type must be comma-separated event types"),
        ({"since_version": "-1"}, "since_version must be an integer of at least 0"),
        ({"since_version": "two"}, "since_version must be an integer of at least 0"),
        ({"since_version": "1.5"}, "since_version must be an integer of at least 0"),
        ({"since_version": "٣"}, "since_version must be an integer of at least 0"),
    ],
)
def test_events_filters_reject_bad_values_with_400(
    client: httpx.Client, factory: NotificationFactory, params: dict[str, str], message: str
) -> None:
    paid = factory.paid("ORDER-8102", 100)
    client.post("/wechatpay/notify", content=paid.body, headers=paid.headers)
    response = client.get("/orders/ORDER-8102/events", params=params)
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_REQUEST"
    assert response.json()["message"].startswith(message)
    if params.get("type") == "Paid":
        assert "PaymentSucceeded" in response.json()["message"]  # the message lists what is known


def test_as_of_version_replays_the_order_to_that_event(client: httpx.Client, factory: NotificationFactory) -> None:
    paid_retried_and_refunded(client, factory, "ORDER-8103")
    now = client.get("/orders/ORDER-8103").json()
    assert (now["trade_state"], now["refunded_total"], now["version"]) == ("REFUND", 30, 7)

    def as_of(version: int) -> dict[str, object]:
        response = client.get("/orders/ORDER-8103", params={"as_of_version": str(version)})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    registered = as_of(2)
    assert (registered["trade_state"], registered["amount_total"], registered["transaction_id"]) == (
        "NOTPAY",
        100,
        None,
    )
    assert registered["deliveries"] == 0 and registered["version"] == 2
    paid = as_of(4)
    assert (paid["trade_state"], paid["transaction_id"], paid["deliveries"]) == (
        "SUCCESS",
        "4200000000002104083200000777",
        1,
    )
    assert (paid["refunded_total"], paid["refunds"]) == (0, [])
    assert as_of(5)["deliveries"] == 2
    assert as_of(7) == now  # the same shape and content as the current state
    assert set(as_of(1)) == set(now)


@pytest.mark.parametrize(("value", "status"), [("0", 400), ("-2", 400), ("x", 400), ("2.0", 400), ("8", 404)])
def test_as_of_version_out_of_range(
    client: httpx.Client, factory: NotificationFactory, value: str, status: int
) -> None:
    paid_retried_and_refunded(client, factory, "ORDER-8104")
    response = client.get("/orders/ORDER-8104", params={"as_of_version": value})
    assert response.status_code == status
    if status == 404:
        assert response.json() == {"code": "NOT_FOUND", "message": "order has no such version"}
    else:
        assert response.json()["message"] == "as_of_version must be an integer of at least 1"
    assert client.get("/orders/ORDER-8199", params={"as_of_version": "1"}).status_code == 404
