"""SHA256withRSA signatures as WeChat Pay APIv3 uses them ([protocol: Verifying a signature; Signing a
request; Verifying an answer]).

Notifications and API responses are verified over ``ts\\nnonce\\nbody\\n`` on the raw body
bytes; our own requests are signed over ``METHOD\\nURL\\nts\\nnonce\\nbody\\n``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from ledger.errors import SignatureProbe, StaleTimestamp, VerificationFailed
from ledger.wechatpay.keys import KeyStore

__all__ = [
    "PROBE_PREFIX",
    "SIGNATURE_TYPE",
    "TIMESTAMP_TOLERANCE",
    "SignatureHeaders",
    "authorization_header",
    "build_message",
    "new_nonce",
    "request_message",
    "sign",
    "verify",
    "verify_signed_message",
]

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
TIMESTAMP_TOLERANCE = 300
PROBE_PREFIX = "WECHATPAY/SIGNTEST/"


def build_message(*parts: bytes | str) -> bytes:
    """Join parts as LF-terminated lines, the body kept byte for byte."""
    out = bytearray()
    for part in parts:
        out += part.encode() if isinstance(part, str) else part
        out += b"\n"
    return bytes(out)


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return build_message(method.upper(), url, timestamp, nonce, body)


def sign(private_key: RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(public_key: RSAPublicKey, message: bytes, signature: str) -> bool:
    """True when `signature` (base64) is a valid signature of `message`; never raises."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    if len(raw) * 8 != public_key.key_size:
        return False
    try:
        public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def new_nonce(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def authorization_header(*, mchid: str, serial_no: str, timestamp: str, nonce: str, signature: str) -> str:
    return (
        f'{SIGNATURE_TYPE} mchid="{mchid}",nonce_str="{nonce}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}",signature="{signature}"'
    )


@dataclass(frozen=True, slots=True)
class SignatureHeaders:
    """The ``Wechatpay-*`` headers of a notification or response, exactly as received."""

    timestamp: str
    nonce: str
    signature: str
    serial: str
    signature_type: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignatureHeaders:
        lowered = {k.lower(): v for k, v in headers.items()}

        def need(name: str) -> str:
            value = lowered.get(name.lower())
            if not value:
                raise VerificationFailed(f"missing header {name}", reason="missing signature headers")
            return value

        return cls(
            timestamp=need("Wechatpay-Timestamp"),
            nonce=need("Wechatpay-Nonce"),
            signature=need("Wechatpay-Signature"),
            serial=need("Wechatpay-Serial"),
            signature_type=lowered.get("wechatpay-signature-type"),
        )

    def as_dict(self) -> dict[str, str]:
        out = {
            "Wechatpay-Timestamp": self.timestamp,
            "Wechatpay-Nonce": self.nonce,
            "Wechatpay-Signature": self.signature,
            "Wechatpay-Serial": self.serial,
        }
        if self.signature_type is not None:
            out["Wechatpay-Signature-Type"] = self.signature_type
        return out

    @property
    def is_probe(self) -> bool:
        return self.signature.startswith(PROBE_PREFIX)


def verify_signed_message(
    headers: SignatureHeaders,
    body: bytes,
    keys: KeyStore,
    now: float,
    tolerance: int = TIMESTAMP_TOLERANCE,
) -> str:
    """Check type, freshness, key and signature; return the normalised serial that verified.

    The order follows [protocol: The order of checks]: cheap checks first, and nothing of the body is parsed here.
    """
    if headers.signature_type is not None and headers.signature_type != SIGNATURE_TYPE:
        raise VerificationFailed(
            f"unsupported signature type {headers.signature_type[:64]!r}",
            reason="unsupported signature type",
        )
    ts = headers.timestamp
    if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
        raise VerificationFailed("timestamp is not an integer", reason="bad timestamp")
    # Whole seconds on both sides: WeChat signs with integer seconds.
    if abs(int(now) - int(headers.timestamp)) > tolerance:
        raise StaleTimestamp(f"timestamp {headers.timestamp} outside ±{tolerance}s of {int(now)}")
    if headers.is_probe:
        raise SignatureProbe("signature probe")
    serial, public_key = keys.lookup(headers.serial, now)
    message = build_message(headers.timestamp, headers.nonce, body)
    if not verify(public_key, message, headers.signature):
        raise VerificationFailed("signature does not match", reason="signature verification failed")
    return serial
