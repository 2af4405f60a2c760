"""POST /wechatpay/notify through the real app: 204 only after the events are stored."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from ledger.application import Ledger, build_ledger
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.constants import MCHID
from tests.support.servers import serve


@pytest.fixture
def make_client(merchant_env: dict[str, str], sqlite_url: str) -> Iterator[Callable[..., tuple[httpx.Client, Ledger]]]:
    with contextlib.ExitStack() as stack:

        def make(
            database_url: str = sqlite_url, clock: Callable[[], float] = time.time, **extra: str
        ) -> tuple[httpx.Client, Ledger]:
            settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url, **extra})
            ledger = build_ledger(database_url)
            stack.callback(ledger.close)
            return stack.enter_context(serve(create_app(settings, ledger=ledger, clock=clock))), ledger

        yield make


def post(client: httpx.Client, delivery: Delivery, path: str = "/wechatpay/notify") -> Any:
    return client.post(path, content=delivery.body, headers=delivery.headers)


def stored(ledger: Ledger, out_trade_no: str) -> list[str]:
    try:
        return [e["type"] for e in ledger.order_history(MCHID, out_trade_no)]
    except Exception:
        return []


def test_verified_payment_is_answered_204_with_no_body_after_storing(
    make_client: Any, factory: NotificationFactory
) -> None:
    client, ledger = make_client()
    response = post(client, factory.paid("ORDER-2001", 100))
    assert response.status_code == 204
    assert response.content == b""
    assert stored(ledger, "ORDER-2001") == ["Opened", "NotificationReceived", "PaymentSucceeded"]


def test_byte_identical_replay_is_acknowledged_without_a_new_event(
    make_client: Any, factory: NotificationFactory
) -> None:
    client, ledger = make_client()
    delivery = factory.paid("ORDER-2002", 100)
    assert post(client, delivery).status_code == 204
    assert post(client, delivery).status_code == 204
    assert post(client, factory.deliver(delivery.body)).status_code == 204  # a re-signed retry
    assert stored(ledger, "ORDER-2002").count("NotificationReceived") == 2
    assert stored(ledger, "ORDER-2002").count("PaymentSucceeded") == 1


def test_platform_certificate_serial_is_accepted_too(make_client: Any, factory: NotificationFactory) -> None:
    """[protocol: Which key signed it]: both modes at once during the migration."""
    client, ledger = make_client()
    delivery = factory.deliver(
        factory.envelope(factory.transaction("ORDER-2003", 100)), serial=factory.certificate_serial
    )
    assert post(client, delivery).status_code == 204
    assert "PaymentSucceeded" in stored(ledger, "ORDER-2003")


def _reserialised(delivery: Delivery) -> Delivery:
    return Delivery(json.dumps(json.loads(delivery.body), ensure_ascii=False).encode(), delivery.headers, "")


def _without(header: str) -> Callable[[Delivery], Delivery]:
    return lambda d: Delivery(d.body, {k: v for k, v in d.headers.items() if k != header}, "")


@pytest.mark.parametrize(
    ("name", "spoil"),
    [
        ("[protocol: Re-serialised bodies] re-serialised body", _reserialised),
        ("[protocol: Signature probes] probe", lambda d: NotificationFactory.probe(None, d)),  # type: ignore[arg-type]
        ("[protocol: The signed message] missing signature", _without("Wechatpay-Signature")),
        ("[protocol: The signed message] missing timestamp", _without("Wechatpay-Timestamp")),
        ("[protocol: The signed message] missing nonce", _without("Wechatpay-Nonce")),
        ("[protocol: Which key signed it] missing serial", _without("Wechatpay-Serial")),
        (
            "[protocol: Which key signed it] unknown serial",
            lambda d: Delivery(d.body, {**d.headers, "Wechatpay-Serial": "PUB_KEY_ID_9"}, ""),
        ),
        (
            "[protocol: The signature headers] wrong signature type",
            lambda d: Delivery(d.body, {**d.headers, "Wechatpay-Signature-Type": "HMAC-SHA256"}, ""),
        ),
        (
            "[protocol: The signed message] bad base64",
            lambda d: Delivery(d.body, {**d.headers, "Wechatpay-Signature": "%%%"}, ""),
        ),
    ],
)
def test_verification_failures_are_401_fail_and_store_nothing(
    make_client: Any, factory: NotificationFactory, name: str, spoil: Callable[[Delivery], Delivery]
) -> None:
    client, ledger = make_client()
    response = post(client, spoil(factory.paid("ORDER-2004", 100)))
    assert response.status_code == 401, name
    assert response.json()["code"] == "FAIL"
    assert stored(ledger, "ORDER-2004") == []


@pytest.mark.parametrize(("skew", "status"), [(-301, 401), (301, 401), (-300, 204), (300, 204)])
def test_timestamp_window_is_plus_minus_300_seconds(
    make_client: Any, factory: NotificationFactory, skew: int, status: int
) -> None:
    """[protocol: The timestamp window]: abs(now - ts) <= 300 is accepted, 301 is not."""
    now = 1_795_000_000
    client, ledger = make_client(clock=lambda: now + 0.999)
    body = factory.envelope(factory.transaction("ORDER-2005", 100))
    response = post(client, factory.deliver(body, timestamp=now + skew))
    assert response.status_code == status
    assert ("PaymentSucceeded" in stored(ledger, "ORDER-2005")) == (status == 204)


def test_signed_notification_signed_by_another_key_fails(
    make_client: Any, factory: NotificationFactory, other_factory: NotificationFactory
) -> None:
    client, _ = make_client()
    delivery = other_factory.deliver(
        factory.envelope(factory.transaction("ORDER-2006", 100)), serial=factory.public_key_id
    )
    assert post(client, delivery).status_code == 401


def test_wrong_apiv3_key_is_500_logged_loudly_and_stores_nothing(
    make_client: Any, factory: NotificationFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client, ledger = make_client()
    body = factory.envelope(factory.transaction("ORDER-2007", 100), apiv3_key="X" * 32)
    with caplog.at_level(logging.ERROR):
        response = post(client, factory.deliver(body))
    assert response.status_code == 500
    assert response.json() == {"code": "FAIL", "message": "resource decryption failed"}
    assert stored(ledger, "ORDER-2007") == []
    assert any("WECHATPAY_APIV3_KEY" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert factory.apiv3_key not in caplog.text


def test_malformed_envelope_is_400(make_client: Any, factory: NotificationFactory) -> None:
    client, _ = make_client()
    for body in [b"not json", b"[]", b'{"id":"x","event_type":"TRANSACTION.SUCCESS"}']:
        response = post(client, Delivery(body, factory.sign_headers(body), ""))
        assert response.status_code == 400
        assert response.json()["code"] == "FAIL"


def test_body_above_the_limit_is_413(make_client: Any, factory: NotificationFactory) -> None:
    client, _ = make_client(LEDGER_MAX_BODY_BYTES="2048")
    body = b'{"id":"' + b"x" * 4096 + b'"}'
    response = post(client, Delivery(body, factory.sign_headers(body), ""))
    assert response.status_code == 413
    assert response.json()["code"] == "FAIL"


def test_other_event_types_are_acknowledged_and_recorded(make_client: Any, factory: NotificationFactory) -> None:
    client, ledger = make_client()
    body = factory.envelope({"mchid": MCHID, "complaint_id": "200201820200101080076610000"}, "COMPLAINT.CREATE")
    delivery = factory.deliver(body)
    assert post(client, delivery).status_code == 204
    assert [e["type"] for e in ledger.inbox_history(MCHID, delivery.notification_id)] == [
        "Opened",
        "NotificationReceived",
    ]


def test_notify_by_mchid_routes_to_that_merchant(
    merchant_env: dict[str, str],
    other_factory: NotificationFactory,
    factory: NotificationFactory,
    tmp_path: Path,
    sqlite_url: str,
) -> None:
    second = NotificationFactory(mchid="1900000222", appid="wx1111111111111111")
    env2 = second.write_keys(tmp_path / "second")
    config = tmp_path / "ledger.toml"
    config.write_text("[[merchants]]\n" + "".join(f'{k} = "{v}"\n' for k, v in env2.items()))
    settings = Settings.load({**merchant_env, "LEDGER_CONFIG": str(config), "LEDGER_DATABASE_URL": sqlite_url})
    ledger = build_ledger(sqlite_url)
    with serve(create_app(settings, ledger=ledger)) as client:
        ok = second.paid("ORDER-2008", 100)
        assert post(client, ok, "/wechatpay/notify/1900000222").status_code == 204
        assert post(client, ok, "/wechatpay/notify").status_code == 401  # not the default merchant's key
        assert post(client, ok, "/wechatpay/notify/1900000999").status_code == 404
    assert ledger.get_order("1900000222", "ORDER-2008").trade_state == "SUCCESS"


def test_unexpected_errors_never_leak_their_text(
    merchant_env: dict[str, str], factory: NotificationFactory, sqlite_url: str
) -> None:
    class Broken(Ledger):
        def save(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret-internal-detail")

        save_all = save

    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": sqlite_url})
    from ledger.store.backends import persistence_env

    with serve(create_app(settings, ledger=Broken(env=persistence_env(sqlite_url)))) as client:
        response = post(client, factory.paid("ORDER-2009", 100))
    assert response.status_code == 500
    assert "secret-internal-detail" not in response.text
    assert response.json()["code"] == "FAIL"
