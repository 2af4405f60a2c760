"""`payledger project` and `payledger reconcile`: the workers that follow the log.

(`payledger dispatch`, the third worker, sits with the other webhook commands in `cli.webhooks`.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from cli.common import SubParsers, configure_logging, load_settings, services_for, stop_on_signals
from cli.exits import FAILED, exit_codes
from cli.output import add_json_flag, emit_json
from projections.reconcile.reconciler import Change

__all__ = ["register"]


def cmd_project(args: argparse.Namespace) -> int:
    """The projections (orders view, outbox, unrouted notifications), each exclusive by its own lock;
    SIGTERM stops them cleanly."""
    settings = load_settings(args, require_merchant=False)
    configure_logging(settings.log_level, settings.log_format)
    with services_for(settings) as services:
        services.sync_endpoints()
        stop = stop_on_signals()
        threads = services.projector_threads(stop)
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.5)
            if not stop.is_set() and not all(t.is_alive() for t in threads):
                stop.set()  # one projector failed: stop the others and exit, so a supervisor restarts them all
    return 0


def _line(change: Change, as_json: bool) -> str:
    return json.dumps(dataclasses.asdict(change), ensure_ascii=False) if as_json else str(change)


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    configure_logging(settings.log_level if args.follow else "WARNING", settings.log_format)
    with services_for(settings) as services:
        reconciler = services.reconciler
        if args.follow:
            reconciler.follow(
                stop_on_signals(), idle=args.interval, report=lambda c: print(_line(c, args.json), flush=True)
            )
            return 0
        changes = reconciler.run_pass()
        failed = sum(1 for c in changes if c.error)
        still_open = services.worklist.counts().get("open", 0)
        if args.json:
            emit_json(
                {
                    "changes": [dataclasses.asdict(c) for c in changes],
                    "reconciled": len(changes),
                    "failed": failed,
                    "open": still_open,
                }
            )
            return 0
        for change in changes:
            print(change)
        print(
            f"reconciled {len(changes)} order(s): {len(changes) - failed} queried or settled, {failed} failed "
            f"(retried later); open orders: {still_open}"
        )
        return 0


def register(sub: SubParsers) -> None:
    reconcile = sub.add_parser(
        "reconcile",
        help="query open orders whose callback has not come",
        epilog=exit_codes((0, "the pass ran, even if some queries failed (they are retried)"), FAILED),
    )
    reconcile.add_argument("--follow", action="store_true", help="keep running")
    reconcile.add_argument("--interval", type=float, default=1.0, help="idle wait between passes (--follow)")
    add_json_flag(
        reconcile, 'print {"changes", "reconciled", "failed", "open"}; with --follow, one JSON line per change'
    )
    reconcile.set_defaults(func=cmd_reconcile)

    project = sub.add_parser(
        "project",
        help="run the projection worker (one active per projection; others wait)",
        epilog=exit_codes((0, "stopped by SIGTERM or ctrl-C, or one projection failed (restart it)"), FAILED),
    )
    project.set_defaults(func=cmd_project)
