"""WeChat Pay's daily bills, read one line at a time ([protocol: The trade bill's format; The fund-flow bill's format]).

A bill is the day's word from WeChat on what was paid and refunded (the trade bill) or what moved
on the account (the fund-flow bill); the ledger checks its own books against it. A day can hold
hundreds of thousands of rows, so a bill is read as a stream: one row at a time, with the
summary's figures checked against running totals once the last row has gone by, in memory that
does not grow with the file. Columns are found by their header names, never by position, because
WeChat's layouts (ALL, SUCCESS, REFUND, the legacy one, the fund-flow bill) order and name them
differently. A bill that is not what WeChat writes is `BillMalformed`, naming the line (and the
column), never quoting a value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from types import MappingProxyType

from ledger.errors import BillMalformed

__all__ = [
    "BEIJING",
    "FundFlowBill",
    "FundFlowRow",
    "FundFlowSummary",
    "TradeBill",
    "TradeBillRow",
    "TradeBillSummary",
    "read_fundflow_bill",
    "read_trade_bill",
]

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Every time in a bill is Beijing time, written without an offset."""

MAX_LINE = 64 * 1024
"""A longer line is not a bill's: refused before it is held in memory whole."""

_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_SEPARATOR = ",`"  # a plain comma may sit inside a value; a comma and a backtick never does
_YUAN = re.compile(r"-?\d+(?:\.\d{1,2})?")
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
_COUNT = re.compile(r"\d+(?:\.0*)?")
_TIME = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})[ T]+(\d{1,2}):(\d{1,2}):(\d{1,2})")
_WIDE = str.maketrans({"：": ":", "\u3000": " ", "（": "(", "）": ")"})


# -- the four parts of a bill ------------------------------------------------------------------


