"""`payledger`: thin commands over the ledger: parse, call, print."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ledger.errors import ConfigurationError, LedgerError
from ledger.settings import Settings

__all__ = ["main"]


def _settings(args: argparse.Namespace, *, require_merchant: bool = True) -> Settings:
    env = dict(os.environ)
    if getattr(args, "dev", False) and not env.get("WECHATPAY_MCHID") and not env.get("LEDGER_CONFIG"):
        from cli.dev import dev_environment

        env.update(dev_environment())
    return Settings.load(env, require_merchant=require_merchant)


def _configure_logging(level: str, fmt: str | None = None) -> None:
    from ledger.logs import configure_logging

    configure_logging(level, fmt)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from ledger.store.backends import redact_url

    settings = _settings(args)
    _configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    merchants = ", ".join(m.mchid for m in settings.merchants)
    print(
        f"payledger: serving on http://{args.host}:{args.port} "
        f"(store {redact_url(settings.database_url.value)}; merchants {merchants})",
        file=sys.stderr,
    )
    if args.dev:
        print(
            f"payledger: development merchant; notify URL http://{args.host}:{args.port}/wechatpay/notify\n"
            "payledger: try   payledger dev-notify ORDER-0001 --amount 100 "
            f"--url http://{args.host}:{args.port}\n"
            "payledger: then  payledger history ORDER-0001 --dev",
            file=sys.stderr,
        )
    workers: list[threading.Thread] = []
    stop = threading.Event()
    if args.with_workers:
        from projections.webhooks.projection import sync_endpoints

        sync_endpoints(settings.database_url.value, settings.endpoints)
        workers += _projector_threads(settings.database_url.value, stop)
        workers.append(
            threading.Thread(target=_dispatch_until, args=(settings.database_url.value, stop), name="dispatcher")
        )
    for worker in workers:
        worker.start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found: ours only records it, so a clean stop exits 0 rather than "killed by signal".
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The order's timeline: events with retry gaps and anomalies, then outbound deliveries."""
    from api.responses import to_jsonable
    from ledger.application import build_ledger
    from projections.timeline import load_timeline, render_text, to_json

    settings = _settings(args)
    mchid = args.mchid or settings.merchants[0].mchid
    ledger = build_ledger(settings.database_url.value)
    try:
        timeline = load_timeline(ledger, settings.database_url.value, mchid, args.out_trade_no)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(to_jsonable(to_json(timeline)), ensure_ascii=False, indent=2))
        return 0
    print(render_text(timeline))
    return 0


def cmd_dev_notify(args: argparse.Namespace) -> int:
    import httpx

    from cli.dev import dev_factory

    factory = dev_factory()
    if args.refund:
        out_refund_no, _, amount = args.refund.partition(":")
        delivery = factory.refunded(args.out_trade_no, out_refund_no, int(amount), args.amount)
    else:
        delivery = factory.paid(args.out_trade_no, args.amount)
    response = httpx.post(f"{args.url.rstrip('/')}/wechatpay/notify", content=delivery.body, headers=delivery.headers)
    print(f"POST /wechatpay/notify -> {response.status_code} {response.text}")
    return 0 if response.status_code in (200, 204) else 1


def _stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT set the returned event: workers finish what they hold and exit."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _projector_threads(database_url: str, stop: threading.Event) -> list[threading.Thread]:
    from projections.read_model.runner import run_orders_projector
    from projections.webhooks.projection import run_outbox_projector

    return [
        threading.Thread(target=run, args=(database_url, stop), name=name)
        for name, run in (("orders-view", run_orders_projector), ("outbox", run_outbox_projector))
    ]


def _dispatch_until(database_url: str, stop: threading.Event) -> None:
    """The dispatcher inside `serve --with-workers` (claims rows like a separate `payledger dispatch`)."""
    from cli.webhooks import webhook_settings
    from projections.webhooks.dispatcher import Dispatcher
    from projections.webhooks.outbox import Outbox, outbox_url

    options = webhook_settings()
    outbox = Outbox(outbox_url(database_url))
    dispatcher = Dispatcher(
        outbox, schedule=options.schedule, timeout=options.timeout, disable_after=options.disable_after
    )
    try:
        dispatcher.run_forever(stop)
    finally:
        dispatcher.close()
        outbox.close()


