"""An order as the orders view has it, if the view's copy is current: what `GET /orders/{no}` serves.

The copy is current when it is at the version of the newest event of the order's stream: then it
holds every event committed before the read, wherever the view is in the rest of the log (other
orders' events it has yet to apply do not matter to this one). On PostgreSQL, where the view sits
beside the events, one statement reads the stream's version and the copy (one snapshot, one round
trip). On SQLite, where the view has a file of its own, the stream's version is read first, then
the copy: a copy at that version or past it still holds every event committed before the read.
"""

from __future__ import annotations

import json
from typing import Any

from ledger.application import Ledger
from ledger.identity import order_id
from projections.read_model.view import OrdersView

__all__ = ["current_copy"]

_BOTH = (
    "SELECT s.version, o.version, o.document FROM (SELECT (SELECT originator_version FROM {events}"
    " WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1) AS version) AS s"
    " LEFT JOIN {orders} o ON o.mchid = %s AND o.sub_mchid = %s AND o.out_trade_no = %s"
)


def current_copy(
    view: OrdersView | None, ledger: Ledger, mchid: str, out_trade_no: str, sub_mchid: str | None = None
) -> tuple[int | None, dict[str, Any] | None]:
    """(the version of the order's newest event, None when there is no such order; the view's
    document of the order when it is at least at that version, else None). A view of an earlier
    layout (`outdated`) is not read."""
    stream_id = order_id(mchid, out_trade_no, sub_mchid)
    if view is None or view.outdated:
        return ledger.event_log.stream_version(stream_id), None
    if view.dialect == "postgres":
        slots = {"events": view.qualify(ledger.event_log.events_table_name), "orders": view.qualify(view.orders_table)}
        rows = view.query(view.sql(_BOTH, **slots), [stream_id, mchid, sub_mchid or "", out_trade_no])
        newest, version, document = rows[0]
        current = newest is not None and version is not None and version >= newest
        return newest, json.loads(document) if current else None
    newest = ledger.event_log.stream_version(stream_id)
    if newest is None:
        return None, None
    found = view.document(mchid, out_trade_no, sub_mchid)
    return newest, found[1] if found is not None and found[0] >= newest else None
