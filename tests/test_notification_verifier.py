"""NotificationVerifier: raw bytes + headers in, verified and decrypted notification out ([protocol:
Notifications … Decrypting the resource; The order of checks])."""

from __future__ import annotations

import datetime as dt
import json
import time
from decimal import Decimal
from typing import Any

import pytest

from ledger.errors import DecryptionFailed, MalformedNotification, VerificationFailed
from ledger.wechatpay import aead
from ledger.wechatpay.keys import KeyStore, PlatformCertificate
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json

T = 1_790_000_000  # a fixed signing time for generated deliveries (public-key mode has no validity period)


@pytest.fixture(scope="module")
def platform_keys(vectors: dict[str, Any]) -> KeyStore:
    return KeyStore(certificates=[PlatformCertificate.from_pem(vectors["platform_certificate_pem"].encode())])


def vector_verifier(vector: dict[str, Any], keys: KeyStore, apiv3_key: str | None = None):
    key = (vector["apiv3_key"] if apiv3_key is None else apiv3_key).encode()
    return NotificationVerifier(keys, key, clock=lambda: vector["now"])


def frozen(factory: NotificationFactory) -> NotificationVerifier:
    return NotificationVerifier(factory.key_store(), factory.apiv3_key.encode(), clock=lambda: float(T))


def signed(factory: NotificationFactory, body: bytes) -> dict[str, str]:
    return factory.sign_headers(body, timestamp=T)


def has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(has_float(v) for v in value)
    return False


# -- the vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["D2_transaction_success_notification", "V1_payscore_notification_aes128"])
def test_vector_verifies_and_decrypts(vectors: dict[str, Any], platform_keys: KeyStore, name: str) -> None:
    """[protocol: The envelope; Verifying a signature; Decrypting the resource; Test vectors]: D2 (and V1 with
    its 16-byte test key) verify, parse and decrypt to the plaintext."""
    vector = vectors[name]
    body = vector["body"].encode()
    n = vector_verifier(vector, platform_keys).verify(vector["headers"], body)
    assert n.resource == json.loads(vector["plaintext"])
    assert n.envelope == json.loads(vector["body"])
    assert n.id == json.loads(vector["body"])["id"]
    assert n.event_type == json.loads(vector["body"])["event_type"]
    assert n.body == body
    assert n.key_serial == vectors["platform_certificate_serial"]
    assert n.headers.signature == vector["headers"]["Wechatpay-Signature"]
    assert n.received_at == dt.datetime.fromtimestamp(vector["now"], dt.UTC)


def test_d2_fields_keep_their_types(vectors: dict[str, Any], platform_keys: KeyStore) -> None:
    """[protocol: The payment resource]: transaction_id stays a 28-digit string, amounts are ints in fen,
    nothing is a float."""
    d2 = vectors["D2_transaction_success_notification"]
    n = vector_verifier(d2, platform_keys).verify(d2["headers"], d2["body"].encode())
    expected = json.loads(d2["plaintext"])
    assert n.resource["transaction_id"] == expected["transaction_id"]
    assert isinstance(n.resource["transaction_id"], str) and len(n.resource["transaction_id"]) == 28
    assert type(n.resource["amount"]["total"]) is int
    assert n.resource["amount"]["total"] == expected["amount"]["total"]
    assert n.resource["trade_state_desc"] == "支付成功"
    assert not has_float(n.resource) and not has_float(n.envelope)


def test_d2_lower_case_headers(vectors: dict[str, Any], platform_keys: KeyStore) -> None:
    """[protocol: The signature headers]: the verifier takes headers in any case (a framework's lower-cased mapping)."""
    d2 = vectors["D2_transaction_success_notification"]
    headers = {k.lower(): v for k, v in d2["headers"].items()}
    n = vector_verifier(d2, platform_keys).verify(headers, d2["body"].encode())
    assert n.id == "EV-2018022511223320873"


@pytest.mark.parametrize("apiv3_key", ["b" * 32, "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gc", "testMchAPIv3Key0"])
def test_d2_wrong_apiv3_key_is_decryption_failed(
    vectors: dict[str, Any], platform_keys: KeyStore, apiv3_key: str
) -> None:
    """[protocol: Decrypting the resource; Pitfalls] honourable mention: signed correctly but the tag fails ⇒
    our APIv3 key is wrong (500)."""
    d2 = vectors["D2_transaction_success_notification"]
    assert apiv3_key != d2["apiv3_key"]
    with pytest.raises(DecryptionFailed):
        vector_verifier(d2, platform_keys, apiv3_key).verify(d2["headers"], d2["body"].encode())


@pytest.mark.parametrize("offset", [-301, 301])
def test_d2_outside_window_is_verification_failed(
    vectors: dict[str, Any], platform_keys: KeyStore, offset: int
) -> None:
    """[protocol: The timestamp window; Derived vectors]: the same vector, 301 s off, is rejected before
    anything else."""
    d2 = dict(vectors["D2_transaction_success_notification"])
    d2["now"] += offset
    with pytest.raises(VerificationFailed):
        vector_verifier(d2, platform_keys).verify(d2["headers"], d2["body"].encode())


