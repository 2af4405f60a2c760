"""A daily bill kept as evidence: WeChat Pay's own account of a day, stored once, never changed.

One stream per (mchid, bill day, kind) ([protocol: Keeping a bill]): `Opened`, then either the
bill's gzip-compressed bytes as `ChunkStored` events and `Fetched` with the SHA-1 and size of the
decompressed bill, or `FoundEmpty` for a day WeChat answered NO_STATEMENT_EXIST. All of a
stream's events are appended in one transaction, so a stream holds a whole bill or nothing.
Once a stream is `Fetched` or `FoundEmpty`, storing again changes nothing: fetching the same
bill twice is a no-op. Like an order's stream, every event is hash-chained; `payledger verify`
re-hashes the decompressed chunks against `Fetched.sha1` as well.

The event classes' topics (`ledger.statements:BillStatement.<Event>`) are stored with the events:
never rename them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Literal, get_args

from eventsourcing.domain import Aggregate

from ledger.errors import InvalidRequest
from ledger.hashchain import ChainedAggregate

__all__ = [
    "BILL_KINDS",
    "BILL_STATEMENT_EVENTS",
    "STATEMENT_NAMESPACE",
    "BillKind",
    "BillStatement",
    "bill_statement_id",
]

BillKind = Literal["trade", "fundflow"]
BILL_KINDS: tuple[BillKind, ...] = get_args(BillKind)

# The bills' own namespace, not the orders' (ledger.domain.NAMESPACE): a bill's stream id can never
# equal an order's or an inbox's, whatever the names. Fixed forever: it derives every stored id.
STATEMENT_NAMESPACE = uuid.UUID("a3932d27-032b-4eea-8303-e6b7a4959049")
# NUL cannot occur in an mchid, an ISO date or a kind, so ("ab","c") != ("a","bc").
_SEP = "\x00"


def _checked_kind(kind: str) -> BillKind:
    for known in BILL_KINDS:
        if kind == known:
            return known
    raise InvalidRequest(f"bill kind must be one of {', '.join(BILL_KINDS)}")


def bill_statement_id(mchid: str, bill_date: dt.date, kind: str) -> uuid.UUID:
    """The stream of one merchant's bill of one kind for one Beijing day."""
    return uuid.uuid5(STATEMENT_NAMESPACE, f"bill{_SEP}{mchid}{_SEP}{bill_date.isoformat()}{_SEP}{_checked_kind(kind)}")


class BillStatement(ChainedAggregate):
    """One daily bill (mchid, bill day, kind): its bytes and hash, or the fact that the day was empty.

    The aggregate keeps only counts and the hash, never the chunks' data: replaying a large bill
    costs its events' decoding, not their bytes in memory.
    """

    class Opened(Aggregate.Created):
        mchid: str
        bill_date: str  # ISO YYYY-MM-DD, a Beijing day
        kind: str  # a BillKind

    def __init__(self, mchid: str, bill_date: str, kind: str) -> None:
        self.mchid = mchid
        self.bill_date = bill_date
        self.kind = kind
        self.chunks = 0
        self.sha1: str | None = None
        self.size: int | None = None
        self.fetched_at: dt.datetime | None = None
        self.empty = False

    @classmethod
    def open(cls, mchid: str, bill_date: dt.date, kind: str) -> BillStatement:
        return cls._create(
            cls.Opened,
            id=bill_statement_id(mchid, bill_date, kind),
            mchid=mchid,
            bill_date=bill_date.isoformat(),
            kind=_checked_kind(kind),
        )

    @property
    def settled(self) -> bool:
        """Whether the bill (or the day's emptiness) is recorded; nothing is stored after that."""
        return self.sha1 is not None or self.empty

    # -- events --------------------------------------------------------------------------

    class ChunkStored(Aggregate.Event):
        index: int  # 0-based; the chunks in order are one gzip stream
        data: str  # base64 of at most 1 MiB of that gzip stream

        def apply(self, statement: BillStatement) -> None:
            statement.chunks += 1

    class Fetched(Aggregate.Event):
        sha1: str  # of the decompressed bill, lowercase hex, as WeChat's hash_value
        size: int  # of the decompressed bill, in bytes
        chunks: int
        fetched_at: dt.datetime

        def apply(self, statement: BillStatement) -> None:
            statement.sha1 = self.sha1
            statement.size = self.size
            statement.fetched_at = self.fetched_at

    class FoundEmpty(Aggregate.Event):
        fetched_at: dt.datetime

        def apply(self, statement: BillStatement) -> None:
            statement.empty = True
            statement.fetched_at = self.fetched_at

    # -- commands ------------------------------------------------------------------------

    def store(self, chunks: Sequence[str], *, sha1: str, size: int, fetched_at: dt.datetime) -> bool:
        """Record the bill's compressed chunks and then its hash; False when already settled."""
        if self.settled:
            return False
        if not chunks and not self.chunks:
            raise ValueError("a stored bill has at least one chunk (the gzip stream's header)")
        self.add_chunks(chunks)
        self.trigger_event(self.Fetched, sha1=sha1.lower(), size=size, chunks=self.chunks, fetched_at=fetched_at)
        return True

    def add_chunks(self, chunks: Sequence[str]) -> None:
        """Record the next of the bill's compressed chunks: a large bill is kept a slice at a time,
        and is kept (`settled`) only once `store` has recorded its hash after the last one."""
        if self.settled:
            raise ValueError("the bill is kept already: nothing is added to it")
        for data in chunks:
            self.trigger_event(self.ChunkStored, index=self.chunks, data=data)

    def record_empty(self, fetched_at: dt.datetime) -> bool:
        """Record that WeChat has no bill for the day (NO_STATEMENT_EXIST); False when already settled."""
        if self.settled:
            return False
        self.trigger_event(self.FoundEmpty, fetched_at=fetched_at)
        return True


# Every event a BillStatement stream can hold, named once (tests/test_event_lists.py keeps it so).
# None of them is an order's: the read model, webhooks, metrics and the events API follow only
# ledger.domain's lists, and `payledger verify` walks these streams by their topic prefix.
BILL_STATEMENT_EVENTS: tuple[type[Aggregate.Event], ...] = (
    BillStatement.Opened,
    BillStatement.ChunkStored,
    BillStatement.Fetched,
    BillStatement.FoundEmpty,
)
