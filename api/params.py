"""Request values that both the JSON API and the operator pages accept, checked the same way.

A bad value raises `InvalidRequest` with our own sentence, which the JSON API answers as it is
(api/errors.py) and a page turns into its own message.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection
from typing import Any

from starlette.requests import Request

from api.state import AppState
from ledger.errors import InvalidRequest
from ledger.settings import MerchantSettings

__all__ = [
    "BILL_DATE",
    "OUT_TRADE_NO",
    "SUB_MCHID",
    "bill_date_param",
    "combine_out_trade_no_param",
    "json_object_body",
    "mchid_param",
    "order_merchant",
    "order_sub_mchid",
    "out_trade_no_param",
    "sub_mchid_param",
    "sub_mchid_value",
]

# WeChat Pay's rule for a merchant's order number (a combined payment's combine_out_trade_no too).
OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*@]{6,32}")
# A sub-merchant's id is a merchant id, as WECHATPAY_SUB_MCHIDS lists them.
SUB_MCHID = re.compile(r"[0-9]{6,32}")
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


def sub_mchid_value(value: Any, *, blank: bool = True) -> str | None:
    """A sub-merchant's id as given (a query parameter, a JSON field), or None when none is given
    (absent or null; empty too when `blank`, as an HTML form sends an empty field)."""
    if value is None or (blank and value == ""):
        return None
    if not isinstance(value, str) or not SUB_MCHID.fullmatch(value):
        raise InvalidRequest("sub_mchid must be a merchant id of 6-32 digits")
    return value


def order_sub_mchid(merchant: MerchantSettings, given: Any, *, registering: bool = False) -> str | None:
    """Which sub-merchant an order of `merchant` is: required of a service provider (WECHATPAY_MODE=partner),
    refused for a direct merchant. `registering`: a new order must be of a sub-merchant the provider lists
    in WECHATPAY_SUB_MCHIDS, when it lists them (orders of others WeChat notifies are kept, and readable);
    it is a JSON field, never empty."""
    sub_mchid = sub_mchid_value(given, blank=not registering)
    if not merchant.partner:
        if sub_mchid is not None:
            raise InvalidRequest(f"sub_mchid is for service providers: merchant {merchant.mchid} is a direct merchant")
        return None
    if sub_mchid is None:
        raise InvalidRequest(
            f"sub_mchid is required: merchant {merchant.mchid} is a service provider (WECHATPAY_MODE=partner)"
        )
    if registering and merchant.sub_mchids is not None and sub_mchid not in merchant.sub_mchids:
        raise InvalidRequest(f"sub_mchid {sub_mchid} is not one of this service provider's WECHATPAY_SUB_MCHIDS")
    return sub_mchid


def sub_mchid_param(state: AppState, mchid: str, given: Any, *, registering: bool = False) -> str | None:
    """`order_sub_mchid` for configured merchant `mchid` (from `mchid_param`)."""
    return order_sub_mchid(state.merchants[mchid].settings, given, registering=registering)


def combine_out_trade_no_param(value: Any) -> str | None:
    """A combined payment's number, or None when the order is not a sub-order of one."""
    if value is None:
        return None
    if not isinstance(value, str) or not OUT_TRADE_NO.fullmatch(value):
        raise InvalidRequest("combine_out_trade_no must be 6-32 characters of letters, digits, _-|*@")
    return value


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


def order_merchant(state: AppState, params: Any) -> tuple[str, str | None]:
    """The merchant and sub-merchant of the order a request is about (`?mchid=&sub_mchid=`)."""
    mchid = mchid_param(state, params.get("mchid"))
    return mchid, sub_mchid_param(state, mchid, params.get("sub_mchid"))


async def json_object_body(
    request: Request, limit: int, allowed: Collection[str] | None, *, empty_is_none: bool = False
) -> dict[str, Any]:
    """A request's JSON object of at most `limit` bytes, with only `allowed` fields when those are given
    (`empty_is_none`: an empty body is ``{}``)."""
    raw = await request.body()
    if len(raw) > limit:
        raise InvalidRequest("body too large")
    try:
        body = json.loads(b"{}" if empty_is_none and not raw else raw)
    except ValueError:
        raise InvalidRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    unknown = sorted(set(body) - set(allowed)) if allowed is not None else []
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:40]!r}")
    return body
