"""How every `payledger` command prints: tables, JSON and progress bars, through rich.

- `table(rows, columns)`: on a terminal, a rich table (bold headers, states in colour); otherwise
  plain text in aligned columns two spaces apart, a header line first, no escape codes.
- `emit_json(data)`: one JSON document on stdout, what `--json` prints.
- `progress(total, description)`: a bar with the count, the rate and the ETA on stderr, only when
  stderr is a terminal; otherwise nothing (the command's own summary line says what was done).

"A terminal" is what rich decides for the stream: its `isatty()`, unless `FORCE_COLOR` (non-empty)
or `TTY_COMPATIBLE=1` says yes or `TTY_COMPATIBLE=0` says no; `NO_COLOR` keeps a terminal
colourless. Every function also takes `terminal=` to decide it (tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from api.responses import to_jsonable
from projections.timeline import printable

__all__ = ["Column", "ProgressBar", "add_json_flag", "emit_json", "progress", "table"]

GOOD, BAD, WARN = "green", "bold red", "yellow"
"""The colours of states on a terminal, for `Column.styles`."""


@dataclass(frozen=True)
class Column:
    """A table column: its header, its alignment, the colour of some of its values on a terminal, and
    whether a narrow terminal may fold its values (not an id: it is copied whole into the next command)."""

    header: str
    justify: Literal["left", "right"] = "left"
    styles: Mapping[str, str] = field(default_factory=dict)
    fold: bool = True


def _cell(value: object) -> str:
    # Cells often hold what came from outside (URLs, reasons, order numbers): never let a control
    # character steer the terminal.
    return "" if value is None else printable(str(value))


def table(
    rows: Iterable[Sequence[object]],
    columns: Sequence[str | Column],
    *,
    terminal: bool | None = None,
) -> None:
    """Print `rows` under `columns` on stdout (`None` prints as an empty cell)."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[_cell(value) for value in row] for row in rows]
    console = Console(file=sys.stdout, force_terminal=terminal, highlight=False)
    if not console.is_terminal:
        print(plain_table(cells, cols))
        return
    grid = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for col in cols:
        grid.add_column(col.header, justify=col.justify, overflow="fold", no_wrap=not col.fold)
    for row in cells:
        # Text, not markup: a "[" in a value is a character, never a style.
        grid.add_row(*(Text(value, style=col.styles.get(value, "")) for value, col in zip(row, cols, strict=True)))
    console.print(grid)


def plain_table(rows: Sequence[Sequence[str]], columns: Sequence[Column]) -> str:
    """Rows in columns two spaces apart, a header line first; widths in terminal cells (汉字 count two)."""
    lines = [[c.header for c in columns], *rows]
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(columns))]
    out = []
    for line in lines:
        parts = []
        for value, width, col in zip(line, widths, columns, strict=True):
            pad = " " * (width - cell_len(value))
            parts.append(pad + value if col.justify == "right" else value + pad)
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def emit_json(data: Any) -> None:
    """One JSON document on stdout (datetimes as ISO 8601, sets sorted, Chinese as it is)."""
    print(json.dumps(to_jsonable(data), ensure_ascii=False, indent=2))


def add_json_flag(parser: argparse.ArgumentParser, what: str = "one JSON document instead of text") -> None:
    """The `--json` option, the same on every command that prints data."""
    parser.add_argument("--json", action="store_true", help=what)


class _Rate(ProgressColumn):
    """Items per second, the rate over the last few updates (rich keeps it per task)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        rate = "?" if speed is None else f"{speed:,.0f}"
        return Text(f"{rate} {self.unit}/s", style="progress.data.speed")


class ProgressBar:
    """What `progress()` yields: tell it how far the work is. Does nothing when nothing is shown."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar = bar
        self._task = task

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, completed: int, total: int | None = None) -> None:
        """`completed` of `total` done (`total` also changes the bar's end when given)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=completed, total=total)

    def advance(self, step: int = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, step)

    def finish(self) -> None:
        if self._bar is not None and self._task is not None:
            total = next(t.total for t in self._bar.tasks if t.id == self._task)
            if total is not None:
                self._bar.update(self._task, completed=total)


@contextmanager
def progress(
    total: int | None, description: str, *, unit: str = "items", terminal: bool | None = None
) -> Iterator[ProgressBar]:
    """A progress bar on stderr (count, rate, ETA) while the block runs, if stderr is a terminal.

    Left normally, the bar is shown full: the work is done even when the count fell short of the
    estimate (a log's head counts events no one reads)."""
    console = Console(file=sys.stderr, force_terminal=terminal)
    if not console.is_terminal:
        yield ProgressBar()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        _Rate(unit),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        shown = ProgressBar(bar, bar.add_task(description, total=total))
        yield shown
        shown.finish()
