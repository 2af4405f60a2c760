"""The sandbox's daily bills ([protocol: Daily bills]): trade and fund-flow bills of its own orders, as files.

A Beijing day's trade bill (the ALL layout) has a row per payment that succeeded that day (each sub-order of
a combined payment on its own) and a row per refund accepted that day; the fund-flow bill (the BASIC account)
has the money those moved, the 0.6% fee included. A coupon shows as 代金券金额; one the merchant funded
(NOCASH) is not settled (应结订单金额 is the total less it). A service provider's trade bill ([next:
Partner queries]) has every sub-merchant's rows, 特约商户号 filled, or one sub-merchant's when applied
for with `sub_mchid`; its own fund-flow bill has none of their money (it is settled to the sub-merchants).

Bills exist as soon as asked (no 10:00 next-day rule); `bill_faults` make a day's bill not ready, empty,
short of a row, off by one fen, or served with bytes that do not match its hash.

Applying stores the file behind a random token for `TOKEN_TTL` seconds; the first download takes it.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ledger.wechatpay.sandbox.orders import CST, Order, OrderBook, SandboxError
from ledger.wechatpay.sandbox.resources import OPENID

__all__ = [
    "BILL_FAULTS",
    "FUND_HEADER",
    "FUND_SUMMARY_HEADER",
    "TOKEN_TTL",
    "TRADE_HEADER",
    "TRADE_SUMMARY_HEADER",
    "BillBook",
    "fee",
    "parse_bill_date",
    "render",
]

BILL_FAULTS = ("not_ready", "empty", "missing_row", "amount_changed", "corrupted")
TOKEN_TTL = 30.0  # "该地址30s内有效", the shorter of the two lifetimes WeChat documents
FEE_RATE = Decimal("0.006")
TRADE_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注"
).split(",")
TRADE_SUMMARY_HEADER = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额".split(",")
)
FUND_HEADER = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额(元),账户结余(元),资金变更提交申请人,备注,业务凭证号"
).split(",")
FUND_SUMMARY_HEADER = "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额".split(",")
_FEN = Decimal("0.01")
_FEE_PLACES = Decimal("0.00001")

Row = dict[str, str]


def yuan(fen: int | Decimal) -> str:
    return f"{(Decimal(fen) / 100).quantize(_FEN, ROUND_HALF_UP)}"


def fee(fen: int) -> Decimal:
    """The 0.6% fee in yuan to 5 decimals, as the trade bill writes it."""
    return (Decimal(fen) / 100 * FEE_RATE).quantize(_FEE_PLACES, ROUND_HALF_UP)


def _beijing(rfc3339: str) -> dt.datetime:
    return dt.datetime.fromisoformat(rfc3339).astimezone(CST)


def _bill_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _text(value: str) -> str:
    # The sandbox never writes a value that would split a row or a line.
    return value.replace(",", " ").replace("`", " ").replace("\r", " ").replace("\n", " ")


def render(header: list[str], rows: list[Row], summary_header: list[str], summary: list[str]) -> bytes:
    """[protocol: Daily bills]: BOM, plain header lines, backtick-prefixed values, CRLF after every line."""
    lines = [",".join(header)]
    lines += [",".join("`" + row[name] for name in header) for row in rows]
    lines += [",".join(summary_header), ",".join("`" + value for value in summary)]
    return ("\ufeff" + "".join(line + "\r\n" for line in lines)).encode("utf-8")


def _sum(rows: list[Row], name: str) -> Decimal:
    return sum((Decimal(row[name]) for row in rows), Decimal(0))


def _trade_summary(rows: list[Row]) -> list[str]:
    amounts = [_sum(rows, name) for name in ("应结订单金额", "退款金额", "充值券退款金额")]
    fees = _sum(rows, "手续费").quantize(_FEE_PLACES)
    orders = [_sum(rows, name) for name in ("订单金额", "申请退款金额")]
    return [str(len(rows)), *(f"{a:.2f}" for a in amounts), f"{fees}", *(f"{a:.2f}" for a in orders)]


def _fund_summary(rows: list[Row]) -> list[str]:
    income = [row for row in rows if row["收支类型"] == "收入"]
    expense = [row for row in rows if row["收支类型"] == "支出"]
    return [
        str(len(rows)),
        str(len(income)),
        f"{_sum(income, '收支金额(元)'):.2f}",
        str(len(expense)),
        f"{_sum(expense, '收支金额(元)'):.2f}",
    ]


@dataclass(frozen=True)
class _Stored:
    content: bytes
    gzip: bool
    expires: float


@dataclass(frozen=True)
class _Movement:
    when: dt.datetime
    business_id: str
    name: str
    kind: str
    direction: str
    fen: int
    voucher: str


class BillBook:
    """The bills of an `OrderBook`, the faults injected into them and the download tokens handed out."""

    def __init__(self, orders: OrderBook, *, clock: Callable[[], float]) -> None:
        self._orders = orders
        self._merchant = orders.merchant
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: dict[dt.date, str] = {}
        self._tokens: dict[str, _Stored] = {}

    # -- faults ----------------------------------------------------------------------------------

    def set_fault(self, bill_date: dt.date, fault: str | None) -> None:
        if fault is not None and fault not in BILL_FAULTS:
            raise SandboxError(400, "PARAM_ERROR", f"a bill fault is one of {', '.join(BILL_FAULTS)}")
        with self._lock:
            if fault is None:
                self._faults.pop(bill_date, None)
            else:
                self._faults[bill_date] = fault

    @property
    def faults(self) -> dict[dt.date, str]:
        with self._lock:
            return dict(self._faults)

    # -- the bills, as they truly are --------------------------------------------------------------

    def trade_rows(self, bill_date: dt.date, sub_mchid: str | None = None) -> list[Row]:
        """[protocol: Daily bills]: the ALL rows of a Beijing day, in time order; a provider's, of one
        sub-merchant when `sub_mchid` is given."""
        rows: list[tuple[str, int, Row]] = []
        for order in self._orders.all():
            if sub_mchid is not None and order.sub_mchid != sub_mchid:
                continue
            if order.success_time and order.transaction_id and _beijing(order.success_time).date() == bill_date:
                rows.append((_bill_time(_beijing(order.success_time)), 0, self._payment_row(order)))
            for refund in order.refunds.values():
                accepted = _beijing(refund.create_time)
                if accepted.date() == bill_date:
                    row = self._payment_row(order)
                    row.update(
                        交易时间=_bill_time(accepted),
                        交易状态="REFUND",
                        应结订单金额="0.00",
                        代金券金额="0.00",
                        订单金额="0.00",
                        微信退款单号=refund.refund_id,
                        商户退款单号=refund.out_refund_no,
                        退款金额=yuan(refund.amount),
                        申请退款金额=yuan(refund.amount),
                        退款类型="ORIGINAL",
                        退款状态=refund.status,
                        手续费=f"{-fee(refund.amount)}",
                    )
                    rows.append((row["交易时间"], 1, row))
        return [row for *_, row in sorted(rows, key=lambda r: r[:2])]

    def _payment_row(self, order: Order) -> Row:
        assert order.success_time is not None and order.transaction_id is not None
        coupons = sum(p.amount for p in order.promotions)
        values = [
            _bill_time(_beijing(order.success_time)),
            self._merchant.appid,
            self._merchant.mchid,
            order.sub_mchid or "0",
            "",
            order.transaction_id,
            order.out_trade_no,
            OPENID,
            "JSAPI",
            "SUCCESS",
            "OTHERS",
            "CNY",
            yuan(order.settlement_total),
            yuan(coupons),
            "0",
            "0",
            "0.00",
            "0.00",
            "",
            "",
            _text(order.description),
            _text(order.attach),
            f"{fee(order.settlement_total)}",
            "0.60%",
            yuan(order.total),
            "0.00",
            "",
        ]
        return dict(zip(TRADE_HEADER, values, strict=True))

    def fund_rows(self, bill_date: dt.date) -> list[Row]:
        """[protocol: Daily bills]: the BASIC account's movements of a Beijing day, with the running balance."""
        rows: list[Row] = []
        balance = 0
        # Within one second (the times' precision) payments come before refunds, as in the trade bill.
        for m in sorted(self._movements(), key=lambda m: (m.when, m.name == "退款")):
            balance += m.fen if m.direction == "收入" else -m.fen
            if m.when.date() != bill_date:
                continue
            digest = hashlib.sha256(f"{m.business_id}/{m.kind}".encode()).hexdigest()
            values = [
                _bill_time(m.when),
                m.business_id,
                f"{int(digest, 16) % 10**28:028d}",
                m.name,
                m.kind,
                m.direction,
                yuan(m.fen),
                yuan(balance),
                "system",
                "",
                m.voucher,
            ]
            rows.append(dict(zip(FUND_HEADER, values, strict=True)))
        return rows

    def _movements(self) -> list[_Movement]:
        out: list[_Movement] = []
        for order in self._orders.all():
            # A sub-merchant's money is settled to it, not to its provider's account.
            if not (order.success_time and order.transaction_id) or order.sub_mchid is not None:
                continue
            paid = _beijing(order.success_time)
            settled = order.settlement_total
            out.append(_Movement(paid, order.transaction_id, "交易", "交易", "收入", settled, order.out_trade_no))
            if charged := _fee_fen(settled):
                out.append(_Movement(paid, order.transaction_id, "交易", "扣除交易手续费", "支出", charged, ""))
            for refund in order.refunds.values():
                if refund.status in {"CLOSED", "ABNORMAL"}:
                    continue
                accepted = _beijing(refund.create_time)
                out.append(
                    _Movement(accepted, refund.refund_id, "退款", "退款", "支出", refund.amount, refund.out_refund_no)
                )
                if returned := _fee_fen(refund.amount):
                    out.append(_Movement(accepted, refund.refund_id, "退款", "退还交易手续费", "收入", returned, ""))
        return out

    # -- apply and download ------------------------------------------------------------------------

    def apply(
        self,
        kind: str,
        bill_date: dt.date,
        *,
        base_url: str,
        gzipped: bool,
        account_type: str = "BASIC",
        sub_mchid: str | None = None,
    ) -> Any:
        """[protocol: Applying for a bill]: the apply answer, or the SandboxError WeChat would answer."""
        if sub_mchid is not None:
            if not self._merchant.partner:
                raise SandboxError(403, "NO_AUTH", "非服务商不能指定子商户号")
            if sub_mchid not in self._merchant.sub_mchids:
                raise SandboxError(400, "PARAM_ERROR", "特约商户与服务商不存在受理关系")
        fault = self.faults.get(bill_date)
        if fault == "not_ready":
            raise SandboxError(400, "STATEMENT_CREATING", "账单生成中")
        if kind == "trade":
            rows, header, summary_header = self.trade_rows(bill_date, sub_mchid), TRADE_HEADER, TRADE_SUMMARY_HEADER
            amount_columns: tuple[str, ...] = ("应结订单金额", "订单金额")
        else:
            if account_type not in {"BASIC", "OPERATION", "FEES"}:
                raise SandboxError(400, "PARAM_ERROR", "account_type 取值错误")
            rows = self.fund_rows(bill_date) if account_type == "BASIC" else []
            header, summary_header, amount_columns = FUND_HEADER, FUND_SUMMARY_HEADER, ("收支金额(元)",)
        if fault == "missing_row" and rows:
            del rows[0]
        if fault == "amount_changed" and rows:
            if rows[0].get("交易状态") == "REFUND":
                amount_columns = ("退款金额", "申请退款金额")
            for name in amount_columns:
                rows[0][name] = f"{Decimal(rows[0][name]) + _FEN}"
        if fault == "empty" or not rows:
            raise SandboxError(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在")
        summary = _trade_summary(rows) if kind == "trade" else _fund_summary(rows)
        content = render(header, rows, summary_header, summary)
        hash_value = hashlib.sha1(content, usedforsecurity=False).hexdigest()
        if fault == "corrupted":
            content = _one_digit_changed(content)
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = self._clock()
            self._tokens = {t: s for t, s in self._tokens.items() if s.expires > now}
            self._tokens[token] = _Stored(
                gzip.compress(content, mtime=0) if gzipped else content, gzipped, now + TOKEN_TTL
            )
        url = f"{base_url.rstrip('/')}/v3/billdownload/file?token={token}" + ("&tartype=gzip" if gzipped else "")
        return {"download_url": url, "hash_type": "SHA1", "hash_value": hash_value}

    def download(self, token: str) -> tuple[bytes, str]:
        """[protocol: Downloading a bill]: the file and its content type; a token is good once, briefly."""
        with self._lock:
            stored = self._tokens.pop(token, None)
        if stored is None or stored.expires <= self._clock():
            raise SandboxError(400, "INVALID_REQUEST", "下载链接已失效，请重新申请")
        return stored.content, "application/x-gzip" if stored.gzip else "text/plain"


def _fee_fen(fen: int) -> int:
    return int((Decimal(fen) * FEE_RATE).quantize(Decimal(1), ROUND_HALF_UP))


def _one_digit_changed(content: bytes) -> bytes:
    data = bytearray(content)
    for i in range(len(data) - 1, -1, -1):
        if 0x30 <= data[i] <= 0x39:
            data[i] = 0x30 + (data[i] - 0x30 + 1) % 10
            break
    return bytes(data)


def parse_bill_date(value: str | None) -> dt.date:
    """A `bill_date` query parameter, or PARAM_ERROR as WeChat answers it."""
    try:
        if value is None or len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SandboxError(400, "PARAM_ERROR", "bill_date 格式错误，应为 YYYY-MM-DD") from None
