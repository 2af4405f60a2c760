"""SHA256withRSA signatures ([protocol: Verifying a signature; Signing a request; Test vectors]): the
published vectors and the negatives."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
from typing import Any

import pytest

from ledger.errors import VerificationFailed
from ledger.wechatpay.keys import KeyStore, PlatformCertificate
from ledger.wechatpay.sandbox.signer import NotificationFactory
from ledger.wechatpay.signature import (
    SignatureHeaders,
    authorization_header,
    build_message,
    request_message,
    sign,
    verify,
    verify_signed_message,
)

HEADER_NAMES = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial")


@pytest.fixture(scope="module")
def certificate(vectors: dict[str, Any]) -> PlatformCertificate:
    return PlatformCertificate.from_pem(vectors["platform_certificate_pem"].encode())


@pytest.fixture(scope="module")
def keys(certificate: PlatformCertificate) -> KeyStore:
    return KeyStore(certificates=[certificate])


@pytest.fixture
def d2(vectors: dict[str, Any]) -> dict[str, Any]:
    return dict(vectors["D2_transaction_success_notification"])


def check(
    vector: dict[str, Any],
    keys: KeyStore,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    now: float | None = None,
) -> str:
    """Run the full [protocol: The order of checks] steps 2-5 on a vector, with optional replacements."""
    parsed = SignatureHeaders.from_headers(vector["headers"] if headers is None else headers)
    raw = vector["body"].encode() if body is None else body
    return verify_signed_message(parsed, raw, keys, vector["now"] if now is None else now)


def with_header(vector: dict[str, Any], name: str, value: str | None) -> dict[str, str]:
    headers = dict(vector["headers"])
    if value is None:
        del headers[name]
    else:
        headers[name] = value
    return headers


# -- vectors ------------------------------------------------------------------------------------


def test_certificate_serial_matches_the_published_one(vectors: dict[str, Any], certificate) -> None:
    """[protocol: Which key signed it; Comparing serials]: the serial is the certificate's X.509 serial as
    uppercase hex."""
    assert certificate.serial == vectors["platform_certificate_serial"]


@pytest.mark.parametrize("name", ["D2_transaction_success_notification", "V1_payscore_notification_aes128"])
def test_vector_notification_verifies_at_its_now(vectors: dict[str, Any], keys: KeyStore, name: str) -> None:
    """[protocol: The signed message; Test vectors]: the published notifications verify with the platform
    certificate."""
    vector = vectors[name]
    assert vector["signature_valid"] is True
    assert check(vector, keys) == vectors["platform_certificate_serial"]


def test_d1_signature_verifies_with_certificate_key(vectors: dict[str, Any], certificate) -> None:
    """[protocol: Derived vectors] D1: the Authorization signature is SHA256withRSA over the five-line request
    message."""
    d1 = vectors["D1_authorization_signature"]
    message = d1["signed_message"].encode()
    assert verify(certificate.public_key, message, d1["signature"]) is True
    assert verify(certificate.public_key, message.replace(b"GET", b"PUT"), d1["signature"]) is False


def test_request_message_reproduces_d1(vectors: dict[str, Any]) -> None:
    """[protocol: Signing a request; Derived vectors] D1: METHOD, canonical URL, ts, nonce, empty body; each
    line LF-terminated."""
    d1 = vectors["D1_authorization_signature"]
    # [protocol: Derived vectors] D1
    url = "/v3/pay/transactions/out-trade-no/1217752501201407033233368018?mchid=1230000109"
    message = request_message("get", url, d1["timestamp"], d1["nonce_str"], b"")
    assert message == d1["signed_message"].encode()


def test_request_message_keeps_trailing_newline_of_body() -> None:
    """[protocol: Published vectors] V8 (GO credential test): a body ending in LF still gets the extra LF."""
    message = request_message("POST", "/v3/certificates", "1624523846", "A1B2C3D4E5F6G7", b"Hello World!\n")
    assert message == b"POST\n/v3/certificates\n1624523846\nA1B2C3D4E5F6G7\nHello World!\n\n"


def test_build_message_with_empty_body() -> None:
    """[protocol: The signed message]: an empty body gives ``ts\\nnonce\\n\\n`` (GO validator_test "without body")."""
    assert build_message("ts", "NONCE1234567890", b"") == b"ts\nNONCE1234567890\n\n"


def test_authorization_header_format(vectors: dict[str, Any]) -> None:
    """[protocol: Signing a request]: scheme, a space, then comma-separated key="value" pairs, no spaces, one line."""
    d1 = vectors["D1_authorization_signature"]
    header = authorization_header(
        mchid=d1["mchid"],
        serial_no=d1["serial_no"],
        timestamp=d1["timestamp"],
        nonce=d1["nonce_str"],
        signature=d1["signature"],
    )
    scheme, params = header.split(" ", 1)
    assert scheme == "WECHATPAY2-SHA256-RSA2048"
    pairs = re.findall(r'([a-z_]+)="([^"]*)"', params)
    assert params == ",".join(f'{k}="{v}"' for k, v in pairs)
    assert dict(pairs) == {
        "mchid": d1["mchid"],
        "nonce_str": d1["nonce_str"],
        "timestamp": d1["timestamp"],
        "serial_no": d1["serial_no"],
        "signature": d1["signature"],
    }
    assert "\n" not in header and len(pairs) == 5


def test_sign_and_verify_round_trip(factory: NotificationFactory, other_factory: NotificationFactory) -> None:
    """[protocol: The signed message]: PKCS#1 v1.5 + SHA-256, standard base64 with padding, 256-byte signature."""
    message = build_message("1624523846", "nonce", '{"a":"支付成功"}'.encode())
    signature = sign(factory.private_key, message)
    assert len(base64.b64decode(signature, validate=True)) == 256
    assert verify(factory.private_key.public_key(), message, signature) is True
    assert verify(other_factory.private_key.public_key(), message, signature) is False
    assert verify(factory.private_key.public_key(), message + b" ", signature) is False


