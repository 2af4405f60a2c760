"""Fetching daily bills ([protocol: Daily bills; Applying for a bill; Downloading a bill]): apply, download,
gunzip, SHA-1, against the sandbox over real HTTP; the exact request line against an `httpx.MockTransport`.

The expected rows and summary are worked out here from the sandbox's orders, not from its bill writer.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.errors import (
    BillDownloadFailed,
    BillHashMismatch,
    BillNotFound,
    BillNotReady,
    ResponseUntrusted,
    WeChatPayRejected,
)
from ledger.wechatpay.bill_download import BillTicket, download_bill_to_temp
from ledger.wechatpay.bills import read_trade_bill
from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from ledger.wechatpay.signature import build_message, verify
from tests.support.clients import MERCHANT_SERIAL, client_maker
from tests.support.constants import MCHID, ROOT
from tests.support.servers import running

BOM, CRLF = b"\xef\xbb\xbf", b"\r\n"
SAMPLE = ROOT.parent / "shared" / "vectors" / "bills" / "sample.ALL.csv"
SAMPLE_SHA1 = "5e6c27bfe03881ce667112778b67257b318e1851"


@pytest.fixture(scope="module")
def merchant_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def wechat(factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey) -> Iterator[tuple[Sandbox, str]]:
    sandbox = Sandbox(factory=factory, merchant_private_key=merchant_key, merchant_serial_no=MERCHANT_SERIAL, seed=3)
    with running(sandbox.app) as url:
        yield sandbox, url


@pytest.fixture
def make_client(
    factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> Iterator[Callable[..., WeChatPayClient]]:
    with client_maker(factory, merchant_key, max_attempts=1) as make:
        yield lambda base_url, **kwargs: make(base_url=base_url, **kwargs)


PaidDay = tuple[Sandbox, str, WeChatPayClient]


@pytest.fixture
def paid_day(wechat: tuple[Sandbox, str], make_client: Callable[..., WeChatPayClient]) -> PaidDay:
    """The sandbox after a day of two payments and a refund, its URL, and a client for it."""
    sandbox, url = wechat
    a_day_with_a_refund(sandbox)
    return sandbox, url, make_client(url)


def today() -> dt.date:
    return dt.datetime.now(CST).date()


def a_day_with_a_refund(sandbox: Sandbox) -> None:
    """Two payments and a partial refund of the first, all today (Beijing)."""
    for out_trade_no, total in (("BILL-ORDER-1", 8800), ("BILL-ORDER-2", 10000)):
        sandbox.create_order(out_trade_no, total, "测试商品")
        sandbox.pay(out_trade_no, notify=False)
    sandbox.refund("BILL-ORDER-1", "BILL-REFUND-1", 3000, notify=False)


def parse(content: bytes) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The recipe of [protocol: Daily bills], written here so the test stands apart from any parser."""
    lines = content.decode("utf-8-sig").split("\r\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    header = lines[0].split(",")
    at = next(i for i, line in enumerate(lines) if line.startswith(("总交易单数", "资金流水总笔数")))
    rows = [dict(zip(header, line[1:].split(",`"), strict=True)) for line in lines[1:at]]
    summary = dict(zip(lines[at].split(","), lines[at + 1][1:].split(",`"), strict=True))
    return rows, summary


def fee(fen: int) -> Decimal:
    return (Decimal(fen) * Decimal("0.00006")).quantize(Decimal("0.00001"), ROUND_HALF_UP)


def expected_trade_summary(sandbox: Sandbox) -> dict[str, str]:
    """[protocol: Daily bills]: plain column sums over every row, refunds included, from the sandbox's orders."""
    paid, refunded, fees, count = Decimal(0), Decimal(0), Decimal(0), 0
    for out_trade_no in ("BILL-ORDER-1", "BILL-ORDER-2"):
        order = sandbox.orders.order(out_trade_no)
        paid += Decimal(order.total) / 100
        fees += fee(order.total)
        count += 1
        for refund in order.refunds.values():
            refunded += Decimal(refund.amount) / 100
            fees -= fee(refund.amount)
            count += 1
    return {
        "总交易单数": str(count),
        "应结订单总金额": f"{paid:.2f}",
        "退款总金额": f"{refunded:.2f}",
        "充值券退款总金额": "0.00",
        "手续费总金额": f"{fees:.5f}",
        "订单总金额": f"{paid:.2f}",
        "申请退款总金额": f"{refunded:.2f}",
    }


# -- apply and download ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tar_type", ["GZIP", None])
def test_a_day_with_payments_and_a_refund_downloads_whole_and_matches_its_sha1(
    paid_day: PaidDay, tar_type: str | None
) -> None:
    """[protocol: Applying for a bill; Downloading a bill]: the decompressed bytes are the bill, hashed."""
    sandbox, _url, client = paid_day
    ticket = client.apply_trade_bill(today(), tar_type=tar_type)
    assert ticket.hash_type == "SHA1" and ticket.gzip is (tar_type == "GZIP")
    into = io.BytesIO()
    result = client.download_bill(ticket, into)
    content = into.getvalue()
    assert result.sha1 == hashlib.sha1(content).hexdigest() == ticket.hash_value
    assert result.size == len(content)
    assert content.startswith(BOM) and content.endswith(CRLF)
    assert all(line.endswith(b"\r") for line in content.split(b"\n")[:-1]), "CRLF after every line"
    rows, summary = parse(content)
    assert summary == expected_trade_summary(sandbox)
    assert [(r["商户订单号"], r["交易状态"]) for r in rows] == [
        ("BILL-ORDER-1", "SUCCESS"),
        ("BILL-ORDER-2", "SUCCESS"),
        ("BILL-ORDER-1", "REFUND"),
    ]
    refund = rows[2]
    assert (refund["商户退款单号"], refund["退款金额"], refund["应结订单金额"]) == ("BILL-REFUND-1", "30.00", "0.00")
    assert refund["手续费"] == "-0.18000"
    paid_at = dt.datetime.fromisoformat(sandbox.orders.order("BILL-ORDER-2").success_time or "")
    assert rows[1]["交易时间"] == paid_at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
    download = [r for r in sandbox.requests if r.path == "/v3/billdownload/file"]
    assert [r.status for r in download] == [200]


def test_the_fund_flow_bill_carries_the_money_and_a_running_balance(paid_day: PaidDay) -> None:
    """[protocol: Daily bills]: 88.00 and 100.00 in, their fees (0.53, 0.60) out, 30.00 refunded, 0.18 fee back."""
    _sandbox, _url, client = paid_day
    into = io.BytesIO()
    client.download_bill(client.apply_fundflow_bill(today()), into)
    rows, summary = parse(into.getvalue())
    assert [(r["业务类型"], r["收支类型"], r["收支金额(元)"]) for r in rows] == [
        ("交易", "收入", "88.00"),
        ("扣除交易手续费", "支出", "0.53"),
        ("交易", "收入", "100.00"),
        ("扣除交易手续费", "支出", "0.60"),
        ("退款", "支出", "30.00"),
        ("退还交易手续费", "收入", "0.18"),
    ]
    assert rows[-1]["账户结余(元)"] == "157.05"
    assert summary == {
        "资金流水总笔数": "6",
        "收入笔数": "3",
        "收入金额": "188.18",
        "支出笔数": "3",
        "支出金额": "31.13",
    }
    with pytest.raises(BillNotFound):
        client.apply_fundflow_bill(today(), account_type="OPERATION")


# -- the answers that are not a bill ([protocol: Applying for a bill]) ----------------------------------------


def test_a_day_without_orders_has_no_bill(
    wechat: tuple[Sandbox, str], make_client: Callable[..., WeChatPayClient]
) -> None:
    sandbox, url = wechat
    client = make_client(url)
    with pytest.raises(BillNotFound) as caught:
        client.apply_trade_bill(today() - dt.timedelta(days=1))
    assert caught.value.reason == "no WeChat Pay bill for that day"
    a_day_with_a_refund(sandbox)
    sandbox.set_bill_fault(today(), "empty")
    with pytest.raises(BillNotFound):
        client.apply_trade_bill(today())


def test_a_bill_being_made_is_not_ready_until_the_fault_is_cleared(paid_day: PaidDay) -> None:
    """The fault is set through the sandbox's control endpoint, as another process would."""
    _sandbox, url, client = paid_day
    day = today().isoformat()
    answer = httpx.post(f"{url}/sandbox/faults", json={"bill_faults": {day: "not_ready"}})
    assert answer.json()["bill_faults"] == {day: "not_ready"}
    with pytest.raises(BillNotReady) as caught:
        client.apply_trade_bill(today())
    assert not isinstance(caught.value, WeChatPayRejected)
    httpx.post(f"{url}/sandbox/faults", json={"bill_faults": {day: None}})
    assert client.apply_trade_bill(today()).hash_type == "SHA1"


def test_other_refusals_stay_as_the_client_classifies_them(
    wechat: tuple[Sandbox, str], make_client: Callable[..., WeChatPayClient]
) -> None:
    _, url = wechat
    with pytest.raises(WeChatPayRejected) as caught:
        make_client(url).apply_trade_bill(today(), bill_type="SUCCESS")
    assert (caught.value.status, caught.value.code) == (400, "PARAM_ERROR")


# -- what the hash and the signatures guard ----------------------------------------------------------------


def test_a_corrupted_file_is_refused_and_the_temp_file_is_gone(paid_day: PaidDay, tmp_path: Path) -> None:
    """[protocol: Downloading a bill]: a mismatch means the file is discarded and the bill applied for again."""
    sandbox, _url, client = paid_day
    sandbox.set_bill_fault(today(), "corrupted")
    with pytest.raises(BillHashMismatch):
        download_bill_to_temp(client.download_bill, client.apply_trade_bill(today()), folder=tmp_path)
    assert list(tmp_path.iterdir()) == []
    sandbox.set_bill_fault(today(), None)
    path, result = download_bill_to_temp(client.download_bill, client.apply_trade_bill(today()), folder=tmp_path)
    assert list(tmp_path.iterdir()) == [path]
    assert hashlib.sha1(path.read_bytes()).hexdigest() == result.sha1


@pytest.mark.parametrize("fault", ["missing_row", "amount_changed"])
def test_a_bill_that_disagrees_with_the_orders_still_matches_its_own_hash(paid_day: PaidDay, fault: str) -> None:
    """Those faults are for reconciliation: the file is what WeChat hashed, its content is what is wrong."""
    sandbox, _url, client = paid_day
    sandbox.set_bill_fault(today(), fault)
    into = io.BytesIO()
    client.download_bill(client.apply_trade_bill(today()), into)
    rows, summary = parse(into.getvalue())
    assert len(rows) == (2 if fault == "missing_row" else 3)
    assert int(summary["总交易单数"]) == len(rows)
    if fault == "amount_changed":
        assert rows[0]["应结订单金额"] == rows[0]["订单金额"] == "88.01"
        assert summary["应结订单总金额"] == "188.01"


def test_the_download_is_signed_by_the_merchant_and_good_once(
    paid_day: PaidDay, make_client: Callable[..., WeChatPayClient]
) -> None:
    """[protocol: Downloading a bill]: the sandbox checks the Authorization over the URL's path and token."""
    _sandbox, url, client = paid_day
    ticket = client.apply_trade_bill(today())
    stranger = make_client(url, merchant_private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(WeChatPayRejected) as caught:
        stranger.download_bill(ticket, io.BytesIO())
    assert (caught.value.status, caught.value.code) == (401, "SIGN_ERROR")
    client.download_bill(ticket, io.BytesIO())
    with pytest.raises(WeChatPayRejected) as caught:
        client.download_bill(ticket, io.BytesIO())
    assert (caught.value.status, caught.value.code) == (400, "INVALID_REQUEST")


@pytest.mark.parametrize("fault", ["probe", "tamper"])
def test_an_apply_answer_that_cannot_be_verified_is_refused(paid_day: PaidDay, fault: str) -> None:
    """[protocol: Verifying an answer; Signature probes]: the apply answer is verified like any other."""
    sandbox, _url, client = paid_day
    (sandbox.probe_next_response if fault == "probe" else sandbox.tamper_next_response)()
    with pytest.raises(ResponseUntrusted):
        client.apply_trade_bill(today())


def test_a_download_url_on_another_host_is_never_sent_a_signed_request(
    make_client: Callable[..., WeChatPayClient],
) -> None:
    ticket = BillTicket("https://evil.example/v3/billdownload/file?token=abc", "SHA1", "0" * 40)
    with pytest.raises(ResponseUntrusted):
        make_client("https://api.mch.weixin.qq.com").download_bill(ticket, io.BytesIO())


def test_the_download_url_never_reaches_a_log_or_an_error(paid_day: PaidDay, caplog: pytest.LogCaptureFixture) -> None:
    sandbox, _url, client = paid_day
    caplog.set_level(logging.DEBUG)
    ticket = client.apply_trade_bill(today())
    token = httpx.URL(ticket.download_url).params["token"]
    client.download_bill(ticket, io.BytesIO())
    errors: list[BaseException] = []
    for attempt in range(2):  # a used token, then a corrupted file
        sandbox.set_bill_fault(today(), "corrupted" if attempt else None)
        try:
            client.download_bill(ticket if not attempt else client.apply_trade_bill(today()), io.BytesIO())
        except (WeChatPayRejected, BillDownloadFailed) as exc:
            errors.append(exc)
    assert len(errors) == 2
    assert "billdownload" in caplog.text, "the download was logged, without its query"
    assert token not in caplog.text
    assert "token=" not in caplog.text
    assert all("token" not in str(exc) for exc in errors)
    assert "token" not in repr(ticket)


# -- the exact request, and a known file ([protocol: Applying for a bill]) -------------------------------------


def test_the_request_line_and_the_download_against_a_fake_wechat(
    factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    """bill_date, sub_mchid, bill_type, tar_type in that order, encoded; the shared sample bill behind the URL."""
    sample = SAMPLE.read_bytes()
    assert hashlib.sha1(sample).hexdigest() == SAMPLE_SHA1
    download_url = "https://api.mch.weixin.qq.com/v3/billdownload/file?token=6XIv5TUPto7pByrTQKhd6kwvyKLG2uY2wMMR8cNXqaA_Cv_isgaUtBzp4QtiozLO&tartype=gzip"
    requests: list[httpx.Request] = []

    def wechat(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v3/billdownload/file":
            return httpx.Response(200, content=gzip.compress(sample), headers={"Content-Type": "application/x-gzip"})
        body = compact_json({"download_url": download_url, "hash_type": "SHA1", "hash_value": SAMPLE_SHA1.upper()})
        return httpx.Response(200, content=body, headers=factory.sign_headers(body, timestamp=int(time.time())))

    client = WeChatPayClient(
        mchid=MCHID,
        merchant_serial_no=MERCHANT_SERIAL,
        merchant_private_key=merchant_key,
        keys=factory.key_store,
        transport=httpx.MockTransport(wechat),
    )
    with client:
        ticket = client.apply_trade_bill(dt.date(2019, 6, 11), sub_mchid="19000000001")
        into = io.BytesIO()
        result = client.download_bill(ticket, into)
        client.apply_fundflow_bill(dt.date(2019, 6, 11), account_type="FEES", tar_type=None)
    assert into.getvalue() == sample and result.sha1 == SAMPLE_SHA1 and result.size == 1396
    apply, download, fund = requests
    assert (
        apply.url.raw_path
        == b"/v3/bill/tradebill?bill_date=2019-06-11&sub_mchid=19000000001&bill_type=ALL&tar_type=GZIP"
    )
    assert fund.url.raw_path == b"/v3/bill/fundflowbill?bill_date=2019-06-11&account_type=FEES"
    assert download.url.raw_path == download_url.removeprefix("https://api.mch.weixin.qq.com").encode()
    for request in (apply, download):
        fields = dict(part.split("=", 1) for part in request.headers["Authorization"].split(" ", 1)[1].split(","))
        fields = {k: v.strip('"') for k, v in fields.items()}
        assert fields["mchid"] == MCHID
        message = build_message("GET", request.url.raw_path, fields["timestamp"], fields["nonce_str"], b"")
        assert verify(merchant_key.public_key(), message, fields["signature"])
    assert download.headers["Accept"] == "*/*"


@pytest.mark.parametrize(
    ("served", "error"),
    [
        (lambda sample: gzip.compress(sample)[:-9], BillDownloadFailed),  # cut short
        (lambda sample: b"not gzip at all", BillDownloadFailed),
        (lambda sample: gzip.compress(sample.replace(b"88.00", b"88.10")), BillHashMismatch),
    ],
    ids=["cut-short", "not-gzip", "altered"],
)
def test_a_broken_download_is_refused(
    factory: NotificationFactory,
    merchant_key: rsa.RSAPrivateKey,
    served: Callable[[bytes], bytes],
    error: type[Exception],
) -> None:
    sample = SAMPLE.read_bytes()

    def wechat(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=served(sample))

    ticket = BillTicket("https://api.mch.weixin.qq.com/v3/billdownload/file?token=t", "SHA1", SAMPLE_SHA1)
    with WeChatPayClient(
        mchid=MCHID,
        merchant_serial_no=MERCHANT_SERIAL,
        merchant_private_key=merchant_key,
        keys=factory.key_store,
        transport=httpx.MockTransport(wechat),
    ) as client:
        with pytest.raises(error):
            client.download_bill(ticket, io.BytesIO())


def test_a_fetched_bill_reads_back_as_the_sandbox_orders_in_fen(paid_day: PaidDay, tmp_path: Path) -> None:
    """[protocol: Downloading a bill; The trade bill's format]: apply, download into a temp file,
    read it streamed: every row and the summary in fen, as the sandbox's orders say."""
    sandbox, _url, client = paid_day
    path, download = download_bill_to_temp(client.download_bill, client.apply_trade_bill(today()), folder=tmp_path)
    with path.open("rb") as file:
        bill = read_trade_bill(file)
        rows = list(bill)
    assert download.sha1 == hashlib.sha1(path.read_bytes()).hexdigest()
    one, two = sandbox.orders.order("BILL-ORDER-1"), sandbox.orders.order("BILL-ORDER-2")
    assert [(r.out_trade_no, r.trade_state, r.transaction_id, r.amount_total_fen, r.refund_fen) for r in rows] == [
        ("BILL-ORDER-1", "SUCCESS", one.transaction_id, 8800, 0),
        ("BILL-ORDER-2", "SUCCESS", two.transaction_id, 10000, 0),
        ("BILL-ORDER-1", "REFUND", one.transaction_id, 0, 3000),
    ]
    assert rows[2].out_refund_no == "BILL-REFUND-1" and rows[2].refund_id == one.refunds["BILL-REFUND-1"].refund_id
    assert [r.fee for r in rows] == [fee(8800), fee(10000), -fee(3000)]
    summary = bill.summary
    assert (summary.count, summary.settlement_total_fen, summary.refund_fen, summary.fee) == (
        3,
        18800,
        3000,
        fee(8800) + fee(10000) - fee(3000),
    )