# -- verify before parse --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json at all", b"\xff\xfe{}", b"[1,2,3]", b'"a string"', b"", b"{"])
def test_signed_non_object_body_is_malformed(factory: NotificationFactory, body: bytes) -> None:
    """[protocol: The signed message; Parse and decrypt]: a correctly signed body that is not a JSON object is
    a 400, after verification."""
    with pytest.raises(MalformedNotification):
        frozen(factory).verify(signed(factory, body), body)


@pytest.mark.parametrize("body", [b"not json at all", b"\xff\xfe{}", b"{", b""])
def test_unsigned_garbage_is_verification_failed(
    vectors: dict[str, Any], platform_keys: KeyStore, factory: NotificationFactory, body: bytes
) -> None:
    """[protocol: The signed message] "verify before decrypting": garbage without a valid signature is 401,
    never 400."""
    d2 = vectors["D2_transaction_success_notification"]
    attempts = [
        (vector_verifier(d2, platform_keys), d2["headers"]),  # someone else's signature
        (frozen(factory), {}),  # no headers at all
        (frozen(factory), {**signed(factory, body), "Wechatpay-Signature": "WECHATPAY/SIGNTEST/x"}),  # probe
    ]
    for verifier, headers in attempts:
        with pytest.raises(VerificationFailed):
            verifier.verify(headers, body)


def test_notification_from_unrelated_key_is_rejected(
    factory: NotificationFactory, other_factory: NotificationFactory
) -> None:
    """[protocol: Which key signed it]: a body signed by another key, claiming our PUB_KEY_ID_, is rejected."""
    body = factory.envelope(factory.transaction("forged", 100))
    headers = other_factory.sign_headers(body, timestamp=T, serial=factory.public_key_id)
    with pytest.raises(VerificationFailed):
        frozen(factory).verify(headers, body)


# -- envelope checks after verification ----------------------------------------------------------


_DROP = object()


