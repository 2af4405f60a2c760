"""Asking WeChat Pay for a refund ([protocol: Creating a refund]): the request as sent, and the answer as trusted.

`RefundRequest` is what the merchant asks: its `body()` is the exact bytes signed and sent, the same for
the same request every time, so a request sent again is byte for byte the one WeChat saw ([protocol:
Creating a refund] "同一退款单号多次请求只退一笔"). `RefundAnswer` is WeChat's verified answer about that very
refund, with what the ledger keeps as evidence. `WeChatPayClient.create_refund` sends one and returns the
other."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from ledger.errors import ResponseUntrusted

__all__ = ["OUT_REFUND_NO", "REFUND_PATH", "RefundAnswer", "RefundRequest", "refund_answer"]

REFUND_PATH = "/v3/refund/domestic/refunds"
OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_NUMBER = re.compile(r"[0-9A-Za-z_\-|*@]{1,32}")


def _amount(value: object, name: str) -> int:
    # bool is an int: an amount of `True` is a mistake, not 1 fen.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (fen)")
    return value


@dataclass(frozen=True)
class RefundRequest:
    """One refund of one order ([protocol: Creating a refund]): of a paid order named by exactly one of
    `transaction_id` and `out_trade_no` (a combined payment's sub-order by its own, [protocol: Combined
    payments]), `refund` fen of its `total`; a provider's names its `sub_mchid` ([protocol: Service
    providers]). Checked when made: a request WeChat would refuse for its form is never sent."""

    out_refund_no: str
    refund: int
    total: int
    transaction_id: str | None = None
    out_trade_no: str | None = None
    reason: str | None = None
    notify_url: str | None = None
    sub_mchid: str | None = None
    currency: str = "CNY"

    def __post_init__(self) -> None:
        if not OUT_REFUND_NO.fullmatch(self.out_refund_no):
            raise ValueError("out_refund_no must be 1-64 of [0-9A-Za-z_-|*@]")
        if (self.transaction_id is None) == (self.out_trade_no is None):
            raise ValueError("name the order by exactly one of transaction_id and out_trade_no")
        number = self.transaction_id if self.transaction_id is not None else self.out_trade_no
        if number is None or not _NUMBER.fullmatch(number):
            raise ValueError("transaction_id or out_trade_no must be 1-32 of [0-9A-Za-z_-|*@]")
        _amount(self.refund, "refund")
        _amount(self.total, "total")
        if self.refund > self.total:
            raise ValueError("refund cannot be more than total")
        if self.reason is not None and not 1 <= len(self.reason) <= 80:
            raise ValueError("reason must be 1-80 characters")
        if self.notify_url is not None and not (1 <= len(self.notify_url) <= 256 and self.notify_url.isprintable()):
            raise ValueError("notify_url must be 1-256 printable characters")
        if self.sub_mchid is not None and not (self.sub_mchid.isascii() and self.sub_mchid.isdigit()):
            raise ValueError("sub_mchid must be digits")
        if self.currency != "CNY":
            raise ValueError("currency must be CNY")

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> RefundRequest:
        """The request whose `fields()` are `fields` (as recorded in the order's `RefundRequested`)."""
        amount = fields["amount"]
        named = {k: fields.get(k) for k in ("sub_mchid", "transaction_id", "out_trade_no", "reason", "notify_url")}
        return cls(
            out_refund_no=fields["out_refund_no"],
            refund=amount["refund"],
            total=amount["total"],
            currency=amount["currency"],
            **named,
        )

    def fields(self) -> dict[str, Any]:
        """The body as a dict, keys in the order WeChat documents them; absent options left out."""
        out: dict[str, Any] = {}
        for name in ("sub_mchid", "transaction_id", "out_trade_no", "out_refund_no", "reason", "notify_url"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["amount"] = {"refund": self.refund, "total": self.total, "currency": self.currency}
        return out

    def body(self) -> bytes:
        """The exact bytes signed and sent: compact UTF-8 JSON, the same for the same request every time."""
        return json.dumps(self.fields(), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class RefundAnswer:
    """WeChat's verified answer to a `RefundRequest`: the refund it accepted (`status` PROCESSING, or
    already SUCCESS, CLOSED or ABNORMAL when the same request was answered before), and the evidence as
    the ledger keeps a query's: the request sent, the raw answer, its headers as received, the key that
    verified it, WeChat's Request-ID, when it arrived."""

    refund_id: str
    out_refund_no: str
    status: str
    request_body: str
    status_code: int
    raw_body: str
    headers: dict[str, str]
    key_serial: str
    request_id: str
    received_at: dt.datetime
    data: dict[str, Any]


def refund_answer(
    request: RefundRequest,
    *,
    status_code: int,
    body: bytes,
    headers: dict[str, str],
    key_serial: str,
    request_id: str | None,
    received_at: dt.datetime,
    data: dict[str, Any] | None,
) -> RefundAnswer:
    """A verified 2xx made into the answer, once it is about `request`: its out_refund_no, its order, its
    amount, a refund_id and a status. Otherwise `ResponseUntrusted`: signed, but not an answer to what was
    asked."""
    fields = data or {}
    refund_id, status = fields.get("refund_id"), fields.get("status")
    amount = fields.get("amount")
    asked = request.fields()
    about = (
        fields.get("out_refund_no") == request.out_refund_no
        and all(fields.get(name) == asked[name] for name in ("transaction_id", "out_trade_no") if name in asked)
        and isinstance(amount, dict)
        and amount.get("refund") == request.refund
        and isinstance(refund_id, str)
        and refund_id != ""
        and isinstance(status, str)
        and status != ""
    )
    if not about or not isinstance(refund_id, str) or not isinstance(status, str):
        raise ResponseUntrusted(f"POST {REFUND_PATH}: the answer is not about refund {request.out_refund_no}")
    return RefundAnswer(
        refund_id=refund_id,
        out_refund_no=request.out_refund_no,
        status=status,
        request_body=request.body().decode("utf-8"),
        status_code=status_code,
        raw_body=body.decode("utf-8"),
        headers=dict(headers),
        key_serial=key_serial,
        request_id=request_id or "",
        received_at=received_at,
        data=dict(fields),
    )
