"""Request values that both the JSON API and the operator pages accept, checked the same way.

A bad value raises `InvalidRequest` with our own sentence, which the JSON API answers as it is
(api/errors.py) and a page turns into its own message.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from api.state import AppState
from ledger.errors import InvalidRequest

__all__ = ["BILL_DATE", "OUT_TRADE_NO", "bill_date_param", "mchid_param", "out_trade_no_param"]

# WeChat Pay's rule for a merchant's order number.
OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*@]{6,32}")
# A bill's day as WeChat Pay writes it (`bill_date`): a Beijing calendar day.
BILL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def mchid_param(state: AppState, given: Any) -> str:
    """The merchant a request means: the one it names, or the only one configured when it names none."""
    if given is None or given == "":
        if len(state.merchants) != 1 or state.default_mchid is None:
            raise InvalidRequest("mchid is required when several merchants are configured")
        return state.default_mchid
    if not isinstance(given, str) or given not in state.merchants:
        raise InvalidRequest("unknown mchid")
    return given


def out_trade_no_param(value: Any) -> str:
    if not isinstance(value, str) or not OUT_TRADE_NO.fullmatch(value):
        raise InvalidRequest("out_trade_no must be 6-32 characters of letters, digits, _-|*@")
    return value


def bill_date_param(value: Any) -> dt.date:
    """A bill's day, YYYY-MM-DD exactly (no other ISO 8601 spelling: it is WeChat's `bill_date`)."""
    if isinstance(value, str) and BILL_DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidRequest("bill_date must be a calendar day written YYYY-MM-DD")