# -- negatives ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reserialise",
    [
        lambda obj: json.dumps(obj),  # spaces and \u escapes
        lambda obj: json.dumps(obj, ensure_ascii=False),  # only spaces after ':' and ','
        lambda obj: json.dumps(obj, separators=(",", ":")),  # compact but \u escapes
        lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n",  # trailing LF
    ],
    ids=["default", "spaces", "escaped", "trailing-newline"],
)
def test_reserialised_body_fails(d2: dict[str, Any], keys: KeyStore, reserialise) -> None:
    """[protocol: How a notification arrives; Re-serialised bodies; Derived vectors] negatives: verification
    is on the raw bytes, never a re-serialisation."""
    body = reserialise(json.loads(d2["body"])).encode()
    assert body != d2["body"].encode()
    with pytest.raises(VerificationFailed):
        check(d2, keys, body=body)


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamp_within_300_seconds_passes(d2: dict[str, Any], keys: KeyStore, offset: int) -> None:
    """[protocol: The timestamp window; Check the timestamp]: abs(now - ts) <= 300 is accepted (300 inclusive)."""
    assert check(d2, keys, now=d2["now"] + offset) == "D7CE59D1F522D701"


@pytest.mark.parametrize("offset", [-301, 301, -86400, 86400])
def test_timestamp_outside_300_seconds_fails(d2: dict[str, Any], keys: KeyStore, offset: int) -> None:
    """[protocol: The timestamp window; Derived vectors]: ts more than 300 s in the past or in the future is
    rejected."""
    with pytest.raises(VerificationFailed) as exc:
        check(d2, keys, now=d2["now"] + offset)
    assert "timestamp" in exc.value.reason


