"""`payledger endpoints|deliveries|dispatch`: outbound webhooks, thin over the outbox.

The retry schedule, the request timeout and how long an endpoint may fail before it is
disabled are settings like any other (`LEDGER_WEBHOOK_*`, environment or TOML); the outbox
and the dispatcher come from `api.bootstrap`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from api.bootstrap import Services
from cli.common import SubParsers, configure_logging, each_shard, load_settings, load_shards, services_for
from cli.exits import FAILED, OK, exit_codes
from cli.output import BAD, GOOD, WARN, Column, add_json_flag, emit_json, table
from ledger.settings import Settings
from projections.webhooks.records import STATES, Endpoint, Message

__all__ = ["register"]

LoadSettings = Callable[[argparse.Namespace], Settings]


def _iso(at: float | None) -> str | None:
    return None if at is None else dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


def _when(text: str) -> dt.datetime:
    """An ISO 8601 time; without an offset it is taken as UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _events(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _endpoint_dict(ep: Endpoint) -> dict[str, Any]:
    return {
        "id": ep.id,
        "enabled": ep.enabled,
        "disabled_reason": ep.disabled_reason,
        "event_types": list(ep.event_types),
        "url": ep.shown_url,
        "transport": ep.transport,
        "secrets": len(ep.secrets),
        "failing_since": _iso(ep.failing_since),
        "created_at": _iso(ep.created_at),
    }


def _print_endpoints(endpoints: list[Endpoint]) -> None:
    rows = [
        (
            ep.id,
            "enabled" if ep.enabled else "disabled",
            ",".join(ep.event_types),
            ep.shown_url,
            len(ep.secrets),
            ep.disabled_reason,
        )
        for ep in endpoints
    ]
    state = Column("state", styles={"enabled": GOOD, "disabled": BAD}, fold=False)
    table(rows, [Column("id", fold=False), state, "events", "url", Column("secrets", "right"), "disabled because"])


STATE_COLOURS = {"delivered": GOOD, "pending": "", "failing": WARN, "dead": BAD}


def _print_messages(messages: list[Message]) -> None:
    rows = []
    for msg in messages:
        tried = ", ".join(str(a.status) if a.status is not None else a.error or "error" for a in msg.history)
        rows.append(
            (
                msg.id,
                msg.endpoint_id,
                msg.event_type,
                f"{msg.out_trade_no} v{msg.stream_version}",
                msg.state,
                tried or "none",
            )
        )
    ids = [Column("webhook id", fold=False), Column("endpoint", fold=False)]
    table(rows, [*ids, "type", "order", Column("state", styles=STATE_COLOURS, fold=False), "attempts"])


def _message_dict(msg: Message) -> dict[str, Any]:
    return {
        "webhook_id": msg.id,
        "endpoint_id": msg.endpoint_id,
        "type": msg.event_type,
        "mchid": msg.mchid,
        "out_trade_no": msg.out_trade_no,
        "stream_version": msg.stream_version,
        "state": msg.state,
        "created_at": _iso(msg.created_at),
        "next_attempt_at": _iso(msg.next_attempt_at) if msg.state in ("pending", "failing") else None,
        "delivered_at": _iso(msg.delivered_at),
        "attempts": [asdict(a) | {"attempted_at": _iso(a.attempted_at)} for a in msg.history],
    }


def cmd_endpoints(load: LoadSettings, args: argparse.Namespace) -> int:
    with services_for(load(args)) as services:
        outbox = services.outbox
        if args.action == "add":
            endpoint = outbox.endpoints.add(args.url, args.secret, args.events)
            generated = endpoint.secrets[0] if args.secret is None and endpoint.secrets else None
            if args.json:
                emit_json({"id": endpoint.id, "secret": generated})
                return 0
            print(f"endpoint {endpoint.id}")
            if generated is not None:
                print(f"secret {generated}")
        elif args.action == "list":
            endpoints = outbox.endpoints.all()
            if args.json:
                emit_json([_endpoint_dict(ep) for ep in endpoints])
            else:
                _print_endpoints(list(endpoints))
        elif args.action == "disable":
            changed = outbox.endpoints.disable(args.id, args.reason)
            print(f"endpoint {args.id} {'disabled' if changed else 'was already disabled'}")
        elif args.action == "enable":
            changed = outbox.endpoints.enable(args.id)
            print(f"endpoint {args.id} {'enabled' if changed else 'was already enabled'}")
        elif args.finish:
            outbox.endpoints.drop_old_secrets(args.id)
            print(f"endpoint {args.id}: signing with the newest secret only")
        else:
            secret = outbox.endpoints.add_secret(args.id, args.secret)
            print(f"endpoint {args.id}: signing with the old and the new secret")
            if args.secret is None:
                print(f"secret {secret}")
    return 0


def cmd_deliveries(load: LoadSettings, args: argparse.Namespace) -> int:
    with services_for(load(args)) as services:
        outbox = services.outbox
        if args.action == "resend":
            outbox.messages.resend(args.id)
            print(f"message {args.id} queued again")
        elif args.action == "recover":
            until = args.until or dt.datetime.now(dt.UTC)
            count = outbox.messages.recover(args.since, until, endpoint_id=args.endpoint)
            print(f"{count} message(s) queued again")
        else:
            messages = outbox.messages.newest(args.state, args.limit, endpoint_id=args.endpoint)
            if args.json:
                emit_json([_message_dict(m) for m in messages])
            else:
                _print_messages(list(messages))
    return 0


def cmd_dispatch(load: LoadSettings, args: argparse.Namespace) -> int:
    """The dispatcher of every shard (`LEDGER_SHARD`'s alone when set); `--once` one pass each."""
    shards = load_shards(args, require_merchant=False)
    configure_logging(shards[0].log_level, shards[0].log_format)

    def dispatch(services: Services, stop: threading.Event) -> int:
        services.sync_endpoints()
        dispatcher = services.dispatcher
        if args.once:
            attempted = dispatcher.run_once(limit=args.limit)
            states = services.outbox.messages.counts()
            if args.json:
                emit_json({"attempted": attempted, "states": states})
                return 0
            counts = ", ".join(f"{n} {state}" for state, n in states.items())
            print(f"attempted {attempted} message(s); {counts}")
            return 0
        dispatcher.run_forever(stop, idle=args.interval)
        return 0

    return each_shard(shards, dispatch, follow=not args.once)


def _without_merchant(args: argparse.Namespace) -> Settings:
    return load_settings(args, require_merchant=False)


def _bound(command: Callable[[LoadSettings, argparse.Namespace], int], load: LoadSettings) -> Any:
    return lambda args: command(load, args)


def register(subparsers: SubParsers, load: LoadSettings = _without_merchant) -> None:
    """Add ``endpoints``, ``deliveries`` and ``dispatch`` to a `payledger` parser (`load`: tests' settings)."""
    endpoints = subparsers.add_parser("endpoints", help="business endpoints that receive webhooks")
    endpoints.set_defaults(func=_bound(cmd_endpoints, load))
    actions = endpoints.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    add = actions.add_parser(
        "add",
        help="add an endpoint (prints its id, and the secret when generated)",
        epilog=exit_codes(OK, FAILED, (2, "the URL cannot be used (what is wrong is named), or a usage error")),
    )
    add.add_argument(
        "url",
        help="http(s):// (signed webhooks), nats://host:4222/<subject-prefix> (JetStream)"
        " or amqp://user:pass@host:5672/<vhost>?exchange=<name> (RabbitMQ)",
    )
    add.add_argument("--secret", help="whsec_... (generated for a webhook when omitted)")
    add.add_argument("--events", type=_events, metavar="TYPE,...", help="event types to send (default: all)")
    add_json_flag(add, 'print {"id", "secret"} (the secret only when generated, else null)')
    listing = actions.add_parser("list", help="list endpoints (secrets are not shown)", epilog=exit_codes(OK, FAILED))
    add_json_flag(listing, "one JSON list instead of a table")
    for name, text in (("disable", "stop delivering (messages wait)"), ("enable", "deliver again, backlog first")):
        action = actions.add_parser(name, help=text, epilog=exit_codes(OK, (1, "no such endpoint, or failed")))
        action.add_argument("id", help="the endpoint's id")
        action.add_argument("--reason", default="disabled by operator", help=argparse.SUPPRESS)
    rotate = actions.add_parser(
        "rotate",
        help="sign with a new secret too; --finish drops the old ones",
        epilog=exit_codes(OK, (1, "no such endpoint, or failed")),
    )
    rotate.add_argument("id", help="the endpoint's id")
    group = rotate.add_mutually_exclusive_group()
    group.add_argument("--secret", help="whsec_... (generated when omitted)")
    group.add_argument("--finish", action="store_true", help="keep only the newest secret")

    deliveries = subparsers.add_parser("deliveries", help="outbound messages and their attempts")
    deliveries.set_defaults(func=_bound(cmd_deliveries, load))
    actions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    listing = actions.add_parser(
        "list", help="newest messages first, with every attempt", epilog=exit_codes(OK, FAILED)
    )
    add_json_flag(listing, "one JSON list (every attempt's time, status and duration) instead of a table")
    listing.add_argument("--state", choices=STATES, help="only messages in this state")
    listing.add_argument("--endpoint", help="only messages for this endpoint id")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    resend = actions.add_parser(
        "resend",
        help="queue one message again, whatever its state",
        epilog=exit_codes(OK, (1, "no such message, or failed")),
    )
    resend.add_argument("id", help="the message's webhook-id (msg_...)")
    recover = actions.add_parser(
        "recover",
        help="queue again dead and failing messages created in a window",
        epilog=exit_codes(OK, FAILED),
    )
    recover.add_argument("--since", type=_when, required=True, help="ISO 8601 (UTC when no offset)")
    recover.add_argument("--until", type=_when, help="ISO 8601 (default: now)")
    recover.add_argument("--endpoint", help="only messages for this endpoint id")

    dispatch = subparsers.add_parser(
        "dispatch",
        help="deliver due messages (several may run)",
        epilog=exit_codes((0, "one pass done (--once), or stopped by SIGTERM or ctrl-C"), FAILED),
    )
    dispatch.add_argument("--once", action="store_true", help="one pass, then exit")
    dispatch.add_argument("--limit", type=int, default=1000, help="messages per pass (--once)")
    dispatch.add_argument("--interval", type=float, default=1.0, help="idle wait between passes")
    add_json_flag(dispatch, 'with --once: print {"attempted", "states"} (messages by state)')
    dispatch.set_defaults(func=_bound(cmd_dispatch, load))
