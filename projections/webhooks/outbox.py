"""The outbox on one store: its tables, and the three parts its callers use.

`endpoints` is the registry and the operator log, `messages` the queue as operators see it,
`leases` the dispatchers' protocol. Each part takes the same `ledger.store.sql.Database`; this
facade only creates the tables and holds the parts, so a caller that needs several (the
command line, a dispatcher, the app's metrics) builds one object. The caller owns the
database and closes it.
"""

from __future__ import annotations

from ledger.store.sql import Database
from projections.webhooks.endpoints import Endpoints
from projections.webhooks.leases import Leases
from projections.webhooks.messages import Messages
from projections.webhooks.schema import create_tables

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, database: Database) -> None:
        """The outbox on `database`, its tables created if missing."""
        with database.transaction() as cur:
            create_tables(cur, database)
        self.database = database
        self.endpoints = Endpoints(database)
        self.messages = Messages(database)
        self.leases = Leases(database)
