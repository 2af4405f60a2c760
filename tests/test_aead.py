"""AEAD_AES_256_GCM resource decryption ([protocol: Decrypting the resource; Test vectors]): vectors both
ways, failures typed."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from api.errors import answer_for
from ledger.errors import DecryptionFailed
from ledger.wechatpay.aead import decrypt, encrypt

# [protocol: Published vectors] V5 (GO utils/aes_test.go): a 16-byte key, so AES-128-GCM.
V5 = {
    "key": "testAPIv3Key0000",
    "nonce": "wCq51qZv4Yfg",
    "associated_data": "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
    "ciphertext_b64": "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC",
    "plaintext": "Hello World",
}


@pytest.fixture
def v3(vectors: dict[str, Any]) -> dict[str, Any]:
    return dict(vectors["V3_aes_gcm_32_byte_key"])


def resource_of(vector: dict[str, Any]) -> dict[str, str]:
    resource: dict[str, str] = json.loads(vector["body"])["resource"]
    return resource


def open_vector(v: dict[str, Any]) -> bytes:
    return decrypt(v["key"].encode(), v["nonce"], v["associated_data"], v["ciphertext_b64"])


def test_v3_decrypts(v3: dict[str, Any]) -> None:
    """[protocol: Decrypting the resource; Published vectors] V3: 32-byte APIv3 key, nonce and AAD used as
    UTF-8 bytes, tag appended."""
    assert open_vector(v3) == v3["plaintext"].encode()


def test_v3_encrypts_to_the_published_ciphertext(v3: dict[str, Any]) -> None:
    """[protocol: Decrypting the resource]: same key, nonce and AAD give the published ciphertext ‖ tag."""
    ciphertext = encrypt(v3["key"].encode(), v3["nonce"], v3["associated_data"], v3["plaintext"].encode())
    assert ciphertext == v3["ciphertext_b64"]
    assert len(base64.b64decode(ciphertext)) == len(v3["plaintext"]) + 16


def test_v3_published_must_fail_cases(v3: dict[str, Any]) -> None:
    """[protocol: Published vectors] V3: the vector's own negatives (wrong AAD, wrong nonce) raise DecryptionFailed."""
    assert v3["must_fail"], "vector lists no negatives"
    for entry in v3["must_fail"]:
        match = re.fullmatch(r"(\w+) '(.*)'", entry)
        assert match, f"unparseable must_fail entry {entry!r}"
        field, value = match.groups()
        assert field in v3
        with pytest.raises(DecryptionFailed):
            open_vector({**v3, field: value})


def test_v1_resource_decrypts_with_16_byte_key(vectors: dict[str, Any]) -> None:
    """[protocol: Published vectors] V1: the GO payscore notification uses a 16-byte key (AES-128), accepted
    by the primitive."""
    v1 = vectors["V1_payscore_notification_aes128"]
    resource = resource_of(v1)
    key = v1["apiv3_key"].encode()
    assert len(key) == 16
    plaintext = decrypt(key, resource["nonce"], resource["associated_data"], resource["ciphertext"])
    assert plaintext == v1["plaintext"].encode()


def test_d2_resource_decrypts_to_raw_utf8(vectors: dict[str, Any]) -> None:
    """[protocol: Decrypting the resource; Derived vectors] D2: the plaintext is compact JSON with raw UTF-8
    Chinese text."""
    d2 = vectors["D2_transaction_success_notification"]
    resource = resource_of(d2)
    plaintext = decrypt(
        d2["apiv3_key"].encode(), resource["nonce"], resource["associated_data"], resource["ciphertext"]
    )
    assert plaintext == d2["plaintext"].encode("utf-8")
    assert "支付成功".encode() in plaintext


def test_v5_decrypts() -> None:
    """[protocol: Published vectors] V5 (GO aes_test.go)."""
    assert open_vector(V5) == V5["plaintext"].encode()


