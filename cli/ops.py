"""Operators' one-shot commands: query, certificates, rebuild, verify, reencrypt."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from typing import Any

from cli.common import SubParsers, load_settings, order_of, services_for
from cli.exits import FAILED, OK, exit_codes
from cli.output import BAD, GOOD, Column, add_json_flag, emit_json, progress, table
from ledger.store.reencrypt import reencrypt
from projections.read_model.activity import ACTIVITY_VIEW
from projections.read_model.notifications import NOTIFICATIONS_VIEW
from projections.read_model.view import ORDERS_VIEW

__all__ = ["register"]

REBUILDABLE = (ORDERS_VIEW, NOTIFICATIONS_VIEW, ACTIVITY_VIEW)


def cmd_query(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    mchid = args.mchid or settings.merchants[0].mchid
    sub_mchid = order_of(settings, mchid, args.sub_mchid)
    with services_for(settings) as services:
        order = services.query_order(mchid, args.out_trade_no, sub_mchid)
    emit_json(order.summary())
    return 0


def cmd_certificates(args: argparse.Namespace) -> int:
    merchants: list[dict[str, Any]] = []
    now = dt.datetime.now(dt.UTC)
    with services_for(load_settings(args)) as services:
        for merchant in services.merchants.values():
            manager = merchant.certificates
            refreshed = len(manager.refresh()) if args.refresh and manager is not None else None
            keys = merchant.keys()
            certificates = [
                {
                    "serial": cert.serial,
                    "not_before": cert.not_before,
                    "not_after": cert.not_after,
                    "valid": cert.not_before <= now <= cert.not_after,
                }
                for cert in keys.certificates
            ]
            public_keys = list(keys.public_keys)
            merchants.append(
                {
                    "mchid": merchant.mchid,
                    "refreshed": refreshed,
                    "public_keys": public_keys,
                    "certificates": certificates,
                }
            )
    if args.json:
        emit_json(merchants)
        return 0
    for m in merchants:
        if m["refreshed"] is not None:
            print(f"{m['mchid']}: refreshed, {m['refreshed']} new")
    rows: list[tuple[object, ...]] = []
    for m in merchants:
        rows += [(m["mchid"], "public key", key_id, None, "(no expiry)", "valid") for key_id in m["public_keys"]]
        rows += [
            (
                m["mchid"],
                "certificate",
                c["serial"],
                f"{c['not_before']:%Y-%m-%d}",
                f"{c['not_after']:%Y-%m-%d}",
                "valid" if c["valid"] else "NOT VALID NOW",
            )
            for c in m["certificates"]
        ]
    state = Column("state", styles={"valid": GOOD, "NOT VALID NOW": BAD})
    table(rows, ["mchid", "kind", Column("id", fold=False), "valid from", "valid until", state])
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    if args.name not in REBUILDABLE:
        print(f"payledger: unknown projection {args.name!r} (known: {', '.join(REBUILDABLE)})", file=sys.stderr)
        return 2
    with services_for(load_settings(args, require_merchant=False)) as services:
        summary: Any
        if args.name == NOTIFICATIONS_VIEW:
            summary = services.rebuild_notifications_view()
            text = str(summary)
        elif args.name == ACTIVITY_VIEW:
            summary = services.rebuild_activity_view()
            text = f"rebuilt {summary.new} (was {summary.old}): {summary.rows:,} action(s) in {summary.seconds:.1f} s"
            text += "; now live"
        else:
            with progress(None, f"rebuilding {ORDERS_VIEW}", unit="events") as bar:
                summary = services.rebuild_orders_view(progress=lambda events, head, _s: bar.update(events, head))
            text = str(summary)
    if args.json:
        emit_json({"projection": args.name, **dataclasses.asdict(summary)})
    else:
        print(text)
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
        if args.all:
            with progress(None, "verifying the log", unit="events") as bar:
                report = services.audit_all(progress=bar.update)
        else:
            report = services.audit_order(mchid, args.out_trade_no, sub_mchid)
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
        with progress(None, "re-encrypting", unit="states") as bar:
            summary = reencrypt(services.ledger, progress=bar.update)
    if args.json:
        emit_json(dataclasses.asdict(summary))
    else:
        print(summary)
    return 1 if summary.unreadable else 0


def register(sub: SubParsers) -> None:
    query = sub.add_parser(
        "query",
        help="query WeChat Pay for an order now and record the answer",
        description="Print the order, as recorded after WeChat's verified answer, as JSON.",
        epilog=exit_codes(OK, (1, "WeChat's answer failed or could not be trusted (nothing recorded)")),
    )
    query.add_argument("out_trade_no", help="the merchant's order number")
    query.add_argument("--mchid", help="the merchant (default: the first configured)")
    query.add_argument("--sub-mchid", help="the sub-merchant (required for a service provider's order)")
    query.set_defaults(func=cmd_query)

    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild a projection beside the live one, then switch (blue/green)",
        epilog=exit_codes(OK, FAILED, (2, "an unknown projection, or the configuration is wrong")),
    )
    rebuild.add_argument(
        "name",
        nargs="?",
        default=ORDERS_VIEW,
        help=f"the projection: {' or '.join(REBUILDABLE)} (default {ORDERS_VIEW})",
    )
    add_json_flag(rebuild, "the summary as one JSON document")
    rebuild.set_defaults(func=cmd_rebuild)

    certificates = sub.add_parser(
        "certificates",
        help="list verification keys and certificates with expiry",
        epilog=exit_codes(OK, FAILED),
    )
    certificates.add_argument("--refresh", action="store_true", help="download from WeChat Pay first")
    add_json_flag(certificates, "one JSON document: a list of merchants with their keys and certificates")
    certificates.set_defaults(func=cmd_certificates)

    verify = sub.add_parser(
        "verify",
        help="recompute the hash chains and re-verify stored notifications",
        epilog=exit_codes((0, "every chain and signature checks out"), (1, "a break (each one printed), or failed")),
    )
    verify_what = verify.add_mutually_exclusive_group(required=True)
    verify_what.add_argument("out_trade_no", nargs="?", help="one order (or a notification id naming no order)")
    verify_what.add_argument("--all", action="store_true", help="every stream in the log (with a progress bar)")
    verify.add_argument("--mchid", help="the merchant (default: the first configured)")
    verify.add_argument("--sub-mchid", help="the sub-merchant of OUT_TRADE_NO (a service provider's order)")
    add_json_flag(verify, "the report as one JSON document")
    verify.set_defaults(func=cmd_verify)

    reencrypt_ = sub.add_parser(
        "reencrypt",
        help="rewrite stored event states with the newest encryption key",
        epilog=exit_codes(
            (0, "every stored state is under the newest key"), (1, "some state could not be decrypted, or failed")
        ),
    )
    add_json_flag(reencrypt_, "the summary as one JSON document")
    reencrypt_.set_defaults(func=cmd_reencrypt)
