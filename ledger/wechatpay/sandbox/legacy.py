"""Legacy APIv2 XML notifications as WeChat Pay sends them ([protocol: Legacy APIv2 XML]), built with the
protocol's own primitives (`ledger.wechatpay.v2`): a payment signed with the merchant's APIv2 key (MD5 by
default, HMAC-SHA256 when `sign_type` says so), and a refund whose `req_info` is encrypted with it.

Fields are in ASCII order, every value in CDATA; the decrypted `req_info` is laid out as a real
callback's (vector T1: one element a line, no newline after `</root>`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import string
from collections.abc import Mapping
from typing import Any

from ledger.wechatpay.sandbox.resources import OPENID, Party, Promotion
from ledger.wechatpay.v2 import MD5, SIGN_TYPES, answer_xml, encrypt_req_info, sign_v2, to_xml

__all__ = [
    "REFUND_STATUSES",
    "SUCCESS_ANSWER",
    "nonce_str",
    "payment_fields",
    "random_v2_key",
    "refund_fields",
    "refund_xml",
    "req_info_plaintext",
    "signed_xml",
]

CST = dt.timezone(dt.timedelta(hours=8))
SUCCESS_ANSWER = answer_xml(True)
"""The only answer that acknowledges an APIv2 notification (with HTTP 200)."""
REFUND_STATUSES = {"SUCCESS": "SUCCESS", "CLOSED": "REFUNDCLOSE", "ABNORMAL": "CHANGE"}
"""An APIv3 refund status and the APIv2 `refund_status` saying the same."""


def random_v2_key() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def nonce_str() -> str:
    return secrets.token_hex(16)


def _beijing(rfc3339: str, layout: str) -> str:
    return dt.datetime.fromisoformat(rfc3339).astimezone(CST).strftime(layout)


def payment_fields(
    party: Party,
    out_trade_no: str,
    total: int,
    *,
    transaction_id: str,
    success_time: str,
    nonce: str,
    payer_total: int | None = None,
    promotions: tuple[Promotion, ...] = (),
    attach: str = "",
    bank_type: str = "OTHERS",
    openid: str = OPENID,
    sign_type: str = MD5,
) -> dict[str, str]:
    """The fields of a payment notification but `sign` ([protocol: APIv2 payment notifications]); a partner's
    adds `sub_mch_id` (and `sub_appid`, `sub_openid` when the order named a sub_appid). Coupons are
    `coupon_*_$n`."""
    if sign_type not in SIGN_TYPES:
        raise ValueError(f"sign_type must be one of {SIGN_TYPES}")
    paid = total if payer_total is None else payer_total
    fields: dict[str, str] = {
        "appid": party.appid,
        "attach": attach,
        "bank_type": bank_type,
        "cash_fee": str(paid),
        "fee_type": "CNY",
        "is_subscribe": "N",
        "mch_id": party.mchid,
        "nonce_str": nonce,
        "openid": openid,
        "out_trade_no": out_trade_no,
        "result_code": "SUCCESS",
        "return_code": "SUCCESS",
        "time_end": _beijing(success_time, "%Y%m%d%H%M%S"),
        "total_fee": str(total),
        "trade_type": "JSAPI",
        "transaction_id": transaction_id,
    }
    if not attach:
        del fields["attach"]
    if party.partner:
        assert party.sub_mchid is not None
        fields["sub_mch_id"] = party.sub_mchid
        if party.sub_appid is not None:
            fields |= {"sub_appid": party.sub_appid, "sub_openid": openid, "sub_is_subscribe": "N"}
    if promotions:
        fields["coupon_fee"] = str(sum(p.amount for p in promotions))
        fields["coupon_count"] = str(len(promotions))
        for n, promotion in enumerate(promotions):
            fields[f"coupon_type_{n}"] = promotion.type
            fields[f"coupon_id_{n}"] = promotion.coupon_id
            fields[f"coupon_fee_{n}"] = str(promotion.amount)
        fields["settlement_total_fee"] = str(total - sum(p.amount for p in promotions if p.type == "NOCASH"))
    if sign_type != MD5:
        fields["sign_type"] = sign_type
    return dict(sorted(fields.items()))


def signed_xml(fields: Mapping[str, str], key: str) -> bytes:
    """`fields` with their `sign` (the algorithm `sign_type` names, MD5 when absent), as WeChat's XML."""
    sign_type = fields.get("sign_type") or MD5
    signed = {**fields, "sign": sign_v2(fields, key, sign_type)}
    return to_xml(dict(sorted(signed.items())))


def refund_fields(
    out_trade_no: str,
    out_refund_no: str,
    refund_fee: int,
    total_fee: int,
    *,
    transaction_id: str,
    refund_id: str,
    refund_status: str,
    success_time: str | None,
    settlement_total_fee: int | None = None,
    settlement_refund_fee: int | None = None,
    refund_request_source: str = "API",
    refund_account: str = "REFUND_SOURCE_UNSETTLED_FUNDS",
    refund_recv_accout: str = "支付用户零钱",
) -> dict[str, str]:
    """The decrypted `req_info` of a refund notification ([protocol: APIv2 refund notifications]), from an
    APIv3 `refund_status` (SUCCESS, CLOSED, ABNORMAL) and an RFC 3339 `success_time` (for SUCCESS only)."""
    fields: dict[str, Any] = {
        "out_refund_no": out_refund_no,
        "out_trade_no": out_trade_no,
        "refund_account": refund_account,
        "refund_fee": refund_fee,
        "refund_id": refund_id,
        "refund_recv_accout": refund_recv_accout,
        "refund_request_source": refund_request_source,
        "refund_status": REFUND_STATUSES[refund_status],
        "settlement_refund_fee": refund_fee if settlement_refund_fee is None else settlement_refund_fee,
        "settlement_total_fee": total_fee if settlement_total_fee is None else settlement_total_fee,
        "total_fee": total_fee,
        "transaction_id": transaction_id,
    }
    if success_time is not None:
        fields["success_time"] = _beijing(success_time, "%Y-%m-%d %H:%M:%S")
    return {name: str(value) for name, value in sorted(fields.items())}


def req_info_plaintext(fields: Mapping[str, str]) -> bytes:
    """`<root>` as a real callback lays it out (vector T1): one element a line, in the given order."""
    lines = ["<root>"]
    for name, value in fields.items():
        if "]]>" in value:
            raise ValueError("the sandbox writes no value that would end its CDATA")
        lines.append(f"<{name}><![CDATA[{value}]]></{name}>")
    return ("\n".join(lines) + "\n</root>").encode()


def refund_xml(party: Party, req_info: bytes, key: str, *, nonce: str) -> bytes:
    """The refund notification around an encrypted `req_info`; it carries no `sign` ([protocol: APIv2
    refund notifications])."""
    fields = {"return_code": "SUCCESS", "appid": party.appid, "mch_id": party.mchid}
    if party.partner:
        assert party.sub_mchid is not None
        if party.sub_appid is not None:
            fields["sub_appid"] = party.sub_appid
        fields["sub_mch_id"] = party.sub_mchid
    fields |= {"nonce_str": nonce, "req_info": encrypt_req_info(req_info, key)}
    return to_xml(fields)