@pytest.mark.parametrize(
    "timestamp",
    [
        "1624523846.0",
        "-1624523846",
        "+1624523846",
        " 1624523846",
        "0x60d4",
        "١٦٢٤٥٢٣٨٤٦",
        "",
        "9" * 400,
        "9" * 5000,
    ],
    ids=[
        "decimal",
        "negative",
        "plus",
        "space",
        "hex",
        "arabic-digits",
        "empty",
        "400-digits",
        "5000-digits",
    ],
)
def test_non_integer_or_absurd_timestamp_fails_as_verification(
    d2: dict[str, Any], keys: KeyStore, timestamp: str
) -> None:
    """[protocol: The timestamp window]: a non-integer timestamp is a verification failure (401), never
    another exception.

    The clock is a float, as `time.time()` is in production.
    """
    with pytest.raises(VerificationFailed):
        check(d2, keys, headers=with_header(d2, "Wechatpay-Timestamp", timestamp), now=float(d2["now"]))


def test_probe_signature_fails_as_verification(
    d2: dict[str, Any], keys: KeyStore, factory: NotificationFactory
) -> None:
    """[protocol: Signature probes]: a WECHATPAY/SIGNTEST/ probe is an ordinary failure (4XX), not a decode crash."""
    with pytest.raises(VerificationFailed):
        check(d2, keys, headers=with_header(d2, "Wechatpay-Signature", "WECHATPAY/SIGNTEST/" + "A1b-_=" * 9))
    probe = factory.probe(factory.paid("probe-order", 1))
    assert probe.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    with pytest.raises(VerificationFailed):
        verify_signed_message(
            SignatureHeaders.from_headers(probe.headers),
            probe.body,
            factory.key_store(),
            int(probe.headers["Wechatpay-Timestamp"]),
        )


def _tamper(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[100] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "this is not base64!",
        lambda s: s[:-4],  # valid base64 of 255 bytes
        lambda s: s[:100],
        lambda s: s.rstrip("="),  # padding removed
        lambda s: s[:-2] + "A=",  # last unit with too many bits
        lambda s: "签名" + s[2:],
        _tamper,
        lambda s: base64.b64encode(bytes(256)).decode(),
        lambda s: s + s,
    ],
    ids=[
        "non-base64",
        "truncated-4",
        "truncated-100",
        "unpadded",
        "bad-last-unit",
        "non-ascii",
        "bit-flip",
        "zeros",
        "doubled",
    ],
)
def test_bad_signature_fails(d2: dict[str, Any], keys: KeyStore, mangle) -> None:
    """[protocol: The signed message; Verify the signature]: base64 errors and wrong signatures are
    verification failures."""
    signature = mangle(d2["headers"]["Wechatpay-Signature"])
    with pytest.raises(VerificationFailed):
        check(d2, keys, headers=with_header(d2, "Wechatpay-Signature", signature))


@pytest.mark.parametrize(
    "serial",
    ["F5765756002FDD77", "PUB_KEY_ID_0000000000000024101100397200000006", "not-a-serial", "D7CE59D1F522D70"],
)
def test_unknown_serial_fails(d2: dict[str, Any], keys: KeyStore, serial: str) -> None:
    """[protocol: Which key signed it; Pick the key by serial]: an unknown serial is a failure (the merchant
    cert serial is not a platform one)."""
    with pytest.raises(VerificationFailed) as exc:
        check(d2, keys, headers=with_header(d2, "Wechatpay-Serial", serial))
    assert "serial" in exc.value.reason


@pytest.mark.parametrize("value", ["WECHATPAY-BRAND-SHA256-RSA2048", "HMAC-SHA256", "SM2"])
def test_wrong_signature_type_fails(d2: dict[str, Any], keys: KeyStore, value: str) -> None:
    """[protocol: The signature headers; Require the signature headers]: Wechatpay-Signature-Type other than
    WECHATPAY2-SHA256-RSA2048 fails."""
    with pytest.raises(VerificationFailed):
        check(d2, keys, headers=with_header(d2, "Wechatpay-Signature-Type", value))


