"""Rebuild benchmark: `payledger rebuild`'s code over a whole log, against a bare read of the same log.

Seeds N events of payment orders (Opened, Registered, NotificationReceived, PaymentSucceeded:
four per order; notification events carry a real-sized raw body), then, in the same run and
alternating `--repeat` times:

* baseline: a bare sequential read of the same events (every column of every order event up to
  the head, in notification order, through a server-side cursor in pages of 10,000, nothing done
  with them): the least any replay of the log must do, on the same machine at the same moment;
* rebuild: `rebuild_orders_view` over the whole log (bulk phase: sequential read, fold, COPY;
  then catch-up and switch), with this process's resident memory sampled every 0.2 s to show it
  stays flat, and its CPU time per event (the figure that holds best on a noisy machine). The
  version it replaced is dropped after each round.

Optionally (`--runner-events N`) the library's per-event projection runner, one transaction per
event, timed over the first N events (it would take many minutes for all).

    python bench/rebuild.py [--events 1000000] [--store postgres|sqlite] [--repeat 3]
                            [--schema NAME] [--runner-events 0]

`--schema NAME` (PostgreSQL) keeps the seeded log in that schema for the next run, which reuses it
if it already holds N events: seeding 1,000,000 events takes minutes. Drop it when done
(`DROP SCHEMA NAME CASCADE`). Without it a fresh schema is made and dropped.

Target (PostgreSQL, 1,000,000 events, this 2-core machine): at least 50,000 events/s, memory flat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid

import psycopg
from memory import rss_mb  # bench/memory.py, beside this script
from seeding import POSTGRES_URL, callback_evidence, drop_scratch_store, scratch_store  # bench/seeding.py

from ledger.application import build_ledger
from ledger.domain import Evidence, PaymentOrder
from ledger.store.views import drop_view
from ledger.wechatpay.sandbox import resources
from ledger.wechatpay.sandbox.resources import Party
from projections.read_model.live import live_view
from projections.read_model.rebuild import RebuildSummary, rebuild_orders_view
from projections.read_model.runner import start_orders_projector, wake
from projections.read_model.view import ORDERS_VIEW, OrdersProjection

MCHID = "1900000109"
TARGET = 50_000.0
PAGE = 10_000


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


def logged(url: str) -> int:
    ledger = build_ledger(url)
    try:
        return ledger.recorder.max_notification_id() or 0
    finally:
        ledger.close()


def bare_read(schema: str | None, folder: str) -> tuple[int, float]:
    """Every order event, whole, in notification order, in pages: (events, seconds)."""
    topics = list(OrdersProjection.topics)
    started = time.perf_counter()
    events = 0
    if schema is not None:
        with psycopg.connect(POSTGRES_URL) as conn, conn.cursor("bare", binary=True) as cur:
            cur.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {schema}.ledger_events"
                " WHERE topic = ANY(%s) ORDER BY notification_id",
                [topics],
            )
            while page := cur.fetchmany(PAGE):
                events += len(page)
    else:
        conn = sqlite3.connect(f"{folder}/ledger.sqlite3")
        try:
            marks = ", ".join("?" * len(topics))
            cur = conn.execute(
                "SELECT originator_id, originator_version, topic, state FROM stored_events"
                f" WHERE topic IN ({marks}) ORDER BY rowid",
                topics,
            )
            while page := cur.fetchmany(PAGE):
                events += len(page)
        finally:
            conn.close()
    return events, time.perf_counter() - started


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
    drop_view(url, "bench_per_event_view", ("bench_per_event_view_orders", "bench_per_event_view_refunds"))
    return processed / elapsed


def rebuild(url: str) -> tuple[RebuildSummary, float, list[float], float, float]:
    """One rebuild: its summary, CPU seconds, RSS samples, RSS before and after (MB)."""
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    before = rss_mb()
    cpu = time.process_time()
    sampler.start()
    summary = rebuild_orders_view(url)
    cpu = time.process_time() - cpu
    done.set()
    sampler.join()
    # The version it replaced (and its tracking position) is not needed again.
    drop_view(url, summary.old, (f"{summary.old}_orders", f"{summary.old}_refunds"))
    return summary, cpu, samples, before, rss_mb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of baseline then rebuild")
    parser.add_argument("--schema", help="PostgreSQL: keep the seeded log in this schema and reuse it")
    parser.add_argument("--runner-events", type=int, default=0, help="time the per-event runner over N events")
    args = parser.parse_args()
    print(
        f"rebuild benchmark: {args.events:,} events on {args.store}; {args.repeat} rounds of a bare read, then "
        f"the rebuild; 2 CPUs shared with the database; Python {sys.version.split()[0]}"
    )
    tmp = tempfile.mkdtemp(prefix="payledger-rebuild-")
    keep = args.store == "postgres" and args.schema is not None
    if keep:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {args.schema}")
        url, schema = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={args.schema}", args.schema
    else:
        url, schema = scratch_store(args.store, tmp, f"bench_{uuid.uuid4().hex[:8]}")
    try:
        total = logged(url)
        if total and total != args.events:
            print(f"schema {schema} holds {total:,} events, not {args.events:,}: drop it or name another")
            return 2
        if total:
            print(f"reusing the {total:,} events in schema {schema}")
        else:
            started = time.perf_counter()
            total = seed(url, args.events)
            print(f"seeded {total:,} events in {time.perf_counter() - started:.0f} s")

        if args.runner_events:
            print(f"per-event runner: {per_event(url, args.runner_events):,.0f} events/s over {args.runner_events:,}")

        ratios, rates, cpus = [], [], []
        for round_ in range(1, args.repeat + 1):
            events, seconds = bare_read(schema, tmp)
            baseline = events / seconds
            print(f"round {round_}: bare read {events:,} events in {seconds:.1f} s ({baseline:,.0f} events/s)")
            summary, cpu, samples, before, after = rebuild(url)
            ratio = summary.events_per_second / baseline
            ratios.append(ratio)
            rates.append(summary.events_per_second)
            cpus.append(cpu / summary.events * 1e6)
            quarter = max(1, len(samples) // 4)
            early, late = max(samples[:quarter], default=before), max(samples[-quarter:], default=after)
            print(f"round {round_}: {summary}")
            print(
                f"round {round_}: rebuild/bare read {ratio:.2f}; {cpus[-1]:.1f} µs CPU per event in this process; "
                f"memory (RSS) {before:.0f} MB before, {max(samples, default=after):.0f} MB peak, "
                f"{early:.0f} MB peak in the first quarter, {late:.0f} MB in the last"
            )
        print(
            f"median of {args.repeat}: rebuild {statistics.median(rates):,.0f} events/s, "
            f"{statistics.median(ratios):.2f}× the bare read, {statistics.median(cpus):.1f} µs CPU per event; "
            f"live view {live_view(url, ORDERS_VIEW)}"
        )
        if args.store == "postgres":
            met = statistics.median(rates) >= TARGET
            print(f"target (>= {TARGET:,.0f} events/s on PostgreSQL, median): {'MET' if met else 'NOT MET'}")
    finally:
        if not keep:
            drop_scratch_store(schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