@pytest.mark.parametrize(
    "change",
    [{"key": "testAPIv3Key1111"}, {"ciphertext_b64": "SGVsbG8gV29ybGQK"}, {"ciphertext_b64": "not base64 !"}],
    ids=["wrong-key", "not-a-gcm-ciphertext", "non-base64"],
)
def test_v5_must_fail_cases(change: dict[str, str]) -> None:
    """[protocol: Published vectors] V5: GO's own negatives."""
    with pytest.raises(DecryptionFailed):
        open_vector({**V5, **change})


def _flip(ciphertext: str, index: int) -> str:
    raw = bytearray(base64.b64decode(ciphertext))
    raw[index] ^= 0x80
    return base64.b64encode(bytes(raw)).decode()


def _cut(ciphertext: str, size: int) -> str:
    return base64.b64encode(base64.b64decode(ciphertext)[:size]).decode()


FAILURES = {
    "wrong-key": lambda v: {"key": v["key"][::-1]},
    "wrong-key-31-bytes": lambda v: {"key": v["key"][:31]},
    "wrong-key-16-bytes": lambda v: {"key": v["key"][:16]},
    "empty-key": lambda v: {"key": ""},
    "wrong-nonce": lambda v: {"nonce": v["nonce"][:-1] + "X"},
    "empty-nonce": lambda v: {"nonce": ""},
    "short-nonce": lambda v: {"nonce": "abc"},
    "non-ascii-nonce": lambda v: {"nonce": "随机数随机数随机数随机"},
    "wrong-aad": lambda v: {"associated_data": "transaction"},
    "empty-aad": lambda v: {"associated_data": ""},
    "tampered-ciphertext": lambda v: {"ciphertext_b64": _flip(v["ciphertext_b64"], 0)},
    "tampered-tag": lambda v: {"ciphertext_b64": _flip(v["ciphertext_b64"], -1)},
    "non-base64": lambda v: {"ciphertext_b64": "%%% not base64 %%%"},
    "non-ascii-base64": lambda v: {"ciphertext_b64": "密文" + v["ciphertext_b64"]},
    "bad-padding": lambda v: {"ciphertext_b64": v["ciphertext_b64"].rstrip("=")},
    "truncated-tag": lambda v: {"ciphertext_b64": _cut(v["ciphertext_b64"], -1)},
    "tag-only-part": lambda v: {"ciphertext_b64": _cut(v["ciphertext_b64"], 10)},
    "empty": lambda v: {"ciphertext_b64": ""},
    "extra-byte": lambda v: {
        "ciphertext_b64": base64.b64encode(base64.b64decode(v["ciphertext_b64"]) + b"\0").decode()
    },
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failures_raise_decryption_failed_only(v3: dict[str, Any], name: str) -> None:
    """[protocol: Decrypting the resource]: tag failure (wrong APIv3 key, nonce, AAD, tampering) and bad input
    are all DecryptionFailed."""
    broken = {**v3, **FAILURES[name](v3)}
    assert broken != v3
    with pytest.raises(DecryptionFailed) as exc:
        open_vector(broken)
    assert type(exc.value) is DecryptionFailed
    assert answer_for(exc.value).status == 500


@pytest.mark.parametrize("aad", ["", "transaction", "refund", "certificate"])
def test_round_trip_with_any_associated_data(aad: str) -> None:
    """[protocol: The envelope; Decrypting the resource]: AAD may be empty; nonce is 12 ASCII characters used
    verbatim; plaintext is UTF-8."""
    key = b"0123456789abcdef0123456789abcdef"
    plaintext = '{"trade_state_desc":"支付成功","amount":{"total":1}}'.encode()
    ciphertext = encrypt(key, "Kj7QIyUiYx1q", aad, plaintext)
    assert decrypt(key, "Kj7QIyUiYx1q", aad, ciphertext) == plaintext
    with pytest.raises(DecryptionFailed):
        decrypt(key, "Kj7QIyUiYx1q", aad + "x", ciphertext)