def test_absent_signature_type_passes(d2: dict[str, Any], keys: KeyStore) -> None:
    """[protocol: The signature headers; Require the signature headers]: GO/JAVA default the type when absent."""
    assert check(d2, keys, headers=with_header(d2, "Wechatpay-Signature-Type", None)) == "D7CE59D1F522D701"


@pytest.mark.parametrize("name", HEADER_NAMES)
@pytest.mark.parametrize("value", [None, ""], ids=["absent", "empty"])
def test_missing_header_fails(d2: dict[str, Any], keys: KeyStore, name: str, value: str | None) -> None:
    """[protocol: Require the signature headers]: all four Wechatpay-* headers are required."""
    with pytest.raises(VerificationFailed):
        check(d2, keys, headers=with_header(d2, name, value))


@pytest.mark.parametrize("case", [str.lower, str.upper, str.swapcase], ids=["lower", "upper", "swap"])
def test_header_names_are_case_insensitive(d2: dict[str, Any], keys: KeyStore, case) -> None:
    """[protocol: The signature headers]: header lookup is case-insensitive (FastAPI lower-cases, WSGI upper-cases)."""
    headers = {case(k): v for k, v in d2["headers"].items()}
    assert set(headers).isdisjoint(d2["headers"])
    assert check(d2, keys, headers=headers) == "D7CE59D1F522D701"
    assert SignatureHeaders.from_headers(headers).signature_type == "WECHATPAY2-SHA256-RSA2048"


@pytest.mark.parametrize("serial", ["d7ce59d1f522d701", "00D7CE59D1F522D701", "00d7Ce59D1f522d701"])
def test_serial_is_normalised(d2: dict[str, Any], keys: KeyStore, serial: str) -> None:
    """[protocol: Comparing serials]: lowercase hex and leading zeros select the same certificate; the
    uppercase form is returned."""
    assert check(d2, keys, headers=with_header(d2, "Wechatpay-Serial", serial)) == "D7CE59D1F522D701"


@pytest.mark.parametrize("start_days", [-60, 10], ids=["expired", "not-yet-valid"])
def test_certificate_outside_validity_fails(start_days: int) -> None:
    """[protocol: Which key signed it]: only currently valid platform certificates verify; the same key by
    public-key id still does."""
    now = time.time()
    start = dt.datetime.fromtimestamp(now, dt.UTC) + dt.timedelta(days=start_days)
    wechat = NotificationFactory().with_certificate(days=30, start=start)
    body = wechat.envelope(wechat.transaction("order-1", 100))
    by_cert = wechat.deliver(body, timestamp=int(now), serial=wechat.certificate_serial)
    with pytest.raises(VerificationFailed):
        verify_signed_message(SignatureHeaders.from_headers(by_cert.headers), body, wechat.key_store(), now)
    by_key = wechat.deliver(body, timestamp=int(now))
    headers = SignatureHeaders.from_headers(by_key.headers)
    assert verify_signed_message(headers, body, wechat.key_store(), now) == wechat.public_key_id


def test_public_key_and_certificate_modes_at_once(
    factory: NotificationFactory, other_factory: NotificationFactory
) -> None:
    """[protocol: Which key signed it] migration: PUB_KEY_ID_ and platform-certificate serials are both
    accepted, each by its key."""
    keys = factory.key_store()
    body = factory.envelope(factory.transaction("both-modes", 100))
    now = time.time()
    for serial in (factory.public_key_id, factory.certificate_serial):
        delivery = factory.deliver(body, timestamp=int(now), serial=serial)
        headers = SignatureHeaders.from_headers(delivery.headers)
        assert verify_signed_message(headers, body, keys, now) == serial
        forged = other_factory.deliver(body, timestamp=int(now), serial=serial)
        with pytest.raises(VerificationFailed):
            verify_signed_message(SignatureHeaders.from_headers(forged.headers), body, keys, now)
