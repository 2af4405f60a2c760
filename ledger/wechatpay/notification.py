"""Inbound notifications: raw bytes and headers in, a verified and decrypted notification out.

The order is the protocol reference's [protocol: The order of checks]: signature headers, timestamp window,
key by serial, signature over the raw bytes; only then parse the envelope and decrypt the resource."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ledger.errors import MalformedNotification
from ledger.wechatpay import aead
from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.signature import TIMESTAMP_TOLERANCE, SignatureHeaders, verify_signed_message

__all__ = [
    "NotificationVerifier",
    "VerifiedNotification",
    "delivery_key",
    "open_envelope",
    "parse_json_object",
    "resource_digest",
]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constants)


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Strict UTF-8 JSON object; floats become Decimal so no amount is ever a float."""
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedNotification(f"{what} is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise MalformedNotification(f"{what} is not a JSON object")
    return value


def delivery_key(headers: SignatureHeaders, body: bytes) -> str:
    """Identity of one delivery: a byte-identical replay has the same key, a WeChat retry not."""
    h = hashlib.sha256()
    for part in (headers.timestamp, headers.nonce, headers.serial, headers.signature):
        h.update(part.encode())
        h.update(b"\n")
    h.update(body)
    return h.hexdigest()


def resource_digest(resource: dict[str, Any]) -> str:
    """What tells two deliveries of one notification id apart: the SHA-256 of the resource, canonical JSON."""
    canonical = json.dumps(resource, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class VerifiedNotification:
    """A notification whose signature verified and whose resource decrypted."""

    body: bytes
    headers: SignatureHeaders
    key_serial: str
    envelope: dict[str, Any]
    resource: dict[str, Any]
    received_at: dt.datetime

    @property
    def id(self) -> str:
        return str(self.envelope["id"])

    @property
    def event_type(self) -> str:
        return str(self.envelope["event_type"])

    @property
    def delivery_key(self) -> str:
        return delivery_key(self.headers, self.body)

    @property
    def resource_digest(self) -> str:
        return resource_digest(self.resource)


def open_envelope(body: bytes, apiv3_key: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The envelope of a (signature-checked) notification body and its decrypted resource."""
    envelope = parse_json_object(body, "body")
    resource = envelope.get("resource")
    if not isinstance(envelope.get("id"), str) or not envelope["id"]:
        raise MalformedNotification("envelope has no id")
    if not isinstance(envelope.get("event_type"), str) or not envelope["event_type"]:
        raise MalformedNotification("envelope has no event_type")
    if not isinstance(resource, dict):
        raise MalformedNotification("envelope has no resource object")
    fields: dict[str, str] = {}
    for name in ("algorithm", "ciphertext", "nonce"):
        value = resource.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedNotification(f"resource has no {name}")
        fields[name] = value
    if fields["algorithm"] != aead.ALGORITHM:
        raise MalformedNotification("unsupported resource algorithm")
    associated_data = resource.get("associated_data", "")
    if associated_data is None:
        associated_data = ""
    if not isinstance(associated_data, str):
        raise MalformedNotification("resource associated_data is not a string")
    plaintext = aead.decrypt(apiv3_key, fields["nonce"], associated_data, fields["ciphertext"])
    return envelope, parse_json_object(plaintext, "decrypted resource")


class NotificationVerifier:
    """Verifies notifications for one merchant: its keys and its APIv3 key."""

    def __init__(
        self,
        keys: KeyStore | Callable[[], KeyStore],
        apiv3_key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        tolerance: int = TIMESTAMP_TOLERANCE,
    ) -> None:
        # A callable sees certificate rotations; a KeyStore is fixed (tests, public-key mode).
        self._keys: Callable[[], KeyStore] = keys if callable(keys) else (lambda: keys)
        self._apiv3_key = apiv3_key
        self._clock = clock
        self._tolerance = tolerance

    def __repr__(self) -> str:
        return f"NotificationVerifier(keys={self._keys().serials!r}, apiv3_key=***)"

    def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedNotification:
        now = self._clock()
        signature_headers = SignatureHeaders.from_headers(headers)
        serial = verify_signed_message(signature_headers, body, self._keys(), now, self._tolerance)
        envelope, resource = open_envelope(body, self._apiv3_key)
        return VerifiedNotification(
            body=body,
            headers=signature_headers,
            key_serial=serial,
            envelope=envelope,
            resource=resource,
            received_at=dt.datetime.fromtimestamp(now, dt.UTC),
        )
