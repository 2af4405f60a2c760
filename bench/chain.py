"""Cost of the hash chain per event, in the decide path a callback takes.

One run, same process, same data: an order is opened, registered and sent a real signed and
encrypted `TRANSACTION.SUCCESS` notification (Opened, Registered, NotificationReceived,
PaymentSucceeded: four events), first with the library's plain `trigger_event`/`_create`,
then with the chained ones. The difference per event is the chain's cost; `link()` alone is
also timed on the largest event (the notification with its raw body).

    python bench/chain.py [--orders 20000] [--rounds 5]

Target: under ~15 µs per event.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from eventsourcing.domain import Aggregate

from ledger.application import evidence_from
from ledger.domain import PaymentOrder
from ledger.hashchain import GENESIS, ChainedAggregate, event_fields, link
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory

MCHID = "1900000109"


def decide(orders: int, evidence: Any) -> int:
    events = 0
    for i in range(orders):
        order = PaymentOrder.open(MCHID, f"BENCH-{i}")
        order.register(100, "CNY", "tea")
        order.receive(evidence)
        events += len(order.collect_events())
    return events


def best_per_event(run: Callable[[], int], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        events = run()
        best = min(best, (time.perf_counter() - started) / events)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    factory = NotificationFactory(mchid=MCHID)
    delivery = factory.paid("BENCH-0", 100)
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    evidence = evidence_from(verifier.verify(delivery.headers, delivery.body))
    print(
        f"parameters: {args.orders} orders x 4 events, best of {args.rounds} rounds; "
        f"notification raw body {len(delivery.body)} bytes"
    )

    chained_trigger, chained_create = ChainedAggregate.trigger_event, ChainedAggregate.__dict__["_create"]
    ChainedAggregate.trigger_event = Aggregate.trigger_event  # type: ignore[method-assign]
    ChainedAggregate._create = Aggregate.__dict__.get("_create") or classmethod(  # type: ignore[method-assign]
        Aggregate._create.__func__  # type: ignore[attr-defined]
    )
    try:
        plain = best_per_event(lambda: decide(args.orders, evidence), args.rounds)
    finally:
        ChainedAggregate.trigger_event = chained_trigger  # type: ignore[method-assign]
        ChainedAggregate._create = chained_create  # type: ignore[method-assign]
    chained = best_per_event(lambda: decide(args.orders, evidence), args.rounds)

    order = PaymentOrder.open(MCHID, "BENCH-LINK")
    order.receive(evidence)
    received = next(e for e in order.collect_events() if type(e).__name__ == "NotificationReceived")
    fields = event_fields(received)
    n = args.orders * 4

    def links() -> int:
        for _ in range(n):
            link(GENESIS, type(received), fields)
        return n

    alone = best_per_event(links, args.rounds)

    print(f"without chain: {plain:6.2f} µs per event")
    print(f"with chain:    {chained:6.2f} µs per event  (+{chained - plain:.2f} µs)")
    print(f"link() on NotificationReceived alone: {alone:.2f} µs")


if __name__ == "__main__":
    main()
