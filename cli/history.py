"""`payledger history`: an order's timeline for a terminal or as one JSON document.

The timeline itself (events with retry gaps and anomalies, outbound deliveries) is assembled
by `projections.timeline`; this module only renders it.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import SubParsers, load_settings, order_of, services_for
from cli.exits import OK, exit_codes
from cli.output import add_json_flag, emit_json
from projections.timeline import Timeline, attempt_text, iso, load_timeline, printable

__all__ = ["register", "render_text", "to_json"]


def cmd_history(args: argparse.Namespace) -> int:
    """The order's timeline: events with retry gaps and anomalies, then outbound deliveries."""
    settings = load_settings(args)
    mchid = args.mchid or settings.merchants[0].mchid
    sub_mchid = order_of(settings, mchid, args.sub_mchid)
    with services_for(settings) as services:
        timeline = load_timeline(services.ledger, lambda: services.outbox, mchid, args.out_trade_no, sub_mchid)
    if args.json:
        emit_json(to_json(timeline))
    else:
        print(render_text(timeline))
    return 0


def register(sub: SubParsers) -> None:
    history = sub.add_parser(
        "history",
        help="print an order's timeline: events, retries, anomalies, webhooks",
        epilog=exit_codes(OK, (1, "no such order, or failed")),
    )
    history.add_argument("out_trade_no", help="the merchant's order number")
    history.add_argument("--mchid", help="the merchant (default: the first configured)")
    history.add_argument("--sub-mchid", help="the sub-merchant (required for a service provider's order)")
    add_json_flag(history, 'one JSON document: {"order", "events", "outbound", "outbound_error"}')
    history.add_argument("--dev", action="store_true", help="read the development merchant's ledger (serve --dev)")
    history.set_defaults(func=cmd_history)


def render_text(timeline: Timeline) -> str:
    """The timeline for a terminal: one line per event, then outbound messages per endpoint."""
    o = timeline.order
    who = f"mchid {o['mchid']}" + (f", sub_mchid {o['sub_mchid']}" if o.get("sub_mchid") else "")
    lines = [
        f"order {o['out_trade_no']} ({who}): {o['trade_state']}, version {o['version']}",
        f"  amount_total={o['amount_total']} {o['currency']}  paid_total={o['paid_total']}"
        f"  refunded_total={o['refunded_total']}  transaction_id={o['transaction_id']}"
        f"  deliveries={o['deliveries']}  anomalies={len(o['anomalies'])}"
        f"  bill_discrepancies={len(o.get('bill_discrepancies') or ())}",
        "",
        "events (times UTC; !! marks an anomaly, <> a difference from WeChat's daily bill)",
    ]
    for e in timeline.entries:
        mark = "!!" if e.anomaly else "<>" if e.type == "BillDiscrepancy" else "  "
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
    return "\n".join(printable(line) for line in lines)


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
