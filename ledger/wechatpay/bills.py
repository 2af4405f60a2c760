"""WeChat Pay's daily bills, read one line at a time ([protocol: The trade bill's format; The fund-flow bill's format]).

A bill is the day's word from WeChat on what was paid and refunded (the trade bill) or what moved
on the account (the fund-flow bill); the ledger checks its own books against it. A day can hold
hundreds of thousands of rows, so a bill is read as a stream: one row at a time, with the
summary's figures checked against running totals once the last row has gone by, in memory that
does not grow with the file. Columns are found by their header names, never by position, because
WeChat's layouts (ALL, SUCCESS, REFUND, the legacy one, the fund-flow bill) order and name them
differently. A bill that is not what WeChat writes is `BillMalformed`, naming the line (and the
column), never quoting a value.

A million-row bill is read in the morning's time budget, so the row path does little per row
(docs/benchmarks.md#daily-bills): column names are resolved to positions once per bill, a
chunk's lines are decoded in one call, amounts become fen by integer arithmetic on the text the
pattern has checked, a time is converted once for the rows that share it, `raw` is a view over
the row's values rather than a dict of its own, and a frozen row is built as a mutable twin.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from types import MappingProxyType
from typing import Generic, TypeVar, cast

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
_DIGITS = 26
"""An amount of up to this many characters times 100 fits in Decimal's 28 digits: integer arithmetic gives the same."""
_Row = TypeVar("_Row")
_Summary = TypeVar("_Summary")
_ABSENT = ("", "0.00")
"""Read in place of a column a layout does not have: each converts to that field's default."""
_EMPTY, _ZERO = range(-len(_ABSENT), 0)  # their positions, counted from the end of a row's values


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
        end = pending.rfind(b"\n")
        if end >= 0:
            block, pending = pending[:end], pending[end + 1 :]
            texts = _decoded(block)
            if texts is None:  # a line to refuse: go through them one at a time, to refuse it in its turn
                for raw in block.split(b"\n"):
                    number += 1
                    if len(raw) > MAX_LINE:
                        raise BillMalformed(number, "the line is too long")
                    if text := _decode(number, raw.removeprefix(_BOM) if number == 1 else raw):
                        yield number, text
            else:
                if number == 0:
                    texts[0] = texts[0].removeprefix("\ufeff")
                for text in texts:
                    number += 1
                    if text := text.rstrip("\r"):
                        yield number, text
        if len(pending) > MAX_LINE:
            raise BillMalformed(number + 1, "the line is too long")
    if pending:
        number += 1
        if text := _decode(number, pending.removeprefix(_BOM) if number == 1 else pending):
            yield number, text


def _decoded(block: bytes) -> list[str] | None:
    """The block's lines decoded in one call, or None if one of them must be refused."""
    try:
        texts = block.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    # a character is at most 4 bytes: only a line of more than MAX_LINE / 4 of them needs counting
    if len(block) > MAX_LINE and max(map(len, texts)) > MAX_LINE // 4:
        return None
    return texts


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


def _values(number: int, text: str, width: int) -> list[str]:
    if not text.startswith("`"):
        raise BillMalformed(number, "values must each start with a backtick")
    values = text[1:].split(_SEPARATOR)
    if len(values) != width:
        raise BillMalformed(number, f"{len(values)} fields where the header has {width}")
    return values


class _Sections:
    """The detail header, the detail rows, the summary header and the summary row, in that order."""

    def __init__(self, source: Iterable[bytes], count_column: str) -> None:
        self._lines = _lines(source)
        first = next(self._lines, None)
        if first is None:
            raise BillMalformed(1, "the file is empty")
        self.header = _names(*first)
        self._count_column = count_column
        self._header_line = first[0]
        self.summary: dict[str, str] = {}
        self.summary_line = 0

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Each detail row's values, in the header's order; then the summary is read and nothing may follow it."""
        width = len(self.header)
        number = self._header_line
        for number, text in self._lines:
            if not text.startswith("`"):
                self._read_summary(number, text)
                return
            values = text[1:].split(_SEPARATOR)
            if len(values) != width:
                raise BillMalformed(number, f"{len(values)} fields where the header has {width}")
            yield number, values
        raise BillMalformed(number + 1, "the file ends before its summary")

    def _read_summary(self, number: int, text: str) -> None:
        names = _names(number, text)
        if names[0] != self._count_column:
            raise BillMalformed(number, f"the summary header must start with {self._count_column}")
        row = next(self._lines, None)
        if row is None:
            raise BillMalformed(number + 1, "the file ends before its summary row")
        self.summary_line = row[0]
        self.summary = dict(zip(names, _values(*row, len(names)), strict=True))
        extra = next(self._lines, None)
        if extra is not None:
            raise BillMalformed(extra[0], "a line follows the summary")


class _Raw(Mapping[str, str]):
    """A row's values by header name, as written: a view over the row's values, sharing the bill's index."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: list[str]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[self._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return repr(dict(self))


