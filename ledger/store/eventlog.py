"""What the project reads from the event log beyond the library's recorder interface.

The library offers reads by stream and by notification id. The ledger and its projections
also need one read of many streams (the group committer), a sequential bulk read (a
rebuild), counts over a range of the log (metrics, readiness), the newest event of some topics
(how far a projection must get), a stream's newest version (how far a view's
copy of it must get) and a nudge for waiting subscribers. `EventLog` declares them
once; each of our recorders (`ledger.store.postgres`, `ledger.store.sqlite`) implements them
in its own SQL, so no code outside the store writes any against the library's tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from uuid import UUID

__all__ = ["EventLog", "Row"]

Row = tuple[Any, int, str, bytes]  # originator_id, originator_version, topic, state


class EventLog:
    """The reads both stores answer, each in its own dialect."""

    # Whether `select_pages` honours `heads` (PostgreSQL does; SQLite reads whole rows anyway).
    cuts_heads: ClassVar[bool]
    # The events table, as the library's recorder names it (unqualified): a view beside the events
    # may read a stream's version in its own statement (`projections.read_model.current`).
    events_table_name: str

    def select_streams(self, ids: Sequence[UUID]) -> list[Row]:
        """Every event of the streams `ids`, by stream and version."""
        raise NotImplementedError

    def select_pages(
        self, stop: int, topics: Sequence[str], *, page: int, heads: tuple[str, int] | None = None
    ) -> Iterator[list[Row]]:
        """The events of `topics` with a notification id up to `stop`, in notification order,
        one window of `page` ids at a time (a sequential read; a window may come back empty and
        is then skipped). With ``heads=(topic, n)`` that topic's states may come cut to their
        first n bytes: see `cuts_heads`."""
        raise NotImplementedError

    def last_id(self, topics: Sequence[str]) -> int:
        """The notification id of the newest event of `topics` (0 when there is none).

        What a projection that follows only `topics` must reach to have seen the whole log: its
        tracking position never passes the last event it follows, so `max_notification_id()`,
        which counts every topic (bills, the inbox), can stay out of its reach for ever.

        Remembered per set of topics, and later only the events appended since are read: for a
        rare topic (an unrouted notification, an operator's action) the first answer reads the whole
        log backwards, every later one only what is new. Ids are committed in order on both stores
        (the table lock; SQLite's one writer), so nothing can appear below an id already read past."""
        key = tuple(sorted(topics))
        heads: dict[tuple[str, ...], tuple[int, int]] = self.__dict__.setdefault("_last_ids", {})
        scanned, found = heads.get(key, (0, 0))
        top = self.max_notification_id() or 0
        if top > scanned:
            found = max(found, self._newest(topics, scanned, top))
            if top > heads.get(key, (0, 0))[0]:  # another thread may have read further meanwhile
                heads[key] = (top, found)
        return found

    def max_notification_id(self) -> int | None:
        raise NotImplementedError  # the library's recorders have it

    def _newest(self, topics: Sequence[str], after: int, upto: int) -> int:
        """The notification id of the newest event of `topics` in ``(after, upto]`` (0: none)."""
        raise NotImplementedError

    def stream_version(self, stream_id: UUID) -> int | None:
        """The version of the newest event of stream `stream_id` (None: no such stream), read
        without the events themselves: what a view's copy of the stream must have reached."""
        raise NotImplementedError

    def count_by_topic(self, after: int, upto: int, topics: Sequence[str]) -> dict[str, int]:
        """How many events of each of `topics` have a notification id in ``(after, upto]``."""
        rows = self._select_in_range(
            "SELECT topic, COUNT(*) FROM {events} WHERE {where} GROUP BY topic", after, upto, topics
        )
        return {row[0]: int(row[1]) for row in rows}

    def count_in_range(self, after: int, upto: int, topics: Sequence[str], cap: int) -> int:
        """How many events of `topics` have a notification id in ``(after, upto]``, counted up to `cap`."""
        template = "SELECT COUNT(*) FROM (SELECT 1 FROM {events} WHERE {where} LIMIT {p}) AS pending"
        rows = self._select_in_range(template, after, upto, topics, cap)
        return int(rows[0][0]) if rows else 0

    def wake_subscribers(self) -> None:
        """Wake subscriptions waiting for new events (so a stopping one notices it is stopped)."""
        raise NotImplementedError

    def _select_in_range(
        self, template: str, after: int, upto: int, topics: Sequence[str], *extra: Any
    ) -> list[tuple[Any, ...]]:
        """Rows of `template` over the events of `topics` with a notification id in ``(after, upto]``.

        The template names the table `{events}`, the range and topic condition `{where}` and each
        further parameter `{p}`; each store gets its own spelling of them."""
        raise NotImplementedError
