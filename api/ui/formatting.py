"""How the operator pages write times and money: Beijing time with its offset, fen as yuan."""

from __future__ import annotations

import datetime as dt

from ledger.wechatpay.bills import BEIJING

__all__ = ["BEIJING", "beijing", "beijing_day", "yuan"]


def _moment(at: float | dt.datetime | str | None) -> dt.datetime | None:
    if at is None or at == "":
        return None
    if isinstance(at, str):
        try:
            at = dt.datetime.fromisoformat(at)
        except ValueError:
            return None
    if isinstance(at, dt.datetime):
        return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(at, dt.UTC)


def beijing(at: float | dt.datetime | str | None) -> str:
    """'2026-12-03 19:20:01 +08:00' (Asia/Shanghai, the offset written); '—' for nothing. A text that is
    not a time is shown as it is."""
    moment = _moment(at)
    if moment is None:
        return at if isinstance(at, str) and at else "—"
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S +08:00")


def beijing_day(at: float) -> dt.date:
    """The Beijing day of the Unix time `at`."""
    return dt.datetime.fromtimestamp(at, BEIJING).date()


def yuan(fen: int | None) -> str:
    """¥1,234.56 for 123456 fen (integer arithmetic: no float ever touches money)."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"
