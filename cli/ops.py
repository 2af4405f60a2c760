"""Operators' one-shot commands: query, certificates, rebuild, verify, reencrypt."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from cli.common import SubParsers, load_settings, order_of, print_json, services_for
from ledger.store.reencrypt import reencrypt
from projections.read_model.activity import ACTIVITY_VIEW
from projections.read_model.notifications import NOTIFICATIONS_VIEW
from projections.read_model.rebuild import print_progress
from projections.read_model.view import ORDERS_VIEW

__all__ = ["register"]

REBUILDABLE = (ORDERS_VIEW, NOTIFICATIONS_VIEW, ACTIVITY_VIEW)


def cmd_query(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    mchid = args.mchid or settings.merchants[0].mchid
    sub_mchid = order_of(settings, mchid, args.sub_mchid)
    with services_for(settings) as services:
        order = services.query_order(mchid, args.out_trade_no, sub_mchid)
    print_json(order.summary())
    return 0


def cmd_certificates(args: argparse.Namespace) -> int:
    with services_for(load_settings(args)) as services:
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
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    if args.name not in REBUILDABLE:
        print(f"payledger: unknown projection {args.name!r} (known: {', '.join(REBUILDABLE)})", file=sys.stderr)
        return 2
    with services_for(load_settings(args, require_merchant=False)) as services:
        if args.name == NOTIFICATIONS_VIEW:
            print(services.rebuild_notifications_view())
            return 0
        if args.name == ACTIVITY_VIEW:
            done = services.rebuild_activity_view()
            print(f"rebuilt {done.new} (was {done.old}): {done.rows:,} action(s) in {done.seconds:.1f} s; now live")
            return 0
        summary = services.rebuild_orders_view(progress=print_progress)
    print(file=sys.stderr)
    print(summary)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every chain and every stored signature checks out, 1 on any break."""
    settings = load_settings(args, require_merchant=False)
    mchid = args.mchid or (settings.merchants[0].mchid if settings.merchants else "")
    if not args.all and not mchid:
        print("payledger: verify OUT_TRADE_NO needs --mchid (no merchant configured)", file=sys.stderr)
        return 2
    if args.all and args.sub_mchid is not None:
        print("payledger: verify --all checks every stream; --sub-mchid names one order", file=sys.stderr)
        return 2
    # Without --sub-mchid a provider's OUT_TRADE_NO may still be a notification id that names no order.
    sub_mchid = None if args.all or args.sub_mchid is None else order_of(settings, mchid, args.sub_mchid)
    with services_for(settings) as services:
        report = services.audit_all() if args.all else services.audit_order(mchid, args.out_trade_no, sub_mchid)
    if args.json:
        print(report.to_json())
    else:
        for problem in report.breaks:
            print(f"BREAK {problem}")
        print(report.summary())
    return 0 if report.ok else 1


def cmd_reencrypt(args: argparse.Namespace) -> int:
    """Exit 0 when every stored state is now under the newest key."""
    with services_for(load_settings(args, require_merchant=False)) as services:
        summary = reencrypt(services.ledger)
    print(summary)
    return 1 if summary.unreadable else 0


def register(sub: SubParsers) -> None:
    query = sub.add_parser("query", help="query WeChat Pay for an order now and record the answer")
    query.add_argument("out_trade_no")
    query.add_argument("--mchid", help="the merchant (default: the first configured)")
    query.add_argument("--sub-mchid", help="the sub-merchant (required for a service provider's order)")
    query.set_defaults(func=cmd_query)

    rebuild = sub.add_parser("rebuild", help="rebuild a projection beside the live one, then switch (blue/green)")
    rebuild.add_argument(
        "name",
        nargs="?",
        default=ORDERS_VIEW,
        help=f"the projection: {' or '.join(REBUILDABLE)} (default {ORDERS_VIEW})",
    )
    rebuild.set_defaults(func=cmd_rebuild)

    certificates = sub.add_parser("certificates", help="list verification keys and certificates with expiry")
    certificates.add_argument("--refresh", action="store_true", help="download from WeChat Pay first")
    certificates.set_defaults(func=cmd_certificates)

    verify = sub.add_parser("verify", help="recompute the hash chains and re-verify stored notifications")
    verify_what = verify.add_mutually_exclusive_group(required=True)
    verify_what.add_argument("out_trade_no", nargs="?", help="one order (or a notification id naming no order)")
    verify_what.add_argument("--all", action="store_true", help="every stream in the log")
    verify.add_argument("--mchid", help="the merchant (default: the first configured)")
    verify.add_argument("--sub-mchid", help="the sub-merchant of OUT_TRADE_NO (a service provider's order)")
    verify.add_argument("--json", action="store_true", help="the report as one JSON document")
    verify.set_defaults(func=cmd_verify)

    reencrypt_ = sub.add_parser("reencrypt", help="rewrite stored event states with the newest encryption key")
    reencrypt_.set_defaults(func=cmd_reencrypt)
