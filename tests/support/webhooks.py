"""The receiving side of outbound webhooks, written from the Standard Webhooks specification
alone (never from projections.webhooks), and one decision put into the outbox by hand."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from projections.webhooks.outbox import Outbox
from tests.support.constants import MCHID
from tests.support.fakes import T0

__all__ = ["STREAM", "TOLERANCE", "InvalidWebhook", "decide", "verify"]

TOLERANCE = 5 * 60
STREAM = "6f1c2a9e-0d3b-4c8e-9f1a-2b3c4d5e6f70"
"""The event stream `decide` pretends its decisions come from."""


class InvalidWebhook(Exception):
    pass


def verify(secret: str, received: Mapping[str, str], body: bytes, *, now: float) -> dict[str, Any]:
    """A receiver's verifier, as the specification describes it; returns the parsed payload."""
    try:
        msg_id, timestamp = received["webhook-id"], received["webhook-timestamp"]
        signatures = received["webhook-signature"]
    except KeyError as missing:
        raise InvalidWebhook(f"missing header {missing}") from None
    if abs(now - int(timestamp)) > TOLERANCE:
        raise InvalidWebhook("timestamp outside the tolerance")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            document: dict[str, Any] = json.loads(body)
            return document
    raise InvalidWebhook("no matching signature")


def decide(outbox: Outbox, n: int, *, at: float | None = T0, event_type: str = "PaymentSucceeded") -> int:
    """What the projection does for one decision event of order n."""
    occurred = dt.datetime.fromtimestamp(at or time.time(), dt.UTC)
    data = {"out_trade_no": f"ORDER-{n:04d}", "mchid": MCHID, "trade_state": "SUCCESS", "amount": {"total": 100}}
    return outbox.messages.enqueue(
        source_id=f"{STREAM}:{n}",
        event_type=event_type,
        mchid=MCHID,
        out_trade_no=f"ORDER-{n:04d}",
        stream_version=n,
        data=data,
        occurred_at=occurred,
        created_at=at,
    )
