"""Daily bills, parsed as a stream ([protocol: The trade bill's format; The fund-flow bill's format]): the public
45-row fixture and our sample read exactly, columns by name whatever the layout, every refusal a `BillMalformed`
naming its line, and memory that stays flat however long the bill."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import FrozenInstanceError
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import answer_for
from ledger.errors import BillMalformed, LedgerError
from ledger.wechatpay.bills import (
    BEIJING,
    FundFlowRow,
    TradeBillRow,
    read_fundflow_bill,
    read_trade_bill,
)
from tests.support.constants import VECTORS_PATH

BILLS = VECTORS_PATH.parent / "bills"
FIXTURE_SHA1 = "9bb6cd819be348f17a9cbcedddc8eb62fefbd790"  # AX/PHP tests/fixtures/bill.ALL.csv, 45 rows
SAMPLE_SHA1 = "5e6c27bfe03881ce667112778b67257b318e1851"  # our constructed 3-row sample

ALL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注"
)
SUCCESS_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注"
)
REFUND_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,"
    "退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
LEGACY_HEADER = (
    "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "总金额,代金券或立减优惠金额,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,"
    "商品名称,商户数据包,手续费,费率"
)
ALL_SUMMARY = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"


def _values(*values: str) -> str:
    return "`" + ",`".join(values)


def _all_row(out_trade_no: str, total: str, *, fee: str = "0.01000", description: str = "商品") -> str:
    """A payment row of the ALL layout."""
    return _values(
        "2024-05-20 10:15:32", "wxd678efh567hg6787", "1230000109", "0", "", "420000221120240520" + out_trade_no[-5:],
        out_trade_no, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "JSAPI", "SUCCESS", "CMB_CREDIT", "CNY", total, "0.00", "0", "0",
        "0.00", "0.00", "", "", description, "", fee, "0.60%", total, "0.00", "",
    )  # fmt: skip


def _all_bill(*rows: str, summary: str | None = None, eol: str = "\r\n", bom: bool = True) -> bytes:
    lines = [ALL_HEADER, *rows, ALL_SUMMARY, summary if summary is not None else _all_summary(len(rows))]
    return ("\ufeff" if bom else "").encode() + "".join(line + eol for line in lines).encode()


def _all_summary(count: int, total: str = "0.00", fee: str = "0.00000") -> str:
    return _values(str(count), total, "0.00", "0.00", fee, total, "0.00")


def _read(data: bytes) -> tuple[list[TradeBillRow], object]:
    bill = read_trade_bill(data.splitlines(keepends=True))
    rows = list(bill)
    return rows, bill.summary


def _bytes(path: Path, sha1: str) -> bytes:
    data = path.read_bytes()
    assert hashlib.sha1(data).hexdigest() == sha1, f"{path.name} is not the published file"
    return data


# -- the public 45-row fixture ([protocol: The trade bill's format]) ------------------------------------------


def test_the_public_fixture_reads_45_rows_whose_sums_are_its_summary() -> None:
    data = _bytes(BILLS / "public-fixture.ALL.csv", FIXTURE_SHA1)
    assert data.startswith(b"\xef\xbb\xbf") and data.endswith(b"\r\n")  # the BOM and CRLF are really there
    with (BILLS / "public-fixture.ALL.csv").open("rb") as file:
        bill = read_trade_bill(file)
        rows = list(bill)

    assert bill.layout == "ALL"
    assert len(rows) == 45
    assert Counter(row.trade_state for row in rows) == {"SUCCESS": 31, "REFUND": 14}
    summary = bill.summary
    assert summary.raw["总交易单数"] == "45.0" and summary.count == 45
    assert (summary.settlement_total_fen, summary.refund_fen, summary.recharge_refund_fen) == (47, 14, 0)
    assert (summary.amount_total_fen, summary.refund_requested_fen, summary.fee) == (47, 14, Decimal("0.08"))
    assert sum(row.settlement_total_fen for row in rows) == 47
    assert sum(row.refund_fen for row in rows) == 14
    assert sum(row.fee for row in rows) == Decimal("0.08")

    first = rows[0]
    assert first.line == 2
    assert first.trade_time == datetime(2019, 2, 19, 5, 1, 46, tzinfo=BEIJING)
    assert (first.transaction_id, first.out_trade_no) == (
        "4200000263201902167700134212",
        "autotest_20190216081946_82335",
    )
    assert (first.refund_id, first.out_refund_no) == (
        "50000709672019011908420787722",
        "REF4200000263201902167700963919",
    )
    assert (first.trade_state, first.refund_type, first.refund_status) == ("REFUND", "ORIGINAL", "SUCCESS")
    assert (first.refund_fen, first.refund_requested_fen, first.amount_total_fen) == (1, 1, 0)
    assert (first.sub_mchid, first.device_info, first.fee_rate) == (None, "harryma007", "39.00%")
    assert first.description == "系统拨测-cheeryin-test_micropay_succ"
    assert next(iter(first.raw)) == "交易时间"  # the BOM is not part of the first column's name

    last = rows[-1]
    assert (last.line, last.trade_state, last.transaction_id) == (46, "SUCCESS", "4200000263201902167700136502")
    assert (last.settlement_total_fen, last.coupon_fen, last.amount_total_fen) == (3, 1, 3)
    assert (last.refund_id, last.out_refund_no, last.refund_type, last.refund_status) == (None, None, "", "")
    assert last.fee == Decimal("0.01000") and str(last.fee) == "0.01000"


# -- our 3-row sample, every field ------------------------------------------------------------------------------


def test_the_sample_bill_reads_every_field_of_its_three_rows_exactly() -> None:
    data = _bytes(BILLS / "sample.ALL.csv", SAMPLE_SHA1)
    bill = read_trade_bill(iter(data.splitlines(keepends=True)))
    rows = list(bill)
    common = {
        "appid": "wxd678efh567hg6787",
        "mchid": "1230000109",
        "sub_mchid": None,
        "currency": "CNY",
        "coupon_fen": 0,
        "recharge_refund_fen": 0,
        "fee_rate": "0.60%",
        "fee_rate_note": "",
        "refund_requested_at": None,
        "refund_succeeded_at": None,
    }
    payment = {"refund_id": None, "out_refund_no": None, "refund_fen": 0, "refund_type": "", "refund_status": ""}
    expected = [
        {
            **common,
            **payment,
            "line": 2,
            "trade_time": datetime(2024, 5, 20, 10, 15, 32, tzinfo=BEIJING),
            "device_info": "",
            "transaction_id": "4200002211202405201234567890",
            "out_trade_no": "ORD20240520001",
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "bank_type": "CMB_CREDIT",
            "settlement_total_fen": 8800,
            "description": "测试商品A",
            "attach": "",
            "fee": Decimal("0.53000"),
            "amount_total_fen": 8800,
            "refund_requested_fen": 0,
        },
        {
            **common,
            **payment,
            "line": 3,
            "trade_time": datetime(2024, 5, 20, 14, 2, 7, tzinfo=BEIJING),
            "device_info": "POS-01",
            "transaction_id": "4200002211202405201234567891",
            "out_trade_no": "ORD20240520002",
            "openid": "oUpF8uBdgEYbTbE_9Dw7z3m6cP1A",
            "trade_type": "NATIVE",
            "trade_state": "SUCCESS",
            "bank_type": "OTHERS",
            "settlement_total_fen": 10000,
            "description": "测试商品B",
            "attach": "batch=7",
            "fee": Decimal("0.60000"),
            "amount_total_fen": 10000,
            "refund_requested_fen": 0,
        },
        {
            **common,
            "line": 4,
            "trade_time": datetime(2024, 5, 20, 18, 40, 55, tzinfo=BEIJING),
            "device_info": "",
            "transaction_id": "4200002211202405191234567777",
            "out_trade_no": "ORD20240519009",
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "trade_type": "JSAPI",
            "trade_state": "REFUND",
            "bank_type": "CMB_CREDIT",
            "settlement_total_fen": 0,
            "refund_id": "50302001232024052012345678901",
            "out_refund_no": "RF20240520001",
            "refund_fen": 3000,
            "refund_type": "ORIGINAL",
            "refund_status": "SUCCESS",
            "description": "测试商品C",
            "attach": "",
            "fee": Decimal("-0.18000"),
            "amount_total_fen": 0,
            "refund_requested_fen": 3000,
        },
    ]
    got = [{name: getattr(row, name) for name in expected[0]} for row in rows]
    assert got == expected
    assert all(set(row.__slots__) - {"raw"} == set(expected[0]) for row in rows)  # no field left unchecked
    assert str(rows[2].fee) == "-0.18000"  # five decimals kept, sign included
    assert rows[2].trade_time.utcoffset() == timedelta(hours=8)
    assert rows[1].raw["商户数据包"] == "batch=7" and len(rows[1].raw) == 27
    summary = bill.summary
    assert (summary.count, summary.settlement_total_fen, summary.refund_fen, summary.fee) == (
        3,
        18800,
        3000,
        Decimal("0.95"),
    )
    assert (summary.amount_total_fen, summary.refund_requested_fen, summary.recharge_refund_fen) == (18800, 3000, 0)


# -- other shapes the same parser must read -----------------------------------------------------------------------


def test_lf_without_a_bom_in_chunks_that_cut_lines_anywhere_reads_the_same() -> None:
    data = _bytes(BILLS / "sample.ALL.csv", SAMPLE_SHA1).removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]  # splits characters of 3 UTF-8 bytes too
    bill = read_trade_bill(chunks)
    rows = list(bill)
    assert [row.out_trade_no for row in rows] == ["ORD20240520001", "ORD20240520002", "ORD20240519009"]
    assert rows[2].fee == Decimal("-0.18000") and bill.summary.count == 3
    assert next(iter(rows[0].raw)) == "交易时间"


def test_a_value_with_a_comma_inside_is_not_split() -> None:
    data = _all_bill(
        _all_row("ORD00001", "1.00", description="杯子,红色, 大号"), summary=_all_summary(1, "1.00", "0.01000")
    )
    (row,), _ = _read(data)
    assert row.description == "杯子,红色, 大号"
    assert (row.fee_rate, row.amount_total_fen) == ("0.60%", 100)


def test_full_width_colons_in_a_time_are_read() -> None:
    row = _all_row("ORD00001", "1.00").replace("2024-05-20 10:15:32", "2014-11-10 16：33：45")
    (read,), _ = _read(_all_bill(row, summary=_all_summary(1, "1.00", "0.01000")))
    assert read.trade_time == datetime(2014, 11, 10, 16, 33, 45, tzinfo=BEIJING)


def test_the_success_refund_and_legacy_layouts_are_read_by_column_name() -> None:
    success = "\n".join(
        [
            SUCCESS_HEADER,
            _values("2019-06-11 09:00:00", "wx1", "1900000109", "1900000201", "", "4200001", "ORD-S", "o1", "JSAPI",
                    "SUCCESS", "OTHERS", "CNY", "5.00", "1.00", "商品", "", "0.03000", "0.60%", "6.00", ""),
            "总交易单数,应结订单总金额,手续费总金额,订单总金额",
            _values("1", "5.00", "0.03000", "6.00"),
        ]
    ).encode()  # fmt: skip
    bill = read_trade_bill([success])
    (row,) = list(bill)
    assert bill.layout == "SUCCESS"
    assert (row.sub_mchid, row.settlement_total_fen, row.coupon_fen, row.amount_total_fen) == (
        "1900000201",
        500,
        100,
        600,
    )
    assert (row.refund_id, row.out_refund_no, row.refund_fen, row.refund_requested_fen) == (None, None, 0, 0)
    assert (bill.summary.refund_fen, bill.summary.amount_total_fen) == (None, 600)

    refund = "\r\n".join(
        [
            REFUND_HEADER,
            _values("2019-06-11 10:00:00", "wx1", "1900000109", "0", "", "4200002", "ORD-R", "o1", "JSAPI", "REFUND",
                    "OTHERS", "CNY", "0.00", "0.00", "2019-06-11 10:00:00", "2019-06-11 10:00:05", "5030001", "RF-1",
                    "2.00", "0.00", "ORIGINAL", "SUCCESS", "商品", "", "-0.01000", "0.60%", "0.00", "2.00", ""),
            ALL_SUMMARY,
            _values("1", "0.00", "2.00", "0.00", "-0.01000", "0.00", "2.00"),
        ]
    ).encode()  # fmt: skip
    bill = read_trade_bill([refund])
    (row,) = list(bill)
    assert bill.layout == "REFUND"
    assert row.refund_requested_at == datetime(2019, 6, 11, 10, 0, 0, tzinfo=BEIJING)
    assert row.refund_succeeded_at == datetime(2019, 6, 11, 10, 0, 5, tzinfo=BEIJING)
    assert (row.refund_id, row.out_refund_no, row.refund_fen, row.fee) == ("5030001", "RF-1", 200, Decimal("-0.01"))

    legacy = "\n".join(
        [
            LEGACY_HEADER,
            _values("2017-03-01 08:00:00", "wx1", "1900000109", "0", "", "4200003", "ORD-L", "o1", "NATIVE", "SUCCESS",
                    "CFT", "CNY", "3.00", "0.50", "0", "0", "0.00", "0.00", "", "", "商品", "", "0.02000", "0.60%"),
            "总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额",
            _values("1", "3.00", "0.00", "0.00", "0.02000"),
        ]
    ).encode()  # fmt: skip
    bill = read_trade_bill([legacy])
    (row,) = list(bill)
    assert bill.layout == "legacy"
    assert (row.sub_mchid, row.settlement_total_fen, row.amount_total_fen, row.coupon_fen) == (None, 300, 300, 50)
    assert (bill.summary.count, bill.summary.settlement_total_fen, bill.summary.refund_fen) == (1, 300, 0)


# -- the fund-flow bill ([protocol: The fund-flow bill's format]) ---------------------------------------------------

FUNDFLOW_HEADER = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额（元）,账户结余（元）,"
    "资金变更提交申请人,备注,业务凭证号"
)
FUNDFLOW_SAMPLE = _values(
    "2018-02-01 04:21:23", "50000305742018020103387128253", "1900009231201802015884652186", "退款", "退款", "支出",
    "0.02", "0.17", "system", "缺货", "REF4200000068201801293084726067",
)  # fmt: skip


def _fundflow_rows() -> Iterator[str]:
    """The official sample row among 19 of ours, so that the official summary (20, 17, 0.35, 3, 0.18) holds."""
    yield FUNDFLOW_SAMPLE
    for n, amount in enumerate(["0.06", "0.10"]):
        yield _values("2018-02-01 05:00:0" + str(n), f"5000030574{n}", f"19000092{n}", "退款", "退款", "支出", amount,
                      "0.11", "system", "", f"REF{n}")  # fmt: skip
    for n in range(17):
        amount = "0.03" if n == 0 else "0.02"
        yield _values(f"2018-02-01 06:{n:02}:00", f"4200000{n}", f"19000093{n}", "交易", "交易", "收入", amount, "0.20",
                      "system", "", f"ORD{n}")  # fmt: skip


def _fundflow_bill(rows: list[str], summary: str = "`20.0,`17.0,`0.35,`3.0,`0.18") -> bytes:
    lines = [FUNDFLOW_HEADER, *rows, "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额", summary]
    return b"\xef\xbb\xbf" + "".join(line + "\r\n" for line in lines).encode()


def test_the_fundflow_sample_row_and_the_official_summary_are_read() -> None:
    bill = read_fundflow_bill(_fundflow_bill(list(_fundflow_rows())).splitlines(keepends=True))
    rows = list(bill)
    assert rows[0] == FundFlowRow(
        line=2,
        booked_at=datetime(2018, 2, 1, 4, 21, 23, tzinfo=BEIJING),
        business_id="50000305742018020103387128253",
        flow_id="1900009231201802015884652186",
        business_name="退款",
        business_type="退款",
        direction="支出",
        amount_fen=2,
        balance_fen=17,
        applicant="system",
        note="缺货",
        voucher_no="REF4200000068201801293084726067",
        raw={},
    )
    assert rows[0].raw["收支金额(元)"] == "0.02"  # the full-width (元) is one name with the ASCII one
    summary = bill.summary
    assert (summary.count, summary.income_count, summary.income_fen) == (20, 17, 35)
    assert (summary.expense_count, summary.expense_fen) == (3, 18)


def test_a_fundflow_summary_that_disagrees_with_its_rows_is_refused() -> None:
    rows = list(_fundflow_rows())
    with pytest.raises(BillMalformed, match=r"^line 23, column 支出金额: does not match the sum of the rows$"):
        list(read_fundflow_bill([_fundflow_bill(rows, "`20.0,`17.0,`0.35,`3.0,`0.19")]))
    with pytest.raises(BillMalformed, match=r"^line 22, column 收入笔数: does not match the rows \(16 read\)$"):
        list(read_fundflow_bill([_fundflow_bill(rows[:-1], "`19.0,`17.0,`0.33,`3.0,`0.18")]))
    unknown = rows[0].replace("`支出,", "`转出,")
    with pytest.raises(BillMalformed, match=r"^line 2, column 收支类型: neither 收入 nor 支出$"):
        list(read_fundflow_bill([_fundflow_bill([unknown, *rows[1:]])]))


# -- refusals: each names the line (and the column), never a value -------------------------------------------------

SECRET = "ORD-SECRET-7"


def _refused(data: bytes) -> BillMalformed:
    with pytest.raises(BillMalformed) as refused:
        _read(data)
    assert SECRET not in str(refused.value)
    return refused.value


def _one_row(amount: str = "1.00", total: str = "1.00", fee: str = "0.01000", count: int = 1) -> bytes:
    """A bill of one row of `amount` yuan (its value stands for the secret a message must not quote)."""
    return _all_bill(_all_row(SECRET, amount), summary=_all_summary(count, total, fee))


_GOOD = _one_row()
_HEADLESS = _all_bill(_all_row(SECRET, "1.00"))  # rows, no summary
REFUSALS: list[tuple[str, bytes, str]] = [
    (
        "wrong-field-count",
        _all_bill(_all_row(SECRET, "1.00"), _all_row("ORD00002", "1.00") + ",`extra", summary=_all_summary(2)),
        "line 3: 28 fields where the header has 27",
    ),
    ("summary-count", _one_row(count=2), "line 4, column 总交易单数: does not match the rows (1 read)"),
    ("summary-sum", _one_row(total="1.01"), "line 4, column 应结订单总金额: does not match the sum of the rows"),
    ("summary-fee", _one_row(fee="0.01001"), "line 4, column 手续费总金额: does not match the sum of the rows"),
    ("three-decimals", _one_row("1.005"), "line 2, column 应结订单金额: more than 2 decimals"),
    ("not-numeric", _one_row("1,00"), "line 2, column 应结订单金额: not an amount"),
    ("nan", _one_row("NaN"), "line 2, column 应结订单金额: not an amount"),
    ("missing-summary", _GOOD.rsplit(b"\r\n", 3)[0], "line 3: the file ends before its summary"),
    ("missing-summary-row", _GOOD.rsplit(b"\r\n", 2)[0], "line 4: the file ends before its summary row"),
    ("truncated", _HEADLESS[: _HEADLESS.index(b"CMB_CREDIT")], "line 2: 11 fields where the header has 27"),
    ("after-summary", _GOOD + b"`1\r\n", "line 5: a line follows the summary"),
    (
        "bad-time",
        _all_bill(_all_row(SECRET, "1.00").replace("2024-05-20", "2024-13-20"), summary=_all_summary(1)),
        "line 2, column 交易时间: not a time",
    ),
    ("not-utf8", _HEADLESS.replace(SECRET.encode(), b"\xff\xfe"), "line 2: the line is not UTF-8"),
    (
        "duplicate-column",
        _HEADLESS.replace("特约商户号".encode(), "商户号".encode()),
        "line 1: the header names a column twice or not at all",
    ),
    (
        "missing-column",
        _HEADLESS.replace("交易状态".encode(), "状态".encode(), 1),
        "line 1: the header has no 交易状态 column",
    ),
    ("empty", b"", "line 1: the file is empty"),
    ("only-blank-lines", b"\xef\xbb\xbf\r\n\r\n", "line 1: the file is empty"),
]


@pytest.mark.parametrize(("data", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_bill_that_is_not_what_wechat_writes_is_refused_naming_the_line(data: bytes, message: str) -> None:
    refused = _refused(data)
    assert str(refused) == message
    assert isinstance(refused, LedgerError) and refused.reason == "bill malformed"
    assert answer_for(refused).status == 502  # the bill came from WeChat Pay: it is not the caller's fault


def test_a_line_too_long_is_refused_before_it_is_held_whole() -> None:
    endless = (b"`" + b"9" * 4096 for _ in range(10_000))  # 40 MB without a line break
    with pytest.raises(BillMalformed, match=r"^line 1: the line is too long$"):
        read_trade_bill(endless)


def test_the_summary_is_not_there_before_the_rows_are_read_and_the_rows_are_read_once() -> None:
    bill = read_trade_bill([_all_bill(_all_row("ORD00001", "1.00"), summary=_all_summary(1, "1.00", "0.01000"))])
    with pytest.raises(RuntimeError):
        _ = bill.summary
    assert len(list(bill)) == 1 and bill.summary.count == 1
    with pytest.raises(RuntimeError):
        list(bill)


# -- memory stays flat: a 200,000-row bill through a generator ------------------------------------------------------


@pytest.mark.slow
def test_a_200000_row_bill_is_read_in_flat_memory() -> None:
    count = 200_000

    def lines() -> Iterator[bytes]:
        yield ("\ufeff" + ALL_HEADER + "\r\n").encode()
        for n in range(count):
            yield (_all_row(f"ORD{n:08}", "1.23", fee="0.01000") + "\r\n").encode()
        yield (ALL_SUMMARY + "\r\n").encode()
        yield (_all_summary(count, "246000.00", "2000.00000") + "\r\n").encode()

    tracemalloc.start()
    try:
        bill = read_trade_bill(lines())
        seen = settled = 0
        for row in bill:
            seen += 1
            settled += row.settlement_total_fen
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (seen, settled, bill.summary.count, bill.summary.settlement_total_fen) == (
        count,
        24_600_000,
        count,
        24_600_000,
    )
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes: the rows are being kept"


# -- what the fast paths read is what the patterns and Decimal say ---------------------------------------------------
# The parser converts amounts by integer arithmetic and WeChat's times in C, and reads a chunk's lines at once; these
# compare it, on generated values, with the rule written out plainly, and check that refusals keep their line order.

_YUAN_RULE = re.compile(r"-?\d+(?:\.\d{1,2})?")
_NUMBER_RULE = re.compile(r"-?\d+(?:\.\d+)?")
_TIME_RULE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})[ T]+(\d{1,2}):(\d{1,2}):(\d{1,2})")
_WIDE_RULE = str.maketrans({"：": ":", "\u3000": " ", "（": "(", "）": ")"})


def _fen_by_rule(text: str) -> int | str:
    """Fen as Decimal computes them, or the refusal: [protocol: The trade bill's format], amounts in yuan."""
    value = text.strip()
    if not _YUAN_RULE.fullmatch(value):
        return "more than 2 decimals" if _NUMBER_RULE.fullmatch(value) else "not an amount"
    return int(Decimal(value) * 100)


def _time_by_rule(text: str) -> datetime | str:
    value = text.translate(_WIDE_RULE).strip()
    if not value:
        return "no time"
    found = _TIME_RULE.fullmatch(value)
    try:
        if found is None:
            raise ValueError(value)
        year, month, day, hour, minute, second = map(int, found.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)
    except ValueError:
        return "not a time"


_AMOUNT_EDGES = ["0.00", "-0.50", "1234567.89", "1,000.00", "1.5", "-0", "00.10", "1.", ".5", "+1.00", "1_000.00",
                 " 1.00 ", "1e2", "NaN", "Infinity", "-", "", "--1", "1.2.3", "١٢٣.٤٥", "1.00\u3000", "9" * 27,
                 "9" * 26 + ".99", "-" + "9" * 30 + ".9"]  # fmt: skip
_AMOUNTS = st.one_of(
    st.sampled_from(_AMOUNT_EDGES),
    st.builds(
        lambda sign, whole, point, cents: f"{sign}{whole}{point}{cents}",
        st.sampled_from(["", "-"]),
        st.one_of(st.integers(0, 10**12).map(str), st.from_regex(r"[0-9]{1,30}", fullmatch=True)),
        st.sampled_from([".", ""]),
        st.from_regex(r"[0-9]{0,4}", fullmatch=True),
    ),
    st.text(alphabet="0123456789-.,+_ e\u0663\u3000", max_size=14),
)


@settings(max_examples=400, deadline=None)
@given(_AMOUNTS)
def test_an_amount_is_the_fen_decimal_makes_of_it_or_refused_as_before(text: str) -> None:
    expected = _fen_by_rule(text)
    rows = iter(read_trade_bill([_all_bill(_all_row("ORD00001", text))]))  # the summary is not reached
    if isinstance(expected, str):
        with pytest.raises(BillMalformed, match=f"^line 2, column 应结订单金额: {expected}$"):
            next(rows)
    else:
        row = next(rows)
        assert (row.settlement_total_fen, row.amount_total_fen) == (expected, expected)


_TIME_EDGES = ["2024-05-20 10:15:32", "2024-05-20T10:15:32", "2024-5-20 9:05:03", "2024-05-20  10:15:32",
               "2024-05-20 10：15：32", "2024-05-20\u300010:15:32", " 2024-05-20 10:15:32 ", "2024-13-20 10:15:32",
               "2024-02-30 10:15:32", "2024-02-29 23:59:59", "2024-05-20 24:00:00", "2024-05-20 10:15:60",
               "0000-05-20 10:15:32", "2024-05-20x10:15:32", "2024-W21-1 10:15:32", "2024-05-20 10:15",
               "2024-05-2T 1:15:32", "2024-05-20 T1:15:32", "٢٠٢٤-٠٥-٢٠ 10:15:32", "2024-05-20 10:15:32.5", "",
               "  "]  # fmt: skip
_TIMES = st.one_of(
    st.sampled_from(_TIME_EDGES),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda when: f"{when.year:04}-{when.month:02}-{when.day:02} {when:%H:%M:%S}"
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_TIMES, min_size=1, max_size=6))
def test_times_row_after_row_are_what_the_pattern_makes_of_them_in_beijing(texts: list[str]) -> None:
    original = _all_row("ORD00001", "1.00")
    lines = [original.replace("2024-05-20 10:15:32", text, 1) for text in texts]
    rows = iter(read_trade_bill([_all_bill(*lines)]))
    for line, text in enumerate(texts, 2):
        expected = _time_by_rule(text)
        if isinstance(expected, str):
            with pytest.raises(BillMalformed, match=f"^line {line}, column 交易时间: {expected}$"):
                next(rows)
            return
        row = next(rows)
        assert row.trade_time == expected and row.trade_time.tzinfo is BEIJING


