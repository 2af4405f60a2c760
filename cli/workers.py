"""`payledger project` and `payledger reconcile`: the workers that follow the log.

(`payledger dispatch`, the third worker, sits with the other webhook commands in `cli.webhooks`.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading

from api.bootstrap import Services
from cli.common import SubParsers, configure_logging, each_shard, load_shards
from cli.exits import FAILED, exit_codes
from cli.output import add_json_flag, emit_json
from projections.reconcile.reconciler import Change

__all__ = ["register"]


def cmd_project(args: argparse.Namespace) -> int:
    """The projections (orders view, outbox, unrouted notifications, activity), each exclusive by its own
    lock, for every shard; SIGTERM stops them cleanly."""
    shards = load_shards(args, require_merchant=False)
    configure_logging(shards[0].log_level, shards[0].log_format)

    def project(services: Services, stop: threading.Event) -> int:
        services.sync_endpoints()
        threads = services.projector_threads(stop)
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.5)
            if not stop.is_set() and not all(t.is_alive() for t in threads):
                stop.set()  # one projector failed: stop the others and exit, so a supervisor restarts them all
        return 0

    return each_shard(shards, project, follow=True)


def _line(change: Change, as_json: bool) -> str:
    return json.dumps(dataclasses.asdict(change), ensure_ascii=False) if as_json else str(change)


def cmd_reconcile(args: argparse.Namespace) -> int:
    shards = load_shards(args)
    configure_logging(shards[0].log_level if args.follow else "WARNING", shards[0].log_format)

    def reconcile(services: Services, stop: threading.Event) -> int:
        reconciler = services.reconciler
        if args.follow:
            reconciler.follow(stop, idle=args.interval, report=lambda c: print(_line(c, args.json), flush=True))
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

    return each_shard(shards, reconcile, follow=args.follow)


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
