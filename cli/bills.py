"""`payledger bills reconcile`: a Beijing day's WeChat bills fetched, kept and matched, as a report.

One run (`projections.bills.service.BillReconciler`) per merchant; the exit code is the worst of
the merchants': 0 the books agree (or the day is empty), 1 unresolved differences remain, 2 the
bill could not be had (its reason printed). `--until` runs every day from `--date` to it (with a
progress bar on a terminal); `--follow` runs the loop of `projections.bills.schedule` until SIGTERM
or ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from cli.common import SubParsers, configure_logging, load_settings, services_for, stop_on_signals
from cli.exits import exit_codes
from cli.output import emit_json, progress
from ledger.bill_matching import Discrepancy
from ledger.errors import InvalidRequest
from projections.bills.reports import BillReport
from projections.bills.schedule import follow_bills
from projections.bills.service import beijing_today
from projections.timeline import printable

__all__ = ["register", "render_report"]


def _day(value: str) -> dt.date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def yesterday(now: dt.datetime | None = None) -> dt.date:
    """The default bill day: yesterday in Asia/Shanghai."""
    return beijing_today(now) - dt.timedelta(days=1)


def _fen(amount: int | None) -> str:
    return "none" if amount is None else f"{amount} fen"


def _difference(d: Discrepancy) -> str:
    ids = f"out_trade_no={d.out_trade_no} transaction_id={d.transaction_id}"
    if d.refund_id is not None or d.out_refund_no is not None:
        ids += f" out_refund_no={d.out_refund_no} refund_id={d.refund_id}"
    state = "resolved" if d.resolved else "UNRESOLVED"
    return f"    {d.kind!s:<17}  {ids}  bill {_fen(d.bill_amount)}, ledger {_fen(d.ledger_amount)}  {state}"


def render_report(report: BillReport) -> str:
    """A report for a terminal: the outcome, the bill's lines and totals, then every difference."""
    head = f"bills {report.mchid} {report.bill_date.isoformat()} (Beijing day): {report.status}"
    if report.status == "discrepancies":
        head += f", {len(report.unresolved)} unresolved"
    elif report.discrepancies:
        head += f", {len(report.discrepancies)} difference(s), all resolved"
    lines = [head]
    if report.reason:
        lines.append(f"  the bill could not be had: {report.reason}")
    if report.status == "empty":
        lines.append("  WeChat has no bill for that day: nothing was paid or refunded")
    if report.sha1:
        lines.append(
            f"  trade bill: {report.rows} line(s), {report.payments} payment(s), {report.refunds} refund(s);"
            f" sha1 {report.sha1}"
        )
    totals = report.totals
    if "payments" in totals:
        lines.append(
            f"  totals (fen): payments {totals['payments']}, refunds {totals['refunds']},"
            f" fees {totals.get('fees')}, net {totals.get('net')}"
        )
    fundflow = totals.get("fundflow")
    if isinstance(fundflow, dict):
        lines.append(
            f"  fund-flow bill: {fundflow.get('rows')} line(s), income {fundflow.get('income')} fen,"
            f" expense {fundflow.get('expense')} fen"
        )
    if report.discrepancies:
        lines.append("  differences:")
        lines += [_difference(d) for d in report.discrepancies]
    return "\n".join(printable(line) for line in lines)


def _compact(report: BillReport) -> str:
    return json.dumps(report.to_json(), ensure_ascii=False, separators=(",", ":"))


def _print(reports: Sequence[BillReport], as_json: bool, several: bool) -> None:
    if as_json:
        documents: Any = [r.to_json() for r in reports]
        emit_json(documents if several else documents[0])
        return
    print("\n\n".join(render_report(r) for r in reports))


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Exit 0 the books agree or the day is empty, 1 unresolved differences, 2 a bill not had (the worst)."""
    settings = load_settings(args)
    configure_logging(settings.log_level if args.follow else "WARNING", settings.log_format)
    with services_for(settings) as services:
        bills = services.bills
        configured = bills.merchants
        if args.mchid is not None and args.mchid not in configured:
            raise InvalidRequest(f"merchant {args.mchid} is not configured to call WeChat Pay (bills need its API key)")
        if not configured:
            raise InvalidRequest("no configured merchant can call WeChat Pay (bills need its API key)")
        merchants = [args.mchid] if args.mchid is not None else configured
        if args.follow:

            def show(report: BillReport) -> None:
                print(_compact(report) if args.json else render_report(report), flush=True)

            follow_bills(bills, merchants, stop_on_signals(), on_report=show, first=args.date)
            return 0
        first = args.date or yesterday()
        last = args.until or first
        if last < first:
            raise InvalidRequest("--until is before --date")
        if last > beijing_today():
            raise InvalidRequest("--until is in the future (Beijing time)")
        days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
        runs = len(days) * len(merchants)
        reports = []
        # A bar only for several runs: one day of one merchant is one request.
        with progress(runs, "reconciling bills", unit="runs", terminal=None if runs > 1 else False) as bar:
            for day in days:
                for mchid in merchants:
                    reports.append(bills.reconcile(mchid, day))
                    bar.advance()
    _print(reports, args.json, several=len(merchants) > 1 or args.until is not None)
    return max(report.exit_code for report in reports)


def register(sub: SubParsers) -> None:
    bills = sub.add_parser("bills", help="WeChat Pay's daily bills matched against the ledger")
    actions = bills.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    reconcile = actions.add_parser(
        "reconcile",
        help="fetch a day's bills (if not kept yet), match them, print the report",
        epilog=exit_codes(
            (0, "the books agree (every difference resolved) or the day is empty"),
            (1, "unresolved differences remain; or an unknown merchant, a day in the future"),
            (2, "a bill could not be had (its reason printed), or a usage or configuration error"),
            note="with several merchants or days, the worst of their codes",
        ),
    )
    reconcile.add_argument(
        "--date",
        type=_day,
        metavar="YYYY-MM-DD",
        help="the Beijing day (default: yesterday in Asia/Shanghai; with --follow, the first day to run)",
    )
    reconcile.add_argument("--mchid", help="one merchant (default: every merchant that can call WeChat Pay)")
    reconcile.add_argument(
        "--json",
        action="store_true",
        help="the report as JSON (a list for several merchants or with --until; a line per run with --follow)",
    )
    how_long = reconcile.add_mutually_exclusive_group()
    how_long.add_argument(
        "--until",
        type=_day,
        metavar="YYYY-MM-DD",
        help="reconcile every day from --date to this one (included), with a progress bar on a terminal",
    )
    how_long.add_argument(
        "--follow",
        action="store_true",
        help="keep running: each day after 10:00 Beijing time for the day before; a bill not had retried every 30 min",
    )
    reconcile.set_defaults(func=cmd_reconcile)