# -- typed values ------------------------------------------------------------------------------
# Each takes the line and the column, to name them if the value is refused.


def _fen(line: int, column: str, value: str) -> int:
    """Yuan with at most 2 decimals, as integer fen, exactly."""
    if value == "0.00":  # most amount cells of a bill: a payment has no refund, a refund no payment
        return 0
    value = value.strip()
    if _YUAN.fullmatch(value) is None:
        problem = "more than 2 decimals" if _DECIMAL.fullmatch(value) else "not an amount"
        raise BillMalformed(line, problem, column=column)
    if len(value) > _DIGITS:  # no bill's amount; Decimal's rounding beyond 28 digits is kept for it
        return int(Decimal(value) * 100)
    # the pattern has checked the shape: digits, at most one point, and one or two digits after it
    if value[-3:-2] == ".":
        return int(value.replace(".", ""))
    if value[-2:-1] == ".":
        return int(value.replace(".", "")) * 10
    return int(value) * 100


def _decimal(line: int, column: str, value: str) -> Decimal:
    """A fee: kept with every decimal WeChat wrote (5 in trade bills), sign included."""
    value = value.strip()
    if not _DECIMAL.fullmatch(value):
        raise BillMalformed(line, "not a number", column=column)
    return Decimal(value)


def _count(line: int, column: str, value: str) -> int:
    """A count, which a summary may write as `45.0`."""
    value = value.strip()
    if not _COUNT.fullmatch(value):
        raise BillMalformed(line, "not a count", column=column)
    return int(Decimal(value))


def _optional_id(value: str) -> str | None:
    """WeChat writes `0` (or nothing) for an id a row does not have."""
    value = value.strip()
    return None if value in ("", "0") else value


def _time(line: int, column: str, value: str) -> datetime | None:
    """Beijing time; full-width colons and spaces are accepted, as some bills have them."""
    if not value.isascii():  # full-width characters are not ASCII: an ASCII value would translate to itself
        value = value.translate(_WIDE)
    value = value.strip()
    if not value:
        return None
    found = _TIME.fullmatch(value)
    if found is None:
        raise BillMalformed(line, "not a time", column=column)
    if len(value) == 19 and value.isascii():  # YYYY-MM-DD HH:MM:SS, as WeChat writes it: parsed in C
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass  # not a date, or not that shape: the general way below decides
        else:
            return datetime.combine(parsed.date(), parsed.time(), BEIJING)
    try:
        year, month, day, hour, minute, second = map(int, found.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=BEIJING)
    except ValueError:
        raise BillMalformed(line, "not a time", column=column) from None


class _Clock:
    """One column's times, each text converted once while the rows repeat it.

    A bill is in time order and a busy second has many rows: they share one (immutable) datetime.
    """

    __slots__ = ("_column", "_required", "_text", "_time")

    def __init__(self, column: str, *, required: bool) -> None:
        self._column = column
        self._required = required
        self._text: str | None = None
        self._time: datetime | None = None

    def read(self, line: int, value: str) -> datetime | None:
        if value != self._text:
            found = _time(line, self._column, value)
            if found is None and self._required:
                raise BillMalformed(line, "no time", column=self._column)
            self._text, self._time = value, found
        return self._time


def _builder(frozen: type[_Row]) -> Callable[..., _Row]:
    """Makes the frozen, slotted dataclass `frozen` from its fields in order, at the cost of a mutable one.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`: for the 31 fields
    of a `TradeBillRow` that was 4 µs, a third of reading a row. A mutable twin with the same slots
    is filled by plain stores, then made the frozen class, which Python allows between classes of
    the same slots: the result is that class's instance in every way (frozen, compared and hashed
    as it says), built as the twin is. `frozen` must have no `__post_init__`, which this skips.
    """
    if "__post_init__" in vars(frozen):
        raise TypeError(f"{frozen.__name__} has a __post_init__")
    names = [item.name for item in fields(frozen)]  # type: ignore[arg-type]
    draft = make_dataclass(f"_Draft{frozen.__name__}", names, slots=True, eq=False, repr=False, match_args=False)

    def build(*values: object) -> _Row:
        row = draft(*values)
        row.__class__ = frozen
        return cast(_Row, row)

    return build


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
    stated = _fen(line, column, summary[column])
    if stated != total:
        raise BillMalformed(line, "does not match the sum of the rows", column=column)
    return stated