def _set(path: str, value: Any = _DROP):
    def change(envelope: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for name in parents:
            envelope = envelope[name]
        if value is _DROP:
            del envelope[last]
        else:
            envelope[last] = value

    return change


def _drop(path: str):
    return _set(path)


MALFORMED = {
    "no-resource": _drop("resource"),
    "resource-null": _set("resource", None),
    "resource-string": _set("resource", "encrypted"),
    "wrong-algorithm": _set("resource.algorithm", "AEAD_AES_128_GCM"),
    "no-algorithm": _drop("resource.algorithm"),
    "no-ciphertext": _drop("resource.ciphertext"),
    "empty-ciphertext": _set("resource.ciphertext", ""),
    "no-nonce": _drop("resource.nonce"),
    "numeric-aad": _set("resource.associated_data", 123),
    "no-id": _drop("id"),
    "numeric-id": _set("id", 42),
    "no-event-type": _drop("event_type"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_signed_but_malformed_envelope(factory: NotificationFactory, name: str) -> None:
    """[protocol: The envelope; Parse and decrypt]: a verified envelope lacking what WeChat always sends is a 400."""
    envelope = json.loads(factory.envelope(factory.transaction("malformed", 100)))
    MALFORMED[name](envelope)
    body = compact_json(envelope)
    with pytest.raises(MalformedNotification):
        frozen(factory).verify(signed(factory, body), body)


@pytest.mark.parametrize("plaintext", [b"not json", b"[1]", b"\xff\xfe", b'"x"'])
def test_resource_not_a_json_object_is_malformed(factory: NotificationFactory, plaintext: bytes) -> None:
    """[protocol: Decrypting the resource]: the decrypted resource must be a UTF-8 JSON object."""
    envelope = json.loads(factory.envelope(factory.transaction("bad-plaintext", 100)))
    resource = envelope["resource"]
    resource["ciphertext"] = aead.encrypt(
        factory.apiv3_key.encode(), resource["nonce"], resource["associated_data"], plaintext
    )
    body = compact_json(envelope)
    with pytest.raises(MalformedNotification):
        frozen(factory).verify(signed(factory, body), body)


@pytest.mark.parametrize("drop", [True, False], ids=["aad-missing", "aad-empty"])
def test_absent_or_empty_associated_data_means_empty_aad(factory: NotificationFactory, drop: bool) -> None:
    """[protocol: The envelope; Decrypting the resource]: associated_data may be "" (official refund example)
    or missing (PY3 substitutes "")."""
    resource = factory.refund("order-aad", "refund-aad", 50, 100)
    envelope = json.loads(factory.envelope(resource, "REFUND.SUCCESS", associated_data=""))
    if drop:
        del envelope["resource"]["associated_data"]
    body = compact_json(envelope)
    assert frozen(factory).verify(signed(factory, body), body).resource == resource


# -- decimals ---------------------------------------------------------------------------------------


def test_numbers_with_fractions_become_decimals(factory: NotificationFactory) -> None:
    """[protocol: Amounts, ids and times]: amounts never become floats; 4.2000012322021104e+27 keeps its
    digits as a Decimal."""
    resource = {**factory.transaction("decimal", 100), "rate": 0.1, "transaction_id": 4.2000012322021104e27}
    envelope = json.loads(factory.envelope(resource))
    body = compact_json({**envelope, "weight": 1.5})
    n = frozen(factory).verify(signed(factory, body), body)
    assert n.resource["rate"] == Decimal("0.1") and isinstance(n.resource["rate"], Decimal)
    assert n.resource["transaction_id"] == Decimal("4.2000012322021104E+27")
    assert n.envelope["weight"] == Decimal("1.5")
    assert type(n.resource["amount"]["total"]) is int
    assert not has_float(n.resource) and not has_float(n.envelope)


@pytest.mark.parametrize("constant", [float("nan"), float("inf"), float("-inf")], ids=["NaN", "Infinity", "-Infinity"])
def test_json_constants_never_become_floats(factory: NotificationFactory, constant: float) -> None:
    """[protocol: Amounts, ids and times]: NaN/Infinity are not JSON (RFC 8259); the verifier must reject them
    or keep them non-float."""
    resource = factory.transaction("constant", 100)
    resource["amount"]["payer_total"] = constant
    body = factory.envelope(resource)
    try:
        n = frozen(factory).verify(signed(factory, body), body)
    except MalformedNotification:
        return
    assert not has_float(n.resource), f"resource holds a float: {n.resource['amount']!r}"


# -- delivery identity and generated round trips -----------------------------------------------------


def test_delivery_key_differs_per_signing_and_matches_on_replay(factory: NotificationFactory) -> None:
    """[protocol: The signature headers; Retries and lost notifications]: WeChat re-signs each retry (new
    nonce/ts); a byte-identical replay keeps its key."""
    body = factory.envelope(factory.transaction("retry", 100))
    first = factory.deliver(body, timestamp=T)
    retry = factory.deliver(body, timestamp=T)
    verifier = frozen(factory)
    a, b = verifier.verify(first.headers, first.body), verifier.verify(retry.headers, retry.body)
    replay = verifier.verify(dict(first.headers), bytes(first.body))
    assert a.id == b.id == first.notification_id
    assert a.delivery_key != b.delivery_key
    assert a.delivery_key == replay.delivery_key
    assert a.resource_digest == b.resource_digest == replay.resource_digest
    other = factory.deliver(factory.envelope(factory.transaction("retry-2", 100)), timestamp=T)
    assert verifier.verify(other.headers, other.body).resource_digest != a.resource_digest


@pytest.mark.parametrize("mode", ["public-key", "certificate"])
def test_generated_payment_round_trips(factory: NotificationFactory, mode: str) -> None:
    """[protocol: The envelope; Event types; The payment resource]: a generated TRANSACTION.SUCCESS verifies
    in both key modes and decrypts exactly."""
    serial = factory.public_key_id if mode == "public-key" else factory.certificate_serial
    resource = factory.transaction("order-42", 1999)
    delivery = factory.deliver(factory.envelope(resource), serial=serial)
    n = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode(), clock=time.time).verify(
        delivery.headers, delivery.body
    )
    assert n.resource == resource
    assert n.event_type == "TRANSACTION.SUCCESS"
    assert n.id == delivery.notification_id
    assert n.key_serial == serial
    assert n.envelope["resource"]["original_type"] == "transaction"


@pytest.mark.parametrize("status", ["SUCCESS", "ABNORMAL", "CLOSED"])
def test_generated_refund_round_trips(factory: NotificationFactory, status: str) -> None:
    """[protocol: Event types; The refund resource]: REFUND.* notifications, AAD "refund", refund_status
    inside the resource."""
    resource = factory.refund("order-7", f"refund-{status}", 30, 100, refund_status=status)
    delivery = factory.deliver(factory.envelope(resource, f"REFUND.{status}"), timestamp=T)
    n = frozen(factory).verify(delivery.headers, delivery.body)
    assert n.resource == resource
    assert n.resource["refund_status"] == status
    assert n.event_type == f"REFUND.{status}"
    assert n.envelope["resource"]["associated_data"] == "refund"
    assert n.key_serial == factory.public_key_id


def test_generated_with_other_apiv3_key_is_decryption_failed(factory: NotificationFactory) -> None:
    """[protocol: Decrypting the resource]: WeChat encrypted with a key we do not have (key reset in the
    merchant console)."""
    body = factory.envelope(factory.transaction("reset-key", 100), apiv3_key="Z" * 32)
    with pytest.raises(DecryptionFailed):
        frozen(factory).verify(signed(factory, body), body)
