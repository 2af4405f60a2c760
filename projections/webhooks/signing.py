"""The Standard Webhooks convention: secrets, signatures and the payload shape.

A secret is ``whsec_`` followed by base64 key bytes. Each request carries ``webhook-id``
(stable across retries), ``webhook-timestamp`` (Unix seconds, fresh per attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one per secret,
space-separated, so a receiver keeps verifying while a secret is being rotated.
See https://www.standardwebhooks.com/.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets as _random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SECRET_PREFIX", "generate_secret", "headers", "parse_secret", "payload", "sign"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix every secret carries, not a secret
_MIN_KEY, _MAX_KEY = 24, 64  # bytes, as the specification recommends


def generate_secret() -> str:
    """A new ``whsec_`` secret holding 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(_MIN_KEY)).decode("ascii")


def parse_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; `ValueError` (never quoting it) otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a webhook secret must be {SECRET_PREFIX} followed by base64") from None
    if not _MIN_KEY <= len(key) <= _MAX_KEY:
        raise ValueError(f"a webhook secret must hold {_MIN_KEY} to {_MAX_KEY} key bytes")
    return key


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<sig>`` for each secret, space-separated."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(parse_secret(s), signed, hashlib.sha256).digest()).decode("ascii")
        for s in secrets
    )


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }


def payload(type: str, timestamp: dt.datetime, data: Mapping[str, Any]) -> bytes:
    """The body: compact JSON ``{"type", "timestamp", "data"}``, the timestamp in RFC 3339 UTC."""
    if timestamp.tzinfo is None:
        raise ValueError("the payload timestamp must be timezone-aware")
    when = timestamp.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    document = {"type": type, "timestamp": when, "data": dict(data)}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
