"""Evidence as the domain takes it: a verified notification or a verified query answer.

The protocol layer (`ledger.wechatpay`) verifies and decrypts; `ledger.application` turns what it
verified into these plain values; the aggregates in `ledger.domain` derive decisions from them.
Nothing here imports anything of ours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

__all__ = ["Evidence", "QueryEvidence", "amount_object", "resource_fen", "text_field"]


@dataclass(frozen=True)
class Evidence:
    """A verified notification, as the domain sees it (the protocol layer builds it)."""

    notification_id: str
    event_type: str
    delivery_key: str
    key_serial: str
    raw_body: str
    signature_headers: dict[str, str]
    envelope: dict[str, Any]
    resource: dict[str, Any]
    resource_digest: str
    received_at: dt.datetime


@dataclass(frozen=True)
class QueryEvidence:
    """A verified answer to a status query ([protocol: Querying an order]), as the domain sees it."""

    query: str
    status_code: int
    raw_body: str
    response_headers: dict[str, str]
    key_serial: str
    request_id: str
    transaction: dict[str, Any]
    queried_at: dt.datetime


# Reading a verified resource: a field of the wrong type reads as absent, never as an error.


def resource_fen(resource: dict[str, Any], name: str) -> int | None:
    amount = resource.get("amount")
    if isinstance(amount, dict):
        value = amount.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def amount_object(resource: dict[str, Any]) -> dict[str, Any]:
    amount = resource.get("amount")
    return amount if isinstance(amount, dict) else {}


def text_field(resource: dict[str, Any], name: str) -> str:
    value = resource.get(name)
    return value if isinstance(value, str) else ""
