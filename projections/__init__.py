"""Everything derived from the event log, each rebuildable from it.

    read_model/   the orders view: projection, projector, blue/green rebuild, the live pointer
    webhooks/     outbound notifications: the outbox, its projection, the dispatcher, signing
    reconcile/    the worklist of orders whose callback has not come, and the reconciler
    timeline.py   one order's history for an auditor (payledger history, the /ui pages)
    log_counts.py decisions counted from the log (for /metrics)
    locks.py      one active projector per projection

It imports `ledger` only (tests/test_layers.py).
"""
