"""`payledger project` and `payledger reconcile`: the workers that follow the log.

(`payledger dispatch`, the third worker, sits with the other webhook commands in `cli.webhooks`.)
"""

from __future__ import annotations

import argparse
import threading

from api.bootstrap import Services
from cli.common import SubParsers, configure_logging, each_shard, load_shards

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


def cmd_reconcile(args: argparse.Namespace) -> int:
    shards = load_shards(args)
    configure_logging(shards[0].log_level if args.follow else "WARNING", shards[0].log_format)

    def reconcile(services: Services, stop: threading.Event) -> int:
        reconciler = services.reconciler
        if args.follow:
            reconciler.follow(stop, idle=args.interval, report=lambda c: print(c, flush=True))
            return 0
        changes = reconciler.run_pass()
        for change in changes:
            print(change)
        failed = sum(1 for c in changes if c.error)
        print(
            f"reconciled {len(changes)} order(s): {len(changes) - failed} queried or settled, {failed} failed "
            f"(retried later); open orders: {services.worklist.counts().get('open', 0)}"
        )
        return 0

    return each_shard(shards, reconcile, follow=args.follow)


def register(sub: SubParsers) -> None:
    reconcile = sub.add_parser("reconcile", help="query open orders whose callback has not come")
    reconcile.add_argument("--follow", action="store_true", help="keep running")
    reconcile.add_argument("--interval", type=float, default=1.0, help="idle wait between passes (--follow)")
    reconcile.set_defaults(func=cmd_reconcile)

    project = sub.add_parser("project", help="run the projection worker (one active per projection; others wait)")
    project.set_defaults(func=cmd_project)