def _stated_if_any(line: int, summary: Mapping[str, str], column: str | None, total: int) -> int | None:
    return None if column is None else _stated(line, summary, column, total)


class _BillReader(Generic[_Summary]):
    """A bill whose rows (after the header, which names the columns) can be read once (they are not kept);
    the summary, counted in `count_column`, exists once they all have been."""

    _started = False

    def __init__(self, source: Iterable[bytes], count_column: str) -> None:
        self._sections = _Sections(source, count_column)
        self.header = self._sections.header
        self._summary: _Summary | None = None

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a bill's rows can be read only once")
        self._started = True

    @property
    def summary(self) -> _Summary:
        """Available once every row has been read (and only if the summary matched them)."""
        if self._summary is None:
            raise RuntimeError("read every row of the bill before its summary")
        return self._summary


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
    """Where each field is in a row, found once per bill by the header's names: ALL, SUCCESS, REFUND or legacy.

    A column the layout does not have is at `_EMPTY` or `_ZERO`, among the values a row is extended by.
    """

    def __init__(self, header: tuple[str, ...]) -> None:
        self.header = header
        self.index = {name: position for position, name in enumerate(header)}

        def col(*candidates: str) -> int:
            return self.index[_required(1, header, *candidates)]

        def optional(*candidates: str, absent: int = _EMPTY) -> int:
            found = _optional(header, *candidates)
            return absent if found is None else self.index[found]

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
        self.settlement_total_fen = col("应结订单金额", "总金额")
        self.coupon_fen = col("代金券金额", "代金券或立减优惠金额")
        self.refund_id = optional("微信退款单号")
        self.out_refund_no = optional("商户退款单号")
        self.refund_fen = optional("退款金额", absent=_ZERO)
        self.recharge_refund_fen = optional("充值券退款金额", "代金券或立减优惠退款金额", absent=_ZERO)
        self.refund_type = optional("退款类型")
        self.refund_status = optional("退款状态")
        self.description = col("商品名称")
        self.attach = col("商户数据包")
        self.fee = col("手续费")
        self.fee_rate = col("费率")
        self.amount_total_fen = col("订单金额", "总金额")
        self.refund_requested_fen = optional("申请退款金额", "退款金额", absent=_ZERO)
        self.fee_rate_note = optional("费率备注")
        self.refund_requested_at = optional("退款申请时间")
        self.refund_succeeded_at = optional("退款成功时间")
        self.layout = (
            "legacy"
            if "总金额" in header
            else "REFUND"
            if "退款申请时间" in header
            else "ALL"
            if "微信退款单号" in header
            else "SUCCESS"
        )

    def name(self, position: int) -> str:
        """The header's name for a column ("" for one the layout does not have), for a refusal to name."""
        return self.header[position] if position >= 0 else ""

    def reader(self) -> Callable[[int, list[str]], TradeBillRow]:
        """Turns one row's values into its `TradeBillRow`.

        Fields are converted in the order of `TradeBillRow`, so that of two bad values the first is
        named, and passed by position: by keyword, a row would take 4 µs longer to make.
        """
        c, index, new_row = self, self.index, _builder(TradeBillRow)
        trade_time = _Clock(self.name(c.trade_time), required=True).read
        refund_requested_at = _Clock(self.name(c.refund_requested_at), required=False).read
        refund_succeeded_at = _Clock(self.name(c.refund_succeeded_at), required=False).read
        settlement, coupon, fee, amount = map(
            self.name, (c.settlement_total_fen, c.coupon_fen, c.fee, c.amount_total_fen)
        )
        refund, recharge_refund, requested = map(
            self.name, (c.refund_fen, c.recharge_refund_fen, c.refund_requested_fen)
        )

        def row(line: int, values: list[str]) -> TradeBillRow:
            raw = _Raw(index, values)
            values += _ABSENT  # where the columns the layout does not have are read
            return new_row(
                line,
                trade_time(line, values[c.trade_time]),
                values[c.appid],
                values[c.mchid],
                _optional_id(values[c.sub_mchid]),
                values[c.device_info],
                values[c.transaction_id],
                values[c.out_trade_no],
                values[c.openid],
                values[c.trade_type],
                values[c.trade_state],
                values[c.bank_type],
                values[c.currency],
                _fen(line, settlement, values[c.settlement_total_fen]),
                _fen(line, coupon, values[c.coupon_fen]),
                _optional_id(values[c.refund_id]),
                _optional_id(values[c.out_refund_no]),
                _fen(line, refund, values[c.refund_fen]),
                _fen(line, recharge_refund, values[c.recharge_refund_fen]),
                values[c.refund_type],
                values[c.refund_status],
                values[c.description],
                values[c.attach],
                _decimal(line, fee, values[c.fee]),
                values[c.fee_rate],
                _fen(line, amount, values[c.amount_total_fen]),
                _fen(line, requested, values[c.refund_requested_fen]),
                values[c.fee_rate_note],
                refund_requested_at(line, values[c.refund_requested_at]),
                refund_succeeded_at(line, values[c.refund_succeeded_at]),
                raw,
            )

        return row