def cmd_project(args: argparse.Namespace) -> int:
    """Both projections, each exclusive by its own lock; SIGTERM stops them cleanly."""
    from projections.webhooks.projection import sync_endpoints

    settings = _settings(args, require_merchant=False)
    _configure_logging(settings.log_level, settings.log_format)
    sync_endpoints(settings.database_url.value, settings.endpoints)
    stop = _stop_on_signals()
    threads = _projector_threads(settings.database_url.value, stop)
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.5)
        if not stop.is_set() and not all(t.is_alive() for t in threads):
            stop.set()  # one projector failed: stop the other and exit, so a supervisor restarts both
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from projections.read_model.rebuild import print_progress, rebuild_orders_view

    if args.name not in ("orders_view",):
        print(f"payledger: unknown projection {args.name!r} (known: orders_view)", file=sys.stderr)
        return 2
    settings = _settings(args, require_merchant=False)
    summary = rebuild_orders_view(settings.database_url.value, progress=print_progress)
    print(file=sys.stderr)
    print(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    return run_demo(host=args.host, port=args.port, sandbox_port=args.sandbox_port, wait=not args.no_wait)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ledger.wechatpay.sandbox.server import run_sandbox

    run_sandbox(
        args.host,
        args.port,
        Path(args.folder),
        args.notify_url,
        args.time_scale,
        args.duplicate_rate,
        args.probe_rate,
        args.drop_rate,
        seed=args.seed,
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from api.orders import order_to_dict
    from api.responses import to_jsonable
    from ledger.bootstrap import bootstrap

    settings = _settings(args)
    services = bootstrap(settings)
    try:
        order = services.query(args.mchid or settings.merchants[0].mchid, args.out_trade_no)
    finally:
        services.close()
    print(json.dumps(to_jsonable(order_to_dict(order)), ensure_ascii=False, indent=2))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:

    from ledger.bootstrap import bootstrap
    from ledger.store.sql import Database
    from projections.reconcile.reconciler import Reconciler
    from projections.reconcile.worklist import Worklist

    settings = _settings(args)
    _configure_logging(settings.log_level if args.follow else "WARNING", settings.log_format)
    services = bootstrap(settings)
    database = Database(settings.database_url.value)
    worklist = Worklist(database)
    reconciler = Reconciler(
        services.ledger,
        worklist,
        services.query,
        schedule=settings.reconcile_schedule,
        expiry=settings.reconcile_expiry,
        rate=settings.reconcile_qps,
    )
    try:
        if args.follow:
            reconciler.follow(_stop_on_signals(), idle=args.interval, report=lambda c: print(c, flush=True))
            return 0
        changes = reconciler.run_pass()
        for change in changes:
            print(change)
        failed = sum(1 for c in changes if c.error)
        print(
            f"reconciled {len(changes)} order(s): {len(changes) - failed} queried or settled, {failed} failed "
            f"(retried later); open orders: {worklist.counts().get('open', 0)}"
        )
        return 0
    finally:
        database.close()
        services.close()


def cmd_certificates(args: argparse.Namespace) -> int:
    import datetime as dt

    from ledger.bootstrap import bootstrap

    settings = _settings(args)
    services = bootstrap(settings)
    try:
        for merchant in services.merchants.values():
            manager = merchant.certificates
            if args.refresh and manager is not None:
                added = manager.refresh()
                print(f"{merchant.mchid}: refreshed, {len(added)} new")
            keys = merchant.keys()
            for key_id in keys.public_keys:
                print(f"{merchant.mchid}  public key  {key_id}  (no expiry)")
            now = dt.datetime.now(dt.UTC)
            for cert in keys.certificates:
                state = "valid" if cert.not_before <= now <= cert.not_after else "NOT VALID NOW"
                print(
                    f"{merchant.mchid}  certificate {cert.serial}  {cert.not_before:%Y-%m-%d} -> "
                    f"{cert.not_after:%Y-%m-%d}  {state}"
                )
    finally:
        services.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every chain and every stored signature checks out, 1 on any break."""
    from ledger.application import build_ledger
    from ledger.audit.integrity import verify_all, verify_order

    settings = _settings(args, require_merchant=False)
    keys = {m.mchid: m.keys for m in settings.merchants}
    apiv3 = {m.mchid: m.apiv3_key.value.encode() for m in settings.merchants}
    appids = {m.mchid: m.appid for m in settings.merchants}
    ledger = build_ledger(settings.database_url.value)
    try:
        if args.all:
            report = verify_all(ledger, keys, apiv3=apiv3, appids=appids)
        else:
            mchid = args.mchid or (settings.merchants[0].mchid if settings.merchants else "")
            if not mchid:
                print("payledger: verify OUT_TRADE_NO needs --mchid (no merchant configured)", file=sys.stderr)
                return 2
            report = verify_order(ledger, keys, mchid, args.out_trade_no, apiv3=apiv3, appids=appids)
    finally:
        ledger.close()
    if args.json:
        print(report.to_json())
    else:
        for problem in report.breaks:
            print(f"BREAK {problem}")
        print(report.summary())
    return 0 if report.ok else 1


def cmd_reencrypt(args: argparse.Namespace) -> int:
    """Exit 0 when every stored state is now under the newest key."""
    from ledger.application import build_ledger
    from ledger.store.reencrypt import reencrypt

    settings = _settings(args, require_merchant=False)
    ledger = build_ledger(settings.database_url.value)
    try:
        summary = reencrypt(ledger)
    finally:
        ledger.close()
    print(summary)
    return 1 if summary.unreadable else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payledger", description="Event-sourced WeChat Pay ledger")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--dev", action="store_true", help="use a generated local test merchant (./payledger-dev)")
    serve.add_argument(
        "--with-workers",
        action="store_true",
        help="also run the projector in this process (single machine; the same lock applies)",
    )
    serve.set_defaults(func=cmd_serve)

    history = sub.add_parser("history", help="print an order's timeline: events, retries, anomalies, webhooks")
    history.add_argument("out_trade_no")
    history.add_argument("--mchid")
    history.add_argument("--json", action="store_true")
    history.add_argument("--dev", action="store_true")
    history.set_defaults(func=cmd_history)

    demo = sub.add_parser("demo", help="run the ledger against the sandbox with a scripted scenario")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--sandbox-port", type=int, default=8090)
    demo.add_argument("--no-wait", action="store_true", help="exit after the scripted part")
    demo.set_defaults(func=cmd_demo)

    sandbox = sub.add_parser("sandbox", help="run a local fake WeChat Pay (writes the ledger configuration)")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090)
    sandbox.add_argument("--folder", default="payledger-sandbox")
    sandbox.add_argument("--notify-url", default="http://127.0.0.1:8000/wechatpay/notify")
    sandbox.add_argument("--time-scale", type=float, default=1.0, help="divide WeChat's retry schedule by this")
    sandbox.add_argument("--duplicate-rate", type=float, default=0.0)
    sandbox.add_argument("--probe-rate", type=float, default=0.0)
    sandbox.add_argument("--drop-rate", type=float, default=0.0)
    sandbox.add_argument("--seed", type=int)
    sandbox.set_defaults(func=cmd_sandbox)

    query = sub.add_parser("query", help="query WeChat Pay for an order now and record the answer")
    query.add_argument("out_trade_no")
    query.add_argument("--mchid")
    query.set_defaults(func=cmd_query)

    reconcile = sub.add_parser("reconcile", help="query open orders whose callback has not come")
    reconcile.add_argument("--follow", action="store_true", help="keep running")
    reconcile.add_argument("--interval", type=float, default=1.0, help="idle wait between passes (--follow)")
    reconcile.set_defaults(func=cmd_reconcile)

    project = sub.add_parser("project", help="run the projection worker (one active per projection; others wait)")
    project.set_defaults(func=cmd_project)

    rebuild = sub.add_parser("rebuild", help="rebuild a projection beside the live one, then switch (blue/green)")
    rebuild.add_argument("name", nargs="?", default="orders_view")
    rebuild.set_defaults(func=cmd_rebuild)

    certificates = sub.add_parser("certificates", help="list verification keys and certificates with expiry")
    certificates.add_argument("--refresh", action="store_true", help="download from WeChat Pay first")
    certificates.set_defaults(func=cmd_certificates)

    verify = sub.add_parser("verify", help="recompute the hash chains and re-verify stored notifications")
    verify_what = verify.add_mutually_exclusive_group(required=True)
    verify_what.add_argument("out_trade_no", nargs="?", help="one order (or a notification id naming no order)")
    verify_what.add_argument("--all", action="store_true", help="every stream in the log")
    verify.add_argument("--mchid")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify)

    reencrypt = sub.add_parser("reencrypt", help="rewrite stored event states with the newest encryption key")
    reencrypt.set_defaults(func=cmd_reencrypt)

    from cli.webhooks import register as register_webhook_commands

    register_webhook_commands(sub, lambda a: _settings(a, require_merchant=False))

    dev = sub.add_parser("dev-notify", help="send a signed test notification (development merchant only)")
    dev.add_argument("out_trade_no")
    dev.add_argument("--amount", type=int, required=True, help="order total in fen")
    dev.add_argument("--refund", metavar="OUT_REFUND_NO:FEN", help="send a refund notification instead")
    dev.add_argument("--url", default="http://127.0.0.1:8000")
    dev.set_defaults(func=cmd_dev_notify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"payledger: configuration error: {exc.setting}: {exc.problem}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"payledger: {exc.reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
