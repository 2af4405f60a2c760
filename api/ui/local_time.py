"""Times as operators in China read them: Asia/Shanghai (UTC+8, no summer time), the offset always shown."""

from __future__ import annotations

import datetime as dt

from ledger.wechatpay.bills import BEIJING

__all__ = ["day_start", "shanghai"]


def shanghai(at: float | dt.datetime | None) -> str:
    """`2026-12-03 09:15:02 +08:00`; "—" for no time."""
    if at is None:
        return "—"
    when = at if isinstance(at, dt.datetime) else dt.datetime.fromtimestamp(at, dt.UTC)
    local = when.astimezone(BEIJING)
    offset = local.isoformat()[-6:]  # "+08:00" (strftime's %:z is Python 3.12's)
    return f"{local:%Y-%m-%d %H:%M:%S} {offset}"


def day_start(day: dt.date) -> float:
    """Epoch seconds of midnight beginning `day` in Shanghai."""
    return dt.datetime.combine(day, dt.time(), BEIJING).timestamp()