class TradeBill(_BillReader[TradeBillSummary]):
    """A trade bill being read: iterate it once for its rows, then read `summary` (checked against them)."""

    def __init__(self, source: Iterable[bytes]) -> None:
        super().__init__(source, "总交易单数")
        self._columns = _TradeColumns(self.header)
        self.layout: str = self._columns.layout

    def __iter__(self) -> Iterator[TradeBillRow]:
        self._start()
        read = self._columns.reader()
        count = settlement = coupon = refund = recharge = amount = requested = 0
        fee = Decimal(0)
        for line, values in self._sections.rows():
            row = read(line, values)
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
        if _count(line, "总交易单数", summary["总交易单数"]) != count:
            raise BillMalformed(line, f"does not match the rows ({count} read)", column="总交易单数")
        fee_column = _required(line, summary, "手续费总金额")
        if _decimal(line, fee_column, summary[fee_column]) != fee:
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


def _fundflow_row(header: tuple[str, ...]) -> Callable[[int, list[str]], FundFlowRow]:
    for name in _FUNDFLOW_COLUMNS:
        _required(1, header, name)
    index = {name: i for i, name in enumerate(header)}
    booked, business_id, flow_id, business_name, business_type, direction, amount, balance, applicant, note, voucher = (
        map(index.__getitem__, _FUNDFLOW_COLUMNS)
    )
    new_row = _builder(FundFlowRow)
    booked_at = _Clock("记账时间", required=True).read

    def row(line: int, values: list[str]) -> FundFlowRow:
        kind = values[direction].strip()
        if kind not in _DIRECTIONS:
            raise BillMalformed(line, "neither 收入 nor 支出", column="收支类型")
        return new_row(
            line,
            booked_at(line, values[booked]),
            values[business_id],
            values[flow_id],
            values[business_name],
            values[business_type],
            kind,
            _fen(line, "收支金额(元)", values[amount]),
            _fen(line, "账户结余(元)", values[balance]),
            values[applicant],
            values[note],
            values[voucher],
            _Raw(index, values),
        )

    return row


class FundFlowBill(_BillReader[FundFlowSummary]):
    """A fund-flow bill being read: iterate it once for its rows, then read `summary` (checked against them)."""

    def __init__(self, source: Iterable[bytes]) -> None:
        super().__init__(source, "资金流水总笔数")
        self._row = _fundflow_row(self.header)

    def __iter__(self) -> Iterator[FundFlowRow]:
        self._start()
        counts = {direction: 0 for direction in _DIRECTIONS}
        sums = {direction: 0 for direction in _DIRECTIONS}
        for line, values in self._sections.rows():
            row = self._row(line, values)
            counts[row.direction] += 1
            sums[row.direction] += row.amount_fen
            yield row
        line, summary = self._sections.summary_line, self._sections.summary
        for column in ("收入笔数", "支出笔数", "收入金额", "支出金额"):
            _required(line, summary, column)
        total = counts["收入"] + counts["支出"]
        for column, expected in (("资金流水总笔数", total), ("收入笔数", counts["收入"]), ("支出笔数", counts["支出"])):
            if _count(line, column, summary[column]) != expected:
                raise BillMalformed(line, f"does not match the rows ({expected} read)", column=column)
        self._summary = FundFlowSummary(
            count=total,
            income_count=counts["收入"],
            income_fen=_stated(line, summary, "收入金额", sums["收入"]),
            expense_count=counts["支出"],
            expense_fen=_stated(line, summary, "支出金额", sums["支出"]),
            raw=MappingProxyType(summary),
        )


def read_fundflow_bill(source: Iterable[bytes]) -> FundFlowBill:
    """Start reading a decompressed fund-flow bill; as `read_trade_bill`."""
    return FundFlowBill(source)