def _chunks(source: Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if callable(read):  # a file object: fixed-size reads, so one huge line cannot be read whole
        return iter(partial(read, _CHUNK), b"")
    return iter(source)


def _lines(source: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line: BOM and line endings removed, UTF-8 decoded."""
    number = 0
    pending = b""
    for chunk in _chunks(source):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            if len(raw) > MAX_LINE:
                raise BillMalformed(number, "the line is too long")
            if number == 1:
                raw = raw.removeprefix(_BOM)
            if text := _decode(number, raw):
                yield number, text
        if len(pending) > MAX_LINE:
            raise BillMalformed(number + 1, "the line is too long")
    if pending:
        number += 1
        if text := _decode(number, pending.removeprefix(_BOM) if number == 1 else pending):
            yield number, text


def _decode(number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise BillMalformed(number, "the line is not UTF-8") from None


def _names(number: int, text: str) -> tuple[str, ...]:
    """A header's column names, full-width colons, spaces and brackets made ASCII (`(元)` either way)."""
    if text.startswith("`"):
        raise BillMalformed(number, "a header was expected, not values")
    names = tuple(name.strip().translate(_WIDE) for name in text.split(","))
    if len(set(names)) != len(names) or "" in names:
        raise BillMalformed(number, "the header names a column twice or not at all")
    return names


def _values(number: int, text: str, names: tuple[str, ...]) -> dict[str, str]:
    if not text.startswith("`"):
        raise BillMalformed(number, "values must each start with a backtick")
    values = text[1:].split(_SEPARATOR)
    if len(values) != len(names):
        raise BillMalformed(number, f"{len(values)} fields where the header has {len(names)}")
    return dict(zip(names, values, strict=True))


class _Sections:
    """The detail header, the detail rows, the summary header and the summary row, in that order."""

    def __init__(self, source: Iterable[bytes], count_column: str) -> None:
        self._lines = _lines(source)
        first = next(self._lines, None)
        if first is None:
            raise BillMalformed(1, "the file is empty")
        self.header = _names(*first)
        self._count_column = count_column
        self._last = first[0]
        self.summary: dict[str, str] = {}
        self.summary_line = 0

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        """Each detail row by column name; then the summary is read and nothing may follow it."""
        for number, text in self._lines:
            self._last = number
            if not text.startswith("`"):
                self._read_summary(number, text)
                return
            yield number, _values(number, text, self.header)
        raise BillMalformed(self._last + 1, "the file ends before its summary")

    def _read_summary(self, number: int, text: str) -> None:
        names = _names(number, text)
        if names[0] != self._count_column:
            raise BillMalformed(number, f"the summary header must start with {self._count_column}")
        row = next(self._lines, None)
        if row is None:
            raise BillMalformed(number + 1, "the file ends before its summary row")
        self.summary_line = row[0]
        self.summary = _values(row[0], row[1], names)
        extra = next(self._lines, None)
        if extra is not None:
            raise BillMalformed(extra[0], "a line follows the summary")


# -- typed values ------------------------------------------------------------------------------


class _Fields:
    """One row's values by column name, typed; every failure names the line and the column."""

    __slots__ = ("line", "record")

    def __init__(self, line: int, record: Mapping[str, str]) -> None:
        self.line = line
        self.record = record

    def text(self, column: str | None, default: str = "") -> str:
        return default if column is None else self.record[column]

    def optional_id(self, column: str | None) -> str | None:
        """WeChat writes `0` (or nothing) for an id a row does not have."""
        value = self.text(column).strip()
        return None if value in ("", "0") else value

    def fen(self, column: str | None, default: int = 0) -> int:
        """Yuan with at most 2 decimals, as integer fen, exactly."""
        if column is None:
            return default
        value = self.record[column].strip()
        if not _YUAN.fullmatch(value):
            problem = "more than 2 decimals" if _DECIMAL.fullmatch(value) else "not an amount"
            raise BillMalformed(self.line, problem, column=column)
        return int(Decimal(value) * 100)

    def decimal(self, column: str) -> Decimal:
        """A fee: kept with every decimal WeChat wrote (5 in trade bills), sign included."""
        value = self.record[column].strip()
        if not _DECIMAL.fullmatch(value):
            raise BillMalformed(self.line, "not a number", column=column)
        return Decimal(value)

    def count(self, column: str) -> int:
        """A count, which a summary may write as `45.0`."""
        value = self.record[column].strip()
        if not _COUNT.fullmatch(value):
            raise BillMalformed(self.line, "not a count", column=column)
        return int(Decimal(value))

    def time(self, column: str | None) -> datetime | None:
        """Beijing time; full-width colons and spaces are accepted, as some bills have them."""
        if column is None:
            return None
        value = self.record[column].translate(_WIDE).strip()
        if not value:
            return None
        found = _TIME.fullmatch(value)
        try:
            if found is None:
                raise ValueError(value)
            year, month, day, hour, minute, second = map(int, found.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)
        except ValueError:
            raise BillMalformed(self.line, "not a time", column=column) from None

    def required_time(self, column: str) -> datetime:
        found = self.time(column)
        if found is None:
            raise BillMalformed(self.line, "no time", column=column)
        return found


def _optional(names: Iterable[str], *candidates: str) -> str | None:
    """The first of `candidates` a header has: layouts name some columns differently."""
    return next((name for name in candidates if name in names), None)


def _required(line: int, names: Iterable[str], *candidates: str) -> str:
    found = _optional(names, *candidates)
    if found is None:
        raise BillMalformed(line, f"the header has no {candidates[0]} column")
    return found


def _stated(line: int, summary: Mapping[str, str], column: str, total: int) -> int:
    """The summary's figure for a column, which must be the rows' total."""
    stated = _Fields(line, summary).fen(column)
    if stated != total:
        raise BillMalformed(line, "does not match the sum of the rows", column=column)
    return stated


def _stated_if_any(line: int, summary: Mapping[str, str], column: str | None, total: int) -> int | None:
    return None if column is None else _stated(line, summary, column, total)


class _OnceIterable:
    """Rows can be read once (they are not kept); the summary exists once they all have been."""

    _started = False

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a bill's rows can be read only once")
        self._started = True


# -- the trade bill ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeBillRow:
    """One payment or refund; `raw` keeps every column by its header name, as written (without the backtick)."""

    line: int
    trade_time: datetime
    appid: str
    mchid: str
    sub_mchid: str | None
    device_info: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_type: str
    trade_state: str
    bank_type: str
    currency: str
    settlement_total_fen: int
    coupon_fen: int
    refund_id: str | None
    out_refund_no: str | None
    refund_fen: int
    recharge_refund_fen: int
    refund_type: str
    refund_status: str
    description: str
    attach: str
    fee: Decimal
    fee_rate: str
    amount_total_fen: int
    refund_requested_fen: int
    fee_rate_note: str
    refund_requested_at: datetime | None  # the REFUND layout only
    refund_succeeded_at: datetime | None  # the REFUND layout only, and only once it succeeded
    raw: Mapping[str, str] = field(repr=False, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class TradeBillSummary:
    """The summary row; a figure the layout's summary does not have is None. Each was checked against the rows."""

    count: int
    settlement_total_fen: int
    fee: Decimal
    refund_fen: int | None
    recharge_refund_fen: int | None
    amount_total_fen: int | None
    refund_requested_fen: int | None
    raw: Mapping[str, str] = field(repr=False, hash=False, compare=False)


class _TradeColumns:
    """Which header name holds each field, resolved once per bill: ALL, SUCCESS, REFUND or legacy."""

    def __init__(self, header: tuple[str, ...]) -> None:
        col = partial(_required, 1, header)
        optional = partial(_optional, header)

        self.trade_time = col("交易时间")
        self.appid = col("公众账号ID")
        self.mchid = col("商户号")
        self.sub_mchid = col("特约商户号", "子商户号")
        self.device_info = col("设备号")
        self.transaction_id = col("微信订单号")
        self.out_trade_no = col("商户订单号")
        self.openid = col("用户标识")
        self.trade_type = col("交易类型")
        self.trade_state = col("交易状态")
        self.bank_type = col("付款银行")
        self.currency = col("货币种类")
        self.settlement_total = col("应结订单金额", "总金额")
        self.coupon = col("代金券金额", "代金券或立减优惠金额")
        self.refund_id = optional("微信退款单号")
        self.out_refund_no = optional("商户退款单号")
        self.refund = optional("退款金额")
        self.recharge_refund = optional("充值券退款金额", "代金券或立减优惠退款金额")
        self.refund_type = optional("退款类型")
        self.refund_status = optional("退款状态")
        self.description = col("商品名称")
        self.attach = col("商户数据包")
        self.fee = col("手续费")
        self.fee_rate = col("费率")
        self.amount_total = col("订单金额", "总金额")
        self.refund_requested = optional("申请退款金额", "退款金额")
        self.fee_rate_note = optional("费率备注")
        self.refund_requested_at = optional("退款申请时间")
        self.refund_succeeded_at = optional("退款成功时间")
        self.layout = (
            "legacy"
            if "总金额" in header
            else "REFUND"
            if self.refund_requested_at
            else "ALL"
            if self.refund_id
            else "SUCCESS"
        )

    def row(self, line: int, record: dict[str, str]) -> TradeBillRow:
        f = _Fields(line, record)
        return TradeBillRow(
            line=line,
            trade_time=f.required_time(self.trade_time),
            appid=record[self.appid],
            mchid=record[self.mchid],
            sub_mchid=f.optional_id(self.sub_mchid),
            device_info=record[self.device_info],
            transaction_id=record[self.transaction_id],
            out_trade_no=record[self.out_trade_no],
            openid=record[self.openid],
            trade_type=record[self.trade_type],
            trade_state=record[self.trade_state],
            bank_type=record[self.bank_type],
            currency=record[self.currency],
            settlement_total_fen=f.fen(self.settlement_total),
            coupon_fen=f.fen(self.coupon),
            refund_id=f.optional_id(self.refund_id),
            out_refund_no=f.optional_id(self.out_refund_no),
            refund_fen=f.fen(self.refund),
            recharge_refund_fen=f.fen(self.recharge_refund),
            refund_type=f.text(self.refund_type),
            refund_status=f.text(self.refund_status),
            description=record[self.description],
            attach=record[self.attach],
            fee=f.decimal(self.fee),
            fee_rate=record[self.fee_rate],
            amount_total_fen=f.fen(self.amount_total),
            refund_requested_fen=f.fen(self.refund_requested),
            fee_rate_note=f.text(self.fee_rate_note),
            refund_requested_at=f.time(self.refund_requested_at),
            refund_succeeded_at=f.time(self.refund_succeeded_at),
            raw=MappingProxyType(record),
        )


class TradeBill(_OnceIterable):
    """A trade bill being read: iterate it once for its rows, then read `summary` (checked against them)."""

    def __init__(self, source: Iterable[bytes]) -> None:
        self._sections = _Sections(source, "总交易单数")
        self.header = self._sections.header
        self._columns = _TradeColumns(self.header)
        self.layout: str = self._columns.layout
        self._summary: TradeBillSummary | None = None

    def __iter__(self) -> Iterator[TradeBillRow]:
        self._start()
        columns = self._columns
        count = settlement = coupon = refund = recharge = amount = requested = 0
        fee = Decimal(0)
        for line, record in self._sections.rows():
            row = columns.row(line, record)
            count += 1
            settlement += row.settlement_total_fen
            coupon += row.coupon_fen
            refund += row.refund_fen
            recharge += row.recharge_refund_fen
            amount += row.amount_total_fen
            requested += row.refund_requested_fen
            fee += row.fee
            yield row
        self._summary = self._check(count, settlement, refund, recharge, amount, requested, fee)

    def _check(
        self, count: int, settlement: int, refund: int, recharge: int, amount: int, requested: int, fee: Decimal
    ) -> TradeBillSummary:
        line, summary = self._sections.summary_line, self._sections.summary
        f = _Fields(line, summary)
        if f.count("总交易单数") != count:
            raise BillMalformed(line, f"does not match the rows ({count} read)", column="总交易单数")
        fee_column = _required(line, summary, "手续费总金额")
        if f.decimal(fee_column) != fee:
            raise BillMalformed(line, "does not match the sum of the rows", column=fee_column)
        return TradeBillSummary(
            count=count,
            settlement_total_fen=_stated(
                line, summary, _required(line, summary, "应结订单总金额", "总交易额"), settlement
            ),
            fee=fee,
            refund_fen=_stated_if_any(line, summary, _optional(summary, "退款总金额", "总退款金额"), refund),
            recharge_refund_fen=_stated_if_any(
                line, summary, _optional(summary, "充值券退款总金额", "总代金券或立减优惠退款金额"), recharge
            ),
            amount_total_fen=_stated_if_any(line, summary, _optional(summary, "订单总金额"), amount),
            refund_requested_fen=_stated_if_any(line, summary, _optional(summary, "申请退款总金额"), requested),
            raw=MappingProxyType(summary),
        )

    @property
    def summary(self) -> TradeBillSummary:
        """Available once every row has been read (and only if the summary matched them)."""
        if self._summary is None:
            raise RuntimeError("read every row of the bill before its summary")
        return self._summary


def read_trade_bill(source: Iterable[bytes]) -> TradeBill:
    """Start reading a decompressed trade bill: bytes in chunks or lines, or a binary file object.

    The header is read now (an empty file or an unknown layout is refused at once); the rows as
    the result is iterated; the summary is checked when the last row has gone by.
    """
    return TradeBill(source)


# -- the fund-flow bill ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FundFlowRow:
    """One movement of money on the account; `raw` keeps every column by its (normalised) header name."""

    line: int
    booked_at: datetime
    business_id: str
    flow_id: str
    business_name: str
    business_type: str
    direction: str  # 收入 (in) or 支出 (out)
    amount_fen: int
    balance_fen: int
    applicant: str
    note: str
    voucher_no: str
    raw: Mapping[str, str] = field(repr=False, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class FundFlowSummary:
    """The summary row, each figure checked against the rows."""

    count: int
    income_count: int
    income_fen: int
    expense_count: int
    expense_fen: int
    raw: Mapping[str, str] = field(repr=False, hash=False, compare=False)


_DIRECTIONS = ("收入", "支出")
_FUNDFLOW_COLUMNS = (
    "记账时间",
    "微信支付业务单号",
    "资金流水单号",
    "业务名称",
    "业务类型",
    "收支类型",
    "收支金额(元)",
    "账户结余(元)",
    "资金变更提交申请人",
    "备注",
    "业务凭证号",
)


def _fundflow_row(header: tuple[str, ...]) -> Callable[[int, dict[str, str]], FundFlowRow]:
    for name in _FUNDFLOW_COLUMNS:
        _required(1, header, name)

    def row(line: int, record: dict[str, str]) -> FundFlowRow:
        f = _Fields(line, record)
        direction = record["收支类型"].strip()
        if direction not in _DIRECTIONS:
            raise BillMalformed(line, "neither 收入 nor 支出", column="收支类型")
        return FundFlowRow(
            line=line,
            booked_at=f.required_time("记账时间"),
            business_id=record["微信支付业务单号"],
            flow_id=record["资金流水单号"],
            business_name=record["业务名称"],
            business_type=record["业务类型"],
            direction=direction,
            amount_fen=f.fen("收支金额(元)"),
            balance_fen=f.fen("账户结余(元)"),
            applicant=record["资金变更提交申请人"],
            note=record["备注"],
            voucher_no=record["业务凭证号"],
            raw=MappingProxyType(record),
        )

    return row


class FundFlowBill(_OnceIterable):
    """A fund-flow bill being read: iterate it once for its rows, then read `summary` (checked against them)."""

    def __init__(self, source: Iterable[bytes]) -> None:
        self._sections = _Sections(source, "资金流水总笔数")
        self.header = self._sections.header
        self._row = _fundflow_row(self.header)
        self._summary: FundFlowSummary | None = None

    def __iter__(self) -> Iterator[FundFlowRow]:
        self._start()
        counts = {direction: 0 for direction in _DIRECTIONS}
        sums = {direction: 0 for direction in _DIRECTIONS}
        for line, record in self._sections.rows():
            row = self._row(line, record)
            counts[row.direction] += 1
            sums[row.direction] += row.amount_fen
            yield row
        line, summary = self._sections.summary_line, self._sections.summary
        f = _Fields(line, summary)
        for column in ("收入笔数", "支出笔数", "收入金额", "支出金额"):
            _required(line, summary, column)
        total = counts["收入"] + counts["支出"]
        for column, expected in (("资金流水总笔数", total), ("收入笔数", counts["收入"]), ("支出笔数", counts["支出"])):
            if f.count(column) != expected:
                raise BillMalformed(line, f"does not match the rows ({expected} read)", column=column)
        self._summary = FundFlowSummary(
            count=total,
            income_count=counts["收入"],
            income_fen=_stated(line, summary, "收入金额", sums["收入"]),
            expense_count=counts["支出"],
            expense_fen=_stated(line, summary, "支出金额", sums["支出"]),
            raw=MappingProxyType(summary),
        )

    @property
    def summary(self) -> FundFlowSummary:
        """Available once every row has been read (and only if the summary matched them)."""
        if self._summary is None:
            raise RuntimeError("read every row of the bill before its summary")
        return self._summary


def read_fundflow_bill(source: Iterable[bytes]) -> FundFlowBill:
    """Start reading a decompressed fund-flow bill; as `read_trade_bill`."""
    return FundFlowBill(source)
