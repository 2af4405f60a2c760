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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ledger.application import Ledger
from ledger.store.sql import STORE_ERRORS
from projections.webhooks.outbox import Endpoint, Message, Outbox, outbox_url

__all__ = ["Entry", "Outbound", "Timeline", "build_timeline", "load_timeline", "render_text", "to_json"]

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
    if event_type == "Opened":
        return f"mchid={get('mchid')} out_trade_no={get('out_trade_no')}"
    if event_type == "Registered":
        text = f"amount_total={get('amount_total')} {get('currency')}"
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
    if event_type.startswith("Refund"):
        return (
            f"out_refund_no={get('out_refund_no')} refund={get('refund')} refund_id={get('refund_id')}"
            f" evidence={get('evidence')}"
        )
    if event_type == "StatusQueried":
        transaction = _mapping(get("transaction"))
        return (
            f"by {get('query')}: HTTP {get('status_code')} trade_state={transaction.get('trade_state')}"
            f" request_id={get('request_id')}"
        )
    if event_type == "TradeStateChanged":
        return f"{get('from_state')} -> {get('to_state')} evidence={get('evidence')}"
    if event_type == "AnomalyDetected":
        return f"{get('kind')} {_compact(get('detail'))} evidence={get('evidence')}"
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


def load_timeline(ledger: Ledger, database_url: str, mchid: str, out_trade_no: str) -> Timeline:
    """Read the order's events, its current state and its outbound messages (blocking)."""
    events = ledger.order_history(mchid, out_trade_no)
    order = ledger.get_order(mchid, out_trade_no).summary()
    try:
        outbox = Outbox(outbox_url(database_url))
        try:
            messages = outbox.messages_for_order(mchid, out_trade_no)
            endpoints = outbox.list_endpoints() if messages else []
        finally:
            outbox.close()
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


def _printable(text: str) -> str:
    """Control characters from untrusted payloads must not steer the operator's terminal."""
    return "".join(
        ch if unicodedata.category(ch)[0] != "C" else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def attempt_text(status: int | None, error: str | None, duration_ms: float) -> str:
    outcome = f"HTTP {status}" if status is not None else f"error {error or 'unknown'}"
    return f"{outcome} in {duration_ms:.0f} ms"


def render_text(timeline: Timeline) -> str:
    """The timeline for a terminal: one line per event, then outbound messages per endpoint."""
    o = timeline.order
    lines = [
        f"order {o['out_trade_no']} (mchid {o['mchid']}): {o['trade_state']}, version {o['version']}",
        f"  amount_total={o['amount_total']} {o['currency']}  paid_total={o['paid_total']}"
        f"  refunded_total={o['refunded_total']}  transaction_id={o['transaction_id']}"
        f"  deliveries={o['deliveries']}  anomalies={len(o['anomalies'])}",
        "",
        "events (times UTC; !! marks an anomaly)",
    ]
    for e in timeline.entries:
        mark = "!!" if e.anomaly else "  "
        line = f"{mark}{e.version:>4}  {iso(e.recorded_at)}  {e.type:<20}  {e.facts}"
        if e.delivery is not None:
            line += f"  [delivery {e.delivery}" + (f", {e.retry_label}]" if e.retry_label else "]")
        lines.append(line)
    lines += ["", "outbound deliveries"]
    if timeline.outbound_error:
        lines.append(f"  ({timeline.outbound_error})")
    elif not timeline.outbound:
        lines.append("  (none)")
    for endpoint in timeline.outbound:
        lines.append(f"  endpoint {endpoint.endpoint_id}  {endpoint.url or '(endpoint removed)'}")
        for msg in endpoint.messages:
            lines.append(f"    {msg.id}  {msg.event_type} v{msg.stream_version}  {msg.state}")
            for n, a in enumerate(msg.history, 1):
                lines.append(
                    f"      attempt {n}  {iso(a.attempted_at)}  {attempt_text(a.status, a.error, a.duration_ms)}"
                )
            if not msg.history:
                lines.append(f"      not attempted yet (due {iso(msg.next_attempt_at)})")
    return "\n".join(_printable(line) for line in lines)


def to_json(timeline: Timeline) -> dict[str, Any]:
    """One JSON-ready document: the order, its annotated events, its outbound messages."""
    return {
        "order": timeline.order,
        "events": [
            {
                "version": e.version,
                "type": e.type,
                "recorded_at": iso(e.recorded_at),
                "anomaly": e.anomaly,
                "delivery": e.delivery,
                "retry_gap_seconds": e.retry_gap,
                "data": e.data,
            }
            for e in timeline.entries
        ],
        "outbound": [
            {
                "endpoint_id": endpoint.endpoint_id,
                "url": endpoint.url,
                "messages": [
                    {
                        "webhook_id": m.id,
                        "type": m.event_type,
                        "stream_version": m.stream_version,
                        "state": m.state,
                        "created_at": iso(m.created_at),
                        "delivered_at": iso(m.delivered_at),
                        "attempts": [
                            {
                                "attempted_at": iso(a.attempted_at),
                                "status": a.status,
                                "error": a.error,
                                "duration_ms": a.duration_ms,
                                "response_body": a.response_body,
                            }
                            for a in m.history
                        ],
                    }
                    for m in endpoint.messages
                ],
            }
            for endpoint in timeline.outbound
        ],
        "outbound_error": timeline.outbound_error,
    }
