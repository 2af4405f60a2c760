"""One order's whole history for an auditor: `payledger history` and the operator pages read it.

The events come from the log as stored; to them the timeline adds what an auditor looks for
first: which deliveries were WeChat retrying the same notification (and after how long), which
events are anomalies, and what we sent on to the business endpoints, with every attempt.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ledger.application import Ledger
from ledger.store.sql import STORE_ERRORS
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import Endpoint, Message

__all__ = [
    "Entry",
    "Outbound",
    "Timeline",
    "attempt_text",
    "build_timeline",
    "duration",
    "facts",
    "iso",
    "load_timeline",
    "printable",
]

log = logging.getLogger("projections.timeline")


@dataclass(frozen=True)
class Entry:
    """One event, with what the timeline knows about it beyond its own fields."""

    version: int
    type: str
    recorded_at: dt.datetime
    data: dict[str, Any]
    facts: str
    anomaly: bool = False
    delivery: int | None = None  # the n-th delivery of this notification id (1 = the first)
    retry_gap: float | None = None  # seconds since the previous delivery of the same notification

    @property
    def retry_label(self) -> str | None:
        return None if self.retry_gap is None else f"retry +{duration(self.retry_gap)}"


@dataclass(frozen=True)
class Outbound:
    """The messages to one business endpoint about this order."""

    endpoint_id: str
    url: str | None
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class Timeline:
    order: dict[str, Any]
    entries: tuple[Entry, ...]
    outbound: tuple[Outbound, ...] = ()
    outbound_error: str | None = None
    by_type: dict[str, int] = field(default_factory=dict)


def duration(seconds: float) -> str:
    """15s, 1m30s, 2h05m: WeChat's retry schedule reads best this way."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _when(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def facts(event_type: str, data: Mapping[str, Any]) -> str:
    """The key facts of one event on one line (the full payload is in `data`)."""
    get = data.get
    if event_type == "Opened" and "notification_id" in data:  # a notification inbox's
        return f"mchid={get('mchid')} notification_id={get('notification_id')}"
    if event_type == "Opened":
        text = f"mchid={get('mchid')} out_trade_no={get('out_trade_no')}"
        return f"{text} sub_mchid={get('sub_mchid')}" if get("sub_mchid") else text
    if event_type == "Registered":
        text = f"amount_total={get('amount_total')} {get('currency')}"
        if get("combine_out_trade_no"):
            text += f" combine_out_trade_no={get('combine_out_trade_no')}"
        return f"{text} description={_compact(get('description'))}" if get("description") else text
    if event_type == "NotificationReceived":
        resource = _mapping(get("resource"))
        state = resource.get("trade_state") or resource.get("refund_status")
        text = f"{get('event_type')} id={get('notification_id')} serial={get('key_serial')}"
        return f"{text} state={state}" if state else text
    if event_type == "PaymentSucceeded":
        return (
            f"transaction_id={get('transaction_id')} amount_total={get('amount_total')}"
            f" payer_total={get('payer_total')} {get('currency')} evidence={get('evidence')}"
        )
    if event_type == "RefundRequested":
        reason = f" reason={_compact(get('reason'))}" if get("reason") else ""
        return f"out_refund_no={get('out_refund_no')} refund={get('refund')} asked by {get('requested_by')}{reason}"
    if event_type == "RefundAnswered":
        if get("outcome") == "accepted":
            return (
                f"out_refund_no={get('out_refund_no')} accepted: HTTP {get('status_code')} status={get('status')}"
                f" refund_id={get('refund_id')} request_id={get('request_id')}"
            )
        return f"out_refund_no={get('out_refund_no')} outcome unknown ({get('detail')}): a refund query will tell"
    if event_type == "RefundRejected":
        return f"out_refund_no={get('out_refund_no')} refused: HTTP {get('status_code')} {get('code')}"
    if event_type == "OrderClosed":
        return f"closed at WeChat Pay (HTTP {get('status_code')}) asked by {get('requested_by')}"
    if event_type == "OperatorActed":
        detail = _mapping(get("detail"))
        if get("action") == "requery":
            return f"{get('operator')} re-queried WeChat Pay: trade_state={detail.get('trade_state')}"
        return f"{get('operator')} {get('action')} {detail.get('message_id', '')} to {detail.get('endpoint_id', '')}"
    if event_type == "AnomalyAcknowledged":
        note = f": {_compact(get('note'))}" if get("note") else ""
        return f"{get('operator')} acknowledged anomaly {get('key')}{note}"
    if event_type.startswith("Refund"):
        return (
            f"out_refund_no={get('out_refund_no')} refund={get('refund')} refund_id={get('refund_id')}"
            f" evidence={get('evidence')}"
        )
    if event_type == "StatusQueried":
        answer = _mapping(get("transaction"))
        # A refund query's answer names the refund and its `status`; an order query's, the trade state.
        if get("query") == "refund":
            state = f"out_refund_no={answer.get('out_refund_no')} status={answer.get('status')}"
        else:
            state = f"trade_state={answer.get('trade_state')}"
        return f"by {get('query')}: HTTP {get('status_code')} {state} request_id={get('request_id')}"
    if event_type == "TradeStateChanged":
        return f"{get('from_state')} -> {get('to_state')} evidence={get('evidence')}"
    if event_type == "AnomalyDetected":
        return f"{get('kind')} {_compact(get('detail'))} evidence={get('evidence')}"
    if event_type == "BillDiscrepancy":
        refund = get("refund_id") or get("out_refund_no")
        line = f" out_refund_no={get('out_refund_no')} refund_id={get('refund_id')}" if refund else ""
        return (
            f"{get('kind')} in the bill of {get('bill_date')}: transaction_id={get('transaction_id')}{line}"
            f" bill_amount={get('bill_amount')} ledger_amount={get('ledger_amount')} evidence={get('evidence')}"
        )
    return ""


