"""`payledger refund` and `payledger close`: ask WeChat Pay through the ledger (`ledger.refunding`).

Exit codes: 0 accepted (or closed), 3 the outcome is unknown (recorded; reconciliation asks WeChat),
1 refused (by the order's state, or by WeChat with its code, printed), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys

from cli.common import SubParsers, load_settings, order_of, services_for
from cli.exits import exit_codes
from cli.output import emit_json
from ledger.identity import OrderKey
from ledger.settings import Settings

__all__ = ["CLI_CALLER", "register"]

CLI_CALLER = "cli"  # who asked, in the order's history
_EXIT = {"accepted": 0, "unknown": 3, "rejected": 1}


def _key(args: argparse.Namespace) -> tuple[OrderKey, Settings]:
    settings = load_settings(args)
    mchid = args.mchid or settings.merchants[0].mchid
    return OrderKey(mchid, args.out_trade_no, order_of(settings, mchid, args.sub_mchid)), settings


def cmd_refund(args: argparse.Namespace) -> int:
    key, settings = _key(args)
    with services_for(settings) as services:
        asked = services.requester.refund(
            key,
            out_refund_no=args.out_refund_no,
            amount=args.amount,
            reason=args.reason or "",
            requested_by=args.requested_by or CLI_CALLER,
        )
    emit_json(asked.record)
    if asked.outcome == "unknown":
        print("payledger: the outcome is unknown; reconciliation will ask WeChat Pay", file=sys.stderr)
    elif asked.outcome == "rejected":
        print(f"payledger: WeChat Pay refused the refund ({asked.record['code']})", file=sys.stderr)
    return _EXIT[asked.outcome]


def cmd_close(args: argparse.Namespace) -> int:
    key, settings = _key(args)
    with services_for(settings) as services:
        order, sent = services.requester.close(key, requested_by=args.requested_by or CLI_CALLER)
    emit_json(order.summary())
    if not sent:
        print("payledger: the ledger had closed this order already; nothing was sent", file=sys.stderr)
    return 0


def _order_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_trade_no", help="the order's number")
    parser.add_argument("--mchid", help="the merchant (default: the first configured)")
    parser.add_argument("--sub-mchid", help="the sub-merchant (required for a service provider's order)")
    parser.add_argument("--requested-by", help="your name, recorded in the order's history (default: cli)")


def register(sub: SubParsers) -> None:
    refund = sub.add_parser(
        "refund",
        help="refund a paid order through the ledger: decided, recorded, sent once",
        description="Print the refund as recorded (JSON).",
        epilog=exit_codes(
            (0, "accepted by WeChat Pay"),
            (1, "refused: by the order's state (nothing sent) or by WeChat Pay (its code printed)"),
            (3, "the outcome is unknown (recorded; payledger reconcile asks WeChat Pay)"),
        ),
    )
    _order_arguments(refund)
    refund.add_argument("--amount", type=int, required=True, help="the refund in fen (at most what is left)")
    refund.add_argument("--out-refund-no", required=True, help="your refund number: the same again is idempotent")
    refund.add_argument("--reason", help="shown to the payer (at most 80 characters)")
    refund.set_defaults(func=cmd_refund)

    close = sub.add_parser(
        "close",
        help="close an unpaid order at WeChat Pay (refused once it is paid)",
        description="Print the order as recorded (JSON).",
        epilog=exit_codes(
            (0, "closed (or the ledger had closed it already)"),
            (1, "refused: the order is paid, or WeChat Pay refused (its code printed)"),
        ),
    )
    _order_arguments(close)
    close.set_defaults(func=cmd_close)
