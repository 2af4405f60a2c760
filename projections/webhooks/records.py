"""What the outbox holds, as values: endpoints, messages, attempts and operator events.

Each table is read in the column order named here (`ENDPOINT_COLUMNS`, …); the mappers turn
such a row into its value by column name, so a column added or moved changes one tuple.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.endpoint_urls import WEBHOOK_SCHEMES, masked

__all__ = [
    "ATTEMPT_COLUMNS",
    "BODY_LIMIT",
    "ENDPOINT_COLUMNS",
    "MESSAGE_COLUMNS",
    "OPERATOR_EVENT_COLUMNS",
    "STATES",
    "Attempt",
    "Endpoint",
    "Message",
    "OperatorEvent",
    "attempt_from_row",
    "decode_event_types",
    "encode_event_types",
    "endpoint_from_row",
    "message_from_row",
    "operator_event_from_row",
]

STATES = ("pending", "delivered", "failing", "dead")
BODY_LIMIT = 500  # characters of a response body kept with its attempt

ENDPOINT_COLUMNS = ("id", "url", "secrets", "event_types", "enabled", "disabled_reason", "failing_since", "created_at")
MESSAGE_COLUMNS = (
    "id",
    "source_id",
    "endpoint_id",
    "event_type",
    "mchid",
    "out_trade_no",
    "stream_version",
    "body",
    "state",
    "attempts",
    "next_attempt_at",
    "created_at",
    "delivered_at",
)
ATTEMPT_COLUMNS = ("message_id", "attempted_at", "status", "duration_ms", "response_body", "error")
OPERATOR_EVENT_COLUMNS = ("at", "kind", "endpoint_id", "detail")


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str = field(repr=False)  # a broker's URL may hold its password: `shown_url` masks it
    secrets: tuple[str, ...] = field(repr=False)
    event_types: tuple[str, ...] = ("*",)
    enabled: bool = True
    disabled_reason: str | None = None
    failing_since: float | None = None
    created_at: float = 0.0

    @property
    def shown_url(self) -> str:
        """The URL as listings and logs show it: a password masked."""
        return masked(self.url)

    @property
    def transport(self) -> str:
        """``webhook``, ``nats`` or ``amqp``: what the URL's scheme chooses."""
        scheme = self.url.partition("://")[0].lower()
        return "webhook" if scheme in WEBHOOK_SCHEMES else "amqp" if scheme == "amqps" else scheme

    def accepts(self, event_type: str) -> bool:
        return "*" in self.event_types or event_type in self.event_types


@dataclass(frozen=True)
class Attempt:
    attempted_at: float
    status: int | None
    duration_ms: float
    response_body: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Message:
    id: str
    source_id: str
    endpoint_id: str
    event_type: str
    mchid: str
    out_trade_no: str
    stream_version: int
    body: bytes
    state: str
    attempts: int  # in the current round of the retry schedule; `history` holds them all
    next_attempt_at: float
    created_at: float
    delivered_at: float | None = None
    history: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class OperatorEvent:
    at: float
    kind: str
    endpoint_id: str | None
    detail: dict[str, Any]


def encode_event_types(events: Sequence[str] | None) -> str:
    """How an endpoint's event types are stored: ``*`` for all, else a sorted JSON list."""
    names = sorted({e.strip() for e in events or () if e.strip()})
    return "*" if not names or "*" in names else json.dumps(names)


def decode_event_types(stored: str) -> tuple[str, ...]:
    return ("*",) if stored == "*" else tuple(json.loads(stored))


def _named(columns: tuple[str, ...], row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(columns, row, strict=True))


def _seconds_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def endpoint_from_row(row: Sequence[Any]) -> Endpoint:
    """An endpoint from a row in `ENDPOINT_COLUMNS` order."""
    r = _named(ENDPOINT_COLUMNS, row)
    return Endpoint(
        id=str(r["id"]),
        url=str(r["url"]),
        secrets=tuple(json.loads(r["secrets"])),
        event_types=decode_event_types(r["event_types"]),
        enabled=bool(r["enabled"]),
        disabled_reason=r["disabled_reason"],
        failing_since=_seconds_or_none(r["failing_since"]),
        created_at=float(r["created_at"]),
    )


def message_from_row(row: Sequence[Any]) -> Message:
    """A message, without its attempts, from a row in `MESSAGE_COLUMNS` order."""
    r = _named(MESSAGE_COLUMNS, row)
    return Message(
        id=str(r["id"]),
        source_id=str(r["source_id"]),
        endpoint_id=str(r["endpoint_id"]),
        event_type=str(r["event_type"]),
        mchid=str(r["mchid"]),
        out_trade_no=str(r["out_trade_no"]),
        stream_version=int(r["stream_version"]),
        body=str(r["body"]).encode("utf-8"),
        state=str(r["state"]),
        attempts=int(r["attempts"]),
        next_attempt_at=float(r["next_attempt_at"]),
        created_at=float(r["created_at"]),
        delivered_at=_seconds_or_none(r["delivered_at"]),
    )


def attempt_from_row(row: Sequence[Any]) -> tuple[str, Attempt]:
    """The message id and the attempt, from a row in `ATTEMPT_COLUMNS` order."""
    r = _named(ATTEMPT_COLUMNS, row)
    attempt = Attempt(
        attempted_at=float(r["attempted_at"]),
        status=r["status"],
        duration_ms=float(r["duration_ms"]),
        response_body=r["response_body"],
        error=r["error"],
    )
    return str(r["message_id"]), attempt


def operator_event_from_row(row: Sequence[Any]) -> OperatorEvent:
    """An operator event from a row in `OPERATOR_EVENT_COLUMNS` order."""
    r = _named(OPERATOR_EVENT_COLUMNS, row)
    return OperatorEvent(
        at=float(r["at"]), kind=r["kind"], endpoint_id=r["endpoint_id"], detail=json.loads(r["detail"])
    )