def test_a_bill_read_from_a_file_in_chunks_reads_as_it_does_line_by_line() -> None:
    rows = [
        _all_row(f"ORD{n:05}", f"{n // 100}.{n % 100:02}", description=f"商品{'长' * (n % 50)},{n}", fee="0.00000")
        for n in range(1, 3001)
    ]  # about 900 KB: many 64 KiB reads, each cutting a line and a 3-byte character somewhere
    total = sum(range(1, 3001))
    data = _all_bill(*rows, summary=_all_summary(3000, f"{total // 100}.{total % 100:02}"))
    assert len(data) > 10 * 64 * 1024
    from_file = read_trade_bill(io.BytesIO(data))
    by_line = read_trade_bill(data.splitlines(keepends=True))
    read, expected = list(from_file), list(by_line)
    assert read == expected and len(read) == 3000
    assert [dict(row.raw) for row in read] == [dict(row.raw) for row in expected]
    assert dict(read[-1].raw) == dict(zip(ALL_HEADER.split(","), rows[-1][1:].split(",`"), strict=True))
    assert from_file.summary == by_line.summary


@pytest.mark.parametrize(
    ("bad", "message"),
    [(b"\xff\xfe", "line 5: the line is not UTF-8"), (b"9" * (70 * 1024), "line 5: the line is too long")],
    ids=["not-utf8", "too-long"],
)
def test_a_line_refused_inside_a_chunk_comes_after_the_rows_before_it(bad: bytes, message: str) -> None:
    good = [_all_row(f"ORD0000{n}", "1.00") for n in range(3)]
    data = _all_bill(*good, "`" + SECRET)
    data = data.replace(SECRET.encode(), bad)
    read: list[TradeBillRow] = []
    with pytest.raises(BillMalformed) as refused:
        read.extend(read_trade_bill(io.BytesIO(data)))
    assert str(refused.value) == message
    assert [row.line for row in read] == [2, 3, 4]

    earlier = data.replace(b"`1.00,`0.00", b"`1.0x,`0.00", 1)  # line 2's amount, before line 5 in the same chunk
    with pytest.raises(BillMalformed, match=r"^line 2, column 应结订单金额: not an amount$"):
        list(read_trade_bill(io.BytesIO(earlier)))


def test_rows_are_frozen_values_and_raw_is_a_read_only_mapping_of_the_header() -> None:
    bill = read_trade_bill([_all_bill(_all_row("ORD00001", "1.00"), summary=_all_summary(1, "1.00", "0.01000"))])
    (row,) = list(bill)
    assert type(row) is TradeBillRow
    with pytest.raises(FrozenInstanceError):
        row.settlement_total_fen = 0  # type: ignore[misc]
    same = dataclasses.replace(row)  # built by the dataclass's own __init__
    assert same == row and hash(same) == hash(row) and repr(same) == repr(row)
    assert isinstance(row.raw, Mapping) and not isinstance(row.raw, dict)
    assert list(row.raw) == ALL_HEADER.split(",") and row.raw["商户订单号"] == "ORD00001"
    assert "商户订单号" in row.raw and "nothing" not in row.raw and row.raw.get("nothing") is None
    with pytest.raises(TypeError):
        row.raw["商户订单号"] = "ORD00002"  # type: ignore[index]
