"""Rebuild benchmark: the batched blue/green rebuild against the library's per-event runner.

Seeds N events of payment orders (Opened, Registered, NotificationReceived, PaymentSucceeded:
four per order; notification events carry a real-sized raw body), then in the same run:

* per-event: the `eventsourcing` projection runner building a fresh view, one transaction per
  event, timed over the first `--runner-events` events (it would take minutes for all);
* rebuild: `payledger rebuild`'s code path over the whole log (bulk phase: stream-ordered read,
  batched writes, one tracking position), with the process's resident memory sampled every
  0.2 s to show it stays flat.

    python bench/rebuild.py [--events 1000000] [--store postgres|sqlite] [--runner-events 20000]

Target (PostgreSQL, this 2-core machine): at least 20,000 events/s for the rebuild.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import tempfile
import threading
import time
import uuid

from memory import rss_mb  # bench/memory.py, beside this script
from seeding import callback_evidence, drop_scratch_store, scratch_store  # bench/seeding.py, beside this script

from ledger.application import build_ledger
from ledger.domain import Evidence, PaymentOrder
from ledger.wechatpay.sandbox import resources
from ledger.wechatpay.sandbox.resources import Party
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import start_orders_projector, wake

MCHID = "1900000109"
TARGET = 20_000.0


def evidence(no: str) -> Evidence:
    resource = resources.transaction(
        Party(MCHID, "wxd678efh567hg6787"),
        no,
        100,
        transaction_id="42" + hashlib.sha256(no.encode()).hexdigest()[:26],
        success_time="2026-11-27T10:34:56+08:00",
    )
    return callback_evidence(
        str(uuid.uuid4()),
        "TRANSACTION.SUCCESS",
        resource,
        create_time="2026-11-27T10:34:56+08:00",
        received_at=dt.datetime.now(dt.UTC),
        resource_digest=hashlib.sha256(no.encode()).hexdigest(),
    )


def seed(url: str, events: int) -> int:
    ledger = build_ledger(url)
    orders = events // 4
    started = time.perf_counter()
    batch = []
    for i in range(orders):
        order = PaymentOrder.open(MCHID, f"R{i:010d}")
        order.register(100, "CNY", "")
        order.receive(evidence(f"R{i:010d}"))
        batch.append(order)
        if len(batch) == 500:
            ledger.save_all(batch)
            batch = []
        if i % 25_000 == 0 and i:
            rate = i * 4 / (time.perf_counter() - started)
            print(f"  seeded {i * 4:,} events ({rate:,.0f}/s)", file=sys.stderr)
    ledger.save_all(batch)
    total = ledger.recorder.max_notification_id() or 0
    ledger.close()
    return total


def per_event(url: str, limit: int) -> float:
    """Events/s of the library's runner building a fresh view, over the first `limit` events."""
    runner, view, loader = start_orders_projector(url, name="bench_per_event_view")
    target = min(limit, loader.recorder.max_notification_id() or 0)
    started = time.perf_counter()
    with runner:
        runner.wait(target, timeout=3600)
        elapsed = time.perf_counter() - started
        runner.stop()
        wake(loader)
    processed = view.position()
    loader.close()
    view.datastore.close()  # type: ignore[attr-defined]
    return processed / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--runner-events", type=int, default=20_000)
    args = parser.parse_args()
    print(
        f"rebuild benchmark: {args.events:,} events on {args.store}; per-event runner timed over "
        f"{args.runner_events:,} events; 2 CPUs shared with the database; Python {sys.version.split()[0]}"
    )
    tmp = tempfile.mkdtemp(prefix="payledger-rebuild-")
    url, schema = scratch_store(args.store, tmp, f"bench_{uuid.uuid4().hex[:8]}")
    try:
        started = time.perf_counter()
        total = seed(url, args.events)
        print(f"seeded {total:,} events in {time.perf_counter() - started:.0f} s")

        runner_rate = per_event(url, args.runner_events)
        print(f"per-event runner: {runner_rate:,.0f} events/s")

        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                samples.append(rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        before = rss_mb()
        sampler.start()
        summary = rebuild_orders_view(url)
        done.set()
        sampler.join()
        after = rss_mb()
        print(summary)
        quarter = max(1, len(samples) // 4)
        early, late = max(samples[:quarter], default=before), max(samples[-quarter:], default=after)
        print(
            f"memory (RSS): {before:.0f} MB before, {max(samples, default=after):.0f} MB peak, "
            f"{early:.0f} MB peak in the first quarter, {late:.0f} MB in the last, {after:.0f} MB after"
        )
        ratio = summary.events_per_second / runner_rate if runner_rate else float("inf")
        print(f"rebuild/per-event: {ratio:.1f}x")
        if args.store == "postgres":
            met = summary.events_per_second >= TARGET
            print(f"target (>= {TARGET:,.0f} events/s on PostgreSQL): {'MET' if met else 'NOT MET'}")
    finally:
        drop_scratch_store(schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
