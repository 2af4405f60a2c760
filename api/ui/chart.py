"""The overview's chart: callbacks per minute over the last 24 hours, one line per outcome, as SVG.

Drawn here as numbers (a polyline's points per outcome) for the template to write into an inline
``<svg>``: no script, no inline style (the pages' CSP forbids both), colours from ui.css by class.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from api.ui.formatting import BEIJING

__all__ = ["HEIGHT", "MINUTES", "CallbackChart", "Series", "callback_chart"]

MINUTES = 24 * 60
HEIGHT = 200  # the chart's drawing units: x is the minute (0..1439), y counts down from HEIGHT
# Drawn in this order, so the usual one (accepted) is underneath the rarer ones.
_FIRST = ("accepted", "duplicate")


@dataclass(frozen=True)
class Series:
    outcome: str
    total: int
    peak: int
    points: str  # "x,y x,y …" for <polyline points=…>


@dataclass(frozen=True)
class CallbackChart:
    first_minute: int  # Unix time // 60 of the chart's left edge
    peak: int  # the busiest minute of any outcome: the top of the chart
    series: list[Series]
    ticks: list[tuple[int, str]]  # (x, "HH:MM" Beijing time)

    @property
    def total(self) -> int:
        return sum(s.total for s in self.series)


def callback_chart(counts: dict[tuple[int, str], int], now: float) -> CallbackChart:
    """The chart of `counts` ((minute, outcome) -> callbacks) for the 24 hours up to `now`."""
    last = int(now // 60)
    first = last - MINUTES + 1
    per_outcome: dict[str, list[int]] = {}
    for (minute, outcome), n in counts.items():
        if first <= minute <= last:
            per_outcome.setdefault(outcome, [0] * MINUTES)[minute - first] += n
    peak = max((max(values) for values in per_outcome.values()), default=0)
    order = sorted(per_outcome, key=lambda o: (o not in _FIRST, _FIRST.index(o) if o in _FIRST else 0, o))
    series = [_series(outcome, per_outcome[outcome], peak) for outcome in order]
    return CallbackChart(first, peak, series, _ticks(first))


def _series(outcome: str, values: list[int], peak: int) -> Series:
    scale = HEIGHT / peak if peak else 0.0
    # A run of equal minutes is drawn as its two ends: a quiet day is a few points, not 1,440.
    points: list[str] = []
    for x, n in enumerate(values):
        if 0 < x < len(values) - 1 and values[x - 1] == n == values[x + 1]:
            continue
        points.append(f"{x},{HEIGHT - n * scale:.1f}")
    return Series(outcome, sum(values), max(values), " ".join(points))


def _ticks(first_minute: int) -> list[tuple[int, str]]:
    """A label every 4 hours, on the Beijing hour."""
    start = dt.datetime.fromtimestamp(first_minute * 60, BEIJING)
    hour = start.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    ticks = []
    while (offset := int((hour - start).total_seconds() // 60)) < MINUTES:
        if hour.hour % 4 == 0:
            ticks.append((offset, hour.strftime("%H:%M")))
        hour += dt.timedelta(hours=1)
    return ticks
