"""Standard Webhooks signing, checked by a verifier written from the specification alone
(tests/support/webhooks.py; its own refusals are tested here too)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from projections.webhooks.schema import outbox_url
from projections.webhooks.signing import generate_secret, headers, parse_secret, payload, sign
from tests.support.webhooks import TOLERANCE, InvalidWebhook, verify

BODY = payload(
    "PaymentSucceeded",
    dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8))),
    {"out_trade_no": "ORDER-0001", "mchid": "1900000109", "trade_state": "SUCCESS", "description": "咖啡"},
)


def test_the_published_test_vector_reproduces_exactly() -> None:
    body = b'{"test": 2432232314}'
    signature = sign(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_signed_body_verifies_independently_and_has_the_standard_shape() -> None:
    secret = generate_secret()
    sent = headers([secret], "msg_1", 1_800_000_000, BODY)
    document = verify(secret, sent, BODY, now=1_800_000_010)
    assert document == {
        "type": "PaymentSucceeded",
        "timestamp": "2026-11-27T02:00:00.123456Z",
        "data": {"out_trade_no": "ORDER-0001", "mchid": "1900000109", "trade_state": "SUCCESS", "description": "咖啡"},
    }
    assert "咖啡".encode() in BODY and b", " not in BODY  # UTF-8, compact


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"secret": "other"}, "no matching signature"),
        ({"body": BODY.replace(b"ORDER-0001", b"ORDER-0002")}, "no matching signature"),
        ({"now": 1_800_000_000 + TOLERANCE + 1}, "timestamp outside"),
        ({"msg_id": "msg_2"}, "no matching signature"),
    ],
)
def test_the_verifier_rejects_a_wrong_secret_a_tampered_body_an_old_timestamp_and_another_id(
    change: dict[str, Any], problem: str
) -> None:
    secret, other = generate_secret(), generate_secret()
    sent = headers([secret], "msg_1", 1_800_000_000, BODY)
    if "msg_id" in change:
        sent["webhook-id"] = change["msg_id"]
    with pytest.raises(InvalidWebhook, match=problem):
        verify(
            other if "secret" in change else secret,
            sent,
            change.get("body", BODY),
            now=change.get("now", 1_800_000_000),
        )


def test_during_rotation_each_secret_verifies_on_its_own() -> None:
    old, new, unrelated = generate_secret(), generate_secret(), generate_secret()
    sent = headers([new, old], "msg_1", 1_800_000_000, BODY)
    assert sent["webhook-signature"].count("v1,") == 2
    assert verify(old, sent, BODY, now=1_800_000_000)["type"] == "PaymentSucceeded"
    assert verify(new, sent, BODY, now=1_800_000_000)["type"] == "PaymentSucceeded"
    with pytest.raises(InvalidWebhook):
        verify(unrelated, sent, BODY, now=1_800_000_000)


def test_secrets_are_whsec_with_enough_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(parse_secret(first)) == 24
    for bad in (
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),
    ):
        with pytest.raises(ValueError) as caught:
            parse_secret(bad)
        assert bad not in str(caught.value)


def test_payload_needs_an_aware_timestamp() -> None:
    with pytest.raises(ValueError):
        payload("PaymentSucceeded", dt.datetime(2026, 11, 27, 10, 0), {})


def test_the_outbox_sits_beside_a_sqlite_ledger_and_inside_a_postgresql_one(tmp_path: Any) -> None:
    assert outbox_url(f"sqlite:///{tmp_path}/ledger.sqlite3") == f"sqlite:///{tmp_path}/ledger.outbox.sqlite3"
    assert outbox_url("sqlite:///payledger.sqlite3") == "sqlite:///payledger.outbox.sqlite3"
    pg = "postgresql://u:p@db:5432/ledger?schema=pay"
    assert outbox_url(pg) == pg
