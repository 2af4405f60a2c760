"""Trade bills built as bytes, in WeChat's ALL layout ([protocol: The trade bill's format]).

Lines are described in fen and Beijing times; the builder writes yuan, backticks, the BOM, CRLF
and a summary that agrees with the lines, so a test states only what it is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.wechatpay.bills import BEIJING

__all__ = ["ALL_HEADER", "ALL_SUMMARY", "MCHID", "BillLine", "payment_line", "refund_line", "trade_bill"]

ALL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注"
)
ALL_SUMMARY = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
MCHID = "1230000109"


@dataclass(frozen=True)
class BillLine:
    """One line of an ALL bill, amounts in fen."""

    trade_time: datetime
    transaction_id: str
    out_trade_no: str
    state: str
    amount_total_fen: int = 0
    refund_id: str = "0"
    out_refund_no: str = "0"
    refund_fen: int = 0
    fee: Decimal = Decimal("0.00000")


def payment_line(
    transaction_id: str, out_trade_no: str, fen: int, *, at: datetime | None = None, fee: str = "0.01000"
) -> BillLine:
    return BillLine(
        trade_time=at or datetime(2024, 5, 20, 10, 15, 32, tzinfo=BEIJING),
        transaction_id=transaction_id,
        out_trade_no=out_trade_no,
        state="SUCCESS",
        amount_total_fen=fen,
        fee=Decimal(fee),
    )


def refund_line(
    transaction_id: str, out_trade_no: str, refund_id: str, out_refund_no: str, fen: int, *, fee: str = "-0.01000"
) -> BillLine:
    return BillLine(
        trade_time=datetime(2024, 5, 20, 16, 0, 0, tzinfo=BEIJING),
        transaction_id=transaction_id,
        out_trade_no=out_trade_no,
        state="REFUND",
        refund_id=refund_id,
        out_refund_no=out_refund_no,
        refund_fen=fen,
        fee=Decimal(fee),
    )


def _yuan(fen: int) -> str:
    return f"{Decimal(fen) / 100:.2f}"


def _values(*values: str) -> str:
    return "`" + ",`".join(values)


def _line(line: BillLine) -> str:
    refund = line.state == "REFUND"
    return _values(
        line.trade_time.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"), "wxd678efh567hg6787", MCHID, "0", "",
        line.transaction_id, line.out_trade_no, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "JSAPI", line.state, "CMB_CREDIT",
        "CNY", _yuan(line.amount_total_fen), "0.00", line.refund_id, line.out_refund_no, _yuan(line.refund_fen),
        "0.00", "ORIGINAL" if refund else "", "SUCCESS" if refund else "", "商品", "", f"{line.fee:.5f}", "0.60%",
        _yuan(line.amount_total_fen), _yuan(line.refund_fen), "",
    )  # fmt: skip


def trade_bill(*lines: BillLine) -> bytes:
    """The bytes WeChat would serve for these lines: BOM, CRLF, backticks, a summary that agrees."""
    amount = sum(line.amount_total_fen for line in lines)
    refund = sum(line.refund_fen for line in lines)
    fee = sum((line.fee for line in lines), Decimal(0))
    summary = _values(str(len(lines)), _yuan(amount), _yuan(refund), "0.00", f"{fee:.5f}", _yuan(amount), _yuan(refund))
    text = "".join(f"{part}\r\n" for part in (ALL_HEADER, *map(_line, lines), ALL_SUMMARY, summary))
    return b"\xef\xbb\xbf" + text.encode()
