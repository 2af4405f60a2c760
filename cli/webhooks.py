"""`payledger endpoints|deliveries|dispatch`: outbound webhooks, thin over the outbox.

The webhook settings are read from the environment here until they join `Settings`:
``LEDGER_WEBHOOK_RETRY_SCHEDULE`` (seconds, comma-separated), ``LEDGER_WEBHOOK_TIMEOUT``
(seconds per request) and ``LEDGER_WEBHOOK_DISABLE_AFTER`` (seconds failing before an
endpoint is disabled).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from ledger.errors import ConfigurationError, EndpointNotFound, InvalidEndpoint, MessageNotFound
from ledger.logs import configure_logging
from ledger.settings import Settings
from ledger.store.sql import Database
from projections.webhooks.dispatcher import WEBHOOK_RETRY_SCHEDULE, Dispatcher
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import STATES, Endpoint, Message
from projections.webhooks.schema import outbox_url

__all__ = ["WebhookSettings", "main", "register", "webhook_settings"]

LoadSettings = Callable[[argparse.Namespace], Settings]


@dataclass(frozen=True)
class WebhookSettings:
    schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    timeout: float = 10.0
    disable_after: float = 5 * 24 * 3600.0


def _seconds(environ: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(key, "must be a number of seconds") from None
    if not low <= value <= high:
        raise ConfigurationError(key, f"must be between {low:g} and {high:g} seconds")
    return value


def webhook_settings(environ: Mapping[str, str] | None = None) -> WebhookSettings:
    env = os.environ if environ is None else environ
    raw = env.get("LEDGER_WEBHOOK_RETRY_SCHEDULE", "").strip()
    schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    if raw:
        try:
            schedule = tuple(float(part) for part in raw.split(","))
        except ValueError:
            raise ConfigurationError("LEDGER_WEBHOOK_RETRY_SCHEDULE", "must be comma-separated seconds") from None
        if any(not 0 < step <= 7 * 24 * 3600 for step in schedule):
            raise ConfigurationError("LEDGER_WEBHOOK_RETRY_SCHEDULE", "each step must be between 0 and 604800 seconds")
    return WebhookSettings(
        schedule=schedule,
        timeout=_seconds(env, "LEDGER_WEBHOOK_TIMEOUT", 10.0, 0.1, 300.0),
        disable_after=_seconds(env, "LEDGER_WEBHOOK_DISABLE_AFTER", 5 * 24 * 3600.0, 60.0, 400 * 24 * 3600.0),
    )


@contextmanager
def _outbox(database_url: str) -> Iterator[Outbox]:
    database = Database(outbox_url(database_url))
    try:
        yield Outbox(database)
    finally:
        database.close()


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


def _print_endpoint(ep: Endpoint) -> None:
    state = "enabled " if ep.enabled else "disabled"
    line = f"{ep.id}  {state}  {','.join(ep.event_types)}  {ep.url}  ({len(ep.secrets)} secret(s))"
    if ep.disabled_reason:
        line += f"  - {ep.disabled_reason}"
    print(line)


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


def cmd_endpoints(load_settings: LoadSettings, args: argparse.Namespace) -> int:
    with _outbox(load_settings(args).database_url.value) as outbox:
        if args.action == "add":
            endpoint = outbox.endpoints.add(args.url, args.secret, args.events)
            print(f"endpoint {endpoint.id}")
            if args.secret is None:
                print(f"secret {endpoint.secrets[0]}")
        elif args.action == "list":
            for endpoint in outbox.endpoints.all():
                _print_endpoint(endpoint)
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


def cmd_deliveries(load_settings: LoadSettings, args: argparse.Namespace) -> int:
    with _outbox(load_settings(args).database_url.value) as outbox:
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
                print(json.dumps([_message_dict(m) for m in messages], ensure_ascii=False, indent=2))
                return 0
            for msg in messages:
                tried = ", ".join(str(a.status) if a.status is not None else a.error or "error" for a in msg.history)
                print(
                    f"{msg.id}  {msg.endpoint_id}  {msg.event_type}  {msg.out_trade_no} v{msg.stream_version}"
                    f"  {msg.state}  attempts: {tried or 'none'}"
                )
    return 0


def cmd_dispatch(load_settings: LoadSettings, args: argparse.Namespace) -> int:
    settings = load_settings(args)
    configure_logging(settings.log_level, settings.log_format)
    options = webhook_settings()
    from projections.webhooks.projection import sync_endpoints

    sync_endpoints(settings.database_url.value, settings.endpoints)
    with _outbox(settings.database_url.value) as outbox:
        dispatcher = Dispatcher(
            outbox, schedule=options.schedule, timeout=options.timeout, disable_after=options.disable_after
        )
        try:
            if args.once:
                attempted = dispatcher.run_once(limit=args.limit)
                counts = ", ".join(f"{n} {state}" for state, n in outbox.messages.counts().items())
                print(f"attempted {attempted} message(s); {counts}")
                return 0
            stop = threading.Event()
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                dispatcher.run_forever(stop, idle=args.interval)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            return 0
        finally:
            dispatcher.close()


def _guarded(command: Callable[[LoadSettings, argparse.Namespace], int], load_settings: LoadSettings) -> Any:
    """`command`, with an operator's mistakes answered by a line on stderr and an exit code."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(load_settings, args)
        except ConfigurationError as exc:
            print(f"payledger: configuration error: {exc.setting}: {exc.problem}", file=sys.stderr)
            return 2
        except InvalidEndpoint as exc:
            print(f"payledger: {exc}", file=sys.stderr)
            return 2
        except (EndpointNotFound, MessageNotFound) as exc:
            print(f"payledger: {exc}", file=sys.stderr)
            return 1

    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], load_settings: LoadSettings) -> None:
    """Add ``endpoints``, ``deliveries`` and ``dispatch`` to a `payledger` parser."""
    endpoints = subparsers.add_parser("endpoints", help="business endpoints that receive webhooks")
    endpoints.set_defaults(func=_guarded(cmd_endpoints, load_settings))
    actions = endpoints.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an endpoint (prints its id, and the secret when generated)")
    add.add_argument("url")
    add.add_argument("--secret", help="whsec_... (generated when omitted)")
    add.add_argument("--events", type=_events, metavar="TYPE,...", help="event types to send (default: all)")
    actions.add_parser("list", help="list endpoints (secrets are not shown)")
    for name, text in (("disable", "stop delivering (messages wait)"), ("enable", "deliver again, backlog first")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id")
        action.add_argument("--reason", default="disabled by operator", help=argparse.SUPPRESS)
    rotate = actions.add_parser("rotate", help="sign with a new secret too; --finish drops the old ones")
    rotate.add_argument("id")
    group = rotate.add_mutually_exclusive_group()
    group.add_argument("--secret", help="whsec_... (generated when omitted)")
    group.add_argument("--finish", action="store_true", help="keep only the newest secret")

    deliveries = subparsers.add_parser("deliveries", help="outbound messages and their attempts")
    deliveries.set_defaults(func=_guarded(cmd_deliveries, load_settings))
    actions = deliveries.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="newest messages first, with every attempt")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--endpoint")
    listing.add_argument("--limit", type=int, default=50)
    resend = actions.add_parser("resend", help="queue one message again, whatever its state")
    resend.add_argument("id")
    recover = actions.add_parser("recover", help="queue again dead and failing messages created in a window")
    recover.add_argument("--since", type=_when, required=True, help="ISO 8601 (UTC when no offset)")
    recover.add_argument("--until", type=_when, help="ISO 8601 (default: now)")
    recover.add_argument("--endpoint")

    dispatch = subparsers.add_parser("dispatch", help="deliver due messages (several may run)")
    dispatch.add_argument("--once", action="store_true", help="one pass, then exit")
    dispatch.add_argument("--limit", type=int, default=1000, help="messages per pass (--once)")
    dispatch.add_argument("--interval", type=float, default=1.0, help="idle wait between passes")
    dispatch.set_defaults(func=_guarded(cmd_dispatch, load_settings))


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m cli.webhooks``): the same commands as ``payledger``."""
    parser = argparse.ArgumentParser(prog="payledger", description="Outbound webhooks")
    register(parser.add_subparsers(dest="command", required=True), lambda _: Settings.load(require_merchant=False))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