def build_timeline(
    order: dict[str, Any],
    events: Sequence[dict[str, Any]],
    messages: Iterable[Message] = (),
    endpoints: Iterable[Endpoint] = (),
    outbound_error: str | None = None,
) -> Timeline:
    """Annotate `events` (as `event_to_dict` gives them) and group `messages` by endpoint."""
    last_delivery: dict[str, tuple[int, dt.datetime | None]] = {}
    entries = []
    by_type: dict[str, int] = {}
    for event in events:
        kind, data = event["type"], event["data"]
        by_type[kind] = by_type.get(kind, 0) + 1
        delivery, gap = None, None
        if kind == "NotificationReceived":
            received = _when(data.get("received_at")) or _when(event["recorded_at"])
            previous = last_delivery.get(str(data.get("notification_id")))
            delivery = 1 if previous is None else previous[0] + 1
            if previous is not None and previous[1] is not None and received is not None:
                gap = max(0.0, (received - previous[1]).total_seconds())
            last_delivery[str(data.get("notification_id"))] = (delivery, received)
        entries.append(
            Entry(
                version=event["version"],
                type=kind,
                recorded_at=event["recorded_at"],
                data=data,
                facts=facts(kind, data),
                anomaly=kind == "AnomalyDetected",
                delivery=delivery,
                retry_gap=gap,
            )
        )
    urls = {e.id: e.url for e in endpoints}
    grouped: dict[str, list[Message]] = {}
    for msg in messages:
        grouped.setdefault(msg.endpoint_id, []).append(msg)
    outbound = tuple(
        Outbound(endpoint_id, _display_url(urls.get(endpoint_id)), tuple(msgs))
        for endpoint_id, msgs in sorted(grouped.items())
    )
    return Timeline(order, tuple(entries), outbound, outbound_error, by_type)


def _display_url(url: str | None) -> str | None:
    """Without user info or query: those are where people put credentials."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def load_timeline(
    ledger: Ledger, outbox: Callable[[], Outbox], mchid: str, out_trade_no: str, sub_mchid: str | None = None
) -> Timeline:
    """Read the order's events, its current state and its outbound messages (blocking); a service
    provider's order of sub-merchant `sub_mchid`, or the merchant's own.

    `outbox` gives the process's outbox (`Services.outbox`); asked only here, so an outbox that
    cannot be opened leaves the events readable."""
    events = ledger.order_history(mchid, out_trade_no, sub_mchid)
    current = ledger.get_order(mchid, out_trade_no, sub_mchid)
    order = current.summary()
    try:
        box = outbox()
        messages = box.messages.for_order(mchid, out_trade_no, stream_id=str(current.id))
        endpoints = box.endpoints.all() if messages else []
    except STORE_ERRORS as exc:
        # The events are the record; the outbox is derived. Show what we have and say what is missing.
        log.warning("outbox unavailable for the timeline: %s", type(exc).__name__)
        return build_timeline(order, events, outbound_error="the outbox could not be read")
    return build_timeline(order, events, messages, endpoints)


def iso(at: float | dt.datetime | None) -> str | None:
    if at is None:
        return None
    when = at if isinstance(at, dt.datetime) else dt.datetime.fromtimestamp(at, dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def printable(text: str) -> str:
    """Control characters from untrusted payloads must not steer the operator's terminal."""
    return "".join(
        ch if unicodedata.category(ch)[0] != "C" else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def attempt_text(status: int | None, error: str | None, duration_ms: float) -> str:
    outcome = f"HTTP {status}" if status is not None else f"error {error or 'unknown'}"
    return f"{outcome} in {duration_ms:.0f} ms"
