"""The SQL the read models' views write alike: an upsert by key, a query's optional filters.

Written with the views' `{slot}` table names and `%s` placeholders (`ViewRecorder.sql` fills both in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["filters", "upsert", "where"]


def upsert(table: str, fields: Sequence[str], key: Sequence[str], updates: Sequence[str]) -> str:
    """Insert a row of `fields` into the `{table}` slot; a row already there by `key` takes the new `updates`."""
    return (
        f"INSERT INTO {{{table}}} ({', '.join(fields)}) VALUES ({', '.join(['%s'] * len(fields))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(f'{name} = excluded.{name}' for name in updates)}"
    )


def filters(*conditions: tuple[str, Any]) -> tuple[list[str], list[Any]]:
    """The clauses (each with one %s) whose value is given (not None), and those values."""
    given = [(clause, value) for clause, value in conditions if value is not None]
    return [clause for clause, _ in given], [value for _, value in given]


def where(clauses: Sequence[str]) -> str:
    """` WHERE` all of `clauses`, or nothing when there are none."""
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""
