"""Details in which the sandbox differed from WeChat Pay, as two independent SDKs saw it from outside, each
now as WeChat does it: a platform-certificate mode from the command line, the 5 s answer deadline whatever
the time scale, 34-digit public-key ids, 40-digit certificate serials, coupons, the refund's key order."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ledger.settings import Settings
from ledger.wechatpay import aead
from ledger.wechatpay.keys import KeyStore, PlatformCertificate
from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json, random_certificate_serial
from tests.support.cli import CLI, clean_env
from tests.support.constants import APPID, MCHID
from tests.support.sandbox import NotifyEndpoint, NotifyReceiver, Receiving, call, query, serve, trade_bill, verified
from tests.support.servers import free_port

# [protocol: The refund resource]'s official sample: `success_time` between `refund_status` and the account.
OFFICIAL_REFUND = (
    '{"mchid":"1900000100","transaction_id":"1008450740201411110005820873","out_trade_no":"20150806125346",'
    '"refund_id":"50200207182018070300011301001","out_refund_no":"7752501201407033233368018","refund_status":"SUCCESS",'
    '"success_time":"2018-06-08T10:34:56+08:00","user_received_account":"招商银行信用卡0403",'
    '"amount":{"total":999,"refund":999,"payer_total":999,"payer_refund":999}}'
).encode()


def delivered(receiver: NotifyReceiver, keys: KeyStore, apiv3_key: str) -> list[VerifiedNotification]:
    verifier = NotificationVerifier(keys, apiv3_key.encode())
    return [verifier.verify(headers, body) for headers, body, _ in receiver.received]


def downloaded_certificates(response: httpx.Response, apiv3_key: str) -> list[PlatformCertificate]:
    """[protocol: Downloading platform certificates]: each entry decrypted, its serial_no checked as written."""
    out = []
    for entry in response.json()["data"]:
        sealed = entry["encrypt_certificate"]
        pem = aead.decrypt(apiv3_key.encode(), sealed["nonce"], sealed["associated_data"], sealed["ciphertext"])
        assert entry["serial_no"] == format(x509.load_pem_x509_certificate(pem).serial_number, "040X")
        out.append(PlatformCertificate.from_pem(pem))
    return out


# -- (1) a platform-certificate mode from the command line --------------------------------------


def test_the_sandbox_command_signs_with_its_platform_certificate_when_asked(
    tmp_path: Path, notify_endpoint: tuple[NotifyEndpoint, str]
) -> None:
    endpoint, base = notify_endpoint
    receiver = endpoint.receiver = NotifyReceiver()
    port = free_port()
    folder = tmp_path / "sb"
    options = ["--port", str(port), "--folder", str(folder), "--notify-url", f"{base}/notify"]
    certificate_mode = ["--sign-with", "certificate", "--sub-mchid", "1900000201", "--sub-mchid", "1900000202"]
    process = subprocess.Popen(
        [*CLI, "sandbox", *options, *certificate_mode],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as sandbox:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if sandbox.get("/sandbox/deliveries").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            env = dict(line.split("=", 1) for line in (folder / "env").read_text().splitlines())
            key = load_pem_private_key(Path(env["WECHATPAY_MERCHANT_PRIVATE_KEY_FILE"]).read_bytes(), None)
            assert isinstance(key, rsa.RSAPrivateKey)
            signing = {"key": key, "mchid": env["WECHATPAY_MCHID"], "serial": env["WECHATPAY_MERCHANT_SERIAL_NO"]}

            # The certificate download a certificate-mode client starts with, answered with that certificate.
            answer = call(sandbox, "GET", "/v3/certificates", **signing)
            (certificate,) = downloaded_certificates(answer, env["WECHATPAY_APIV3_KEY"])
            assert answer.headers["Wechatpay-Serial"] == format(certificate.certificate.serial_number, "040X")
            assert verified(answer, KeyStore({}, [certificate])) == certificate.serial

            order = {"out_trade_no": "ORDER-9301", "amount_total": 100, "sub_mchid": "1900000202"}
            assert sandbox.post("/sandbox/orders", json=order).status_code == 201
            assert sandbox.post("/sandbox/orders/ORDER-9301/pay", json={"sub_mchid": "1900000202"}).status_code == 200
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)
        assert process.stderr is not None
        banner = process.stderr.read()
        process.stderr.close()
        endpoint.receiver = NotifyReceiver()

    (notification,) = delivered(receiver, KeyStore({}, [certificate]), env["WECHATPAY_APIV3_KEY"])
    assert notification.key_serial == certificate.serial
    assert notification.resource["sub_mchid"] == "1900000202"
    assert (env["WECHATPAY_MODE"], env["WECHATPAY_SUB_MCHIDS"]) == ("partner", "1900000201,1900000202")
    assert f"signs with {answer.headers['Wechatpay-Serial']} (certificate)" in banner


# -- (2) the answer deadline is WeChat's 5 s, whatever the time scale -----------------------------


def test_the_answer_deadline_is_not_shortened_by_the_time_scale(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    sandbox = make_sandbox(time_scale=1000)  # retries 1000 times sooner; the receiver still has 5 s
    receiver = NotifyReceiver(delays=(1.5,))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9311", 100)
        sandbox.pay("ORDER-9311")
        sandbox.wait_idle(10)
    assert [(d.attempt, d.status, d.error, d.accepted) for d in sandbox.deliveries] == [(0, 204, None, True)]
    assert len(receiver.received) == 1


# -- (3) public-key ids and (4) certificate serials as WeChat writes them -------------------------


def test_public_key_ids_have_34_digits_like_wechats() -> None:
    assert re.fullmatch(r"PUB_KEY_ID_\d{34}", "PUB_KEY_ID_0000000000000024101100397200000006")  # the official one
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ids = {NotificationFactory(private_key=key).public_key_id for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(r"PUB_KEY_ID_\d{34}", i) for i in ids)


def test_certificate_serials_have_40_hex_digits_leading_zeros_kept(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving, merchant_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    serials = [random_certificate_serial() for _ in range(2000)]
    assert all(len(format(s, "X")) == 40 and s < 2**159 for s in serials)  # a serial X.509 allows, never shorter

    padded = "0" * 34 + "ABC123"
    factory = NotificationFactory(mchid=MCHID, appid=APPID).with_certificate(serial=0xABC123)
    assert factory.certificate_serial == padded
    sandbox = make_sandbox(factory=factory, signing="certificate")
    receiver = NotifyReceiver()
    with serve(sandbox.app) as wechat, receiving(sandbox, receiver):
        listed = call(wechat, "GET", "/v3/certificates", key=merchant_key)
        (certificate,) = downloaded_certificates(listed, factory.apiv3_key)
        assert [entry["serial_no"] for entry in listed.json()["data"]] == [padded]
        assert listed.headers["Wechatpay-Serial"] == padded
        sandbox.create_order("ORDER-9321", 100)
        named = query(wechat, "ORDER-9321", merchant_key, headers={"Wechatpay-Serial": "ABC123"})
        assert named.headers["Wechatpay-Serial"] == padded  # the serial named without its zeros, still found
        sandbox.pay("ORDER-9321")
        sandbox.wait_idle(5)
        env = sandbox.write_ledger_config(tmp_path / "sandbox", str(wechat.base_url))

    assert (tmp_path / "sandbox" / "platform_certs" / f"{padded}.pem").is_file()
    ((headers, _, _),) = receiver.received
    assert headers["wechatpay-serial"] == padded
    merchant = Settings.load({**env, "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'l.sqlite3'}"}).default_merchant
    assert merchant is not None
    # The ledger's own key store, from the written configuration or the download, verifies them.
    for keys in (merchant.keys, KeyStore({}, [certificate])):
        (notification,) = delivered(receiver, keys, factory.apiv3_key)
        assert notification.resource["out_trade_no"] == "ORDER-9321"
        assert verified(named, keys) == "ABC123"  # normalised as the ledger compares serials


# -- (5) coupons: payer_total below total --------------------------------------------------------


def test_a_payment_may_carry_a_coupon(
    make_sandbox: Callable[..., Sandbox],
    factory: NotificationFactory,
    receiving: Receiving,
    merchant_key: rsa.RSAPrivateKey,
) -> None:
    sandbox = make_sandbox()
    receiver = NotifyReceiver()
    with serve(sandbox.app) as wechat, receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9331", 100)
        sandbox.create_order("ORDER-9332", 100)
        sandbox.pay("ORDER-9331", discount=20)
        paid = wechat.post("/sandbox/orders/ORDER-9332/pay", json={"discount": 30, "coupon_type": "NOCASH"})
        assert paid.status_code == 200
        sandbox.refund("ORDER-9331", "R-9331", 50)
        sandbox.wait_idle(5)
        answered = query(wechat, "ORDER-9331", merchant_key).json()
        day = dt.datetime.fromisoformat(answered["success_time"]).astimezone(CST).date()
        rows = {r.out_trade_no: r for r in trade_bill(wechat, merchant_key, day) if r.trade_state == "SUCCESS"}

    # Deliveries run concurrently: they may arrive in any order.
    notifications = delivered(receiver, factory.key_store(), factory.apiv3_key)
    (refund,) = [n for n in notifications if n.event_type == "REFUND.SUCCESS"]
    by_no = {n.resource["out_trade_no"]: n for n in notifications if n.event_type == "TRANSACTION.SUCCESS"}
    cash, nocash = by_no["ORDER-9331"], by_no["ORDER-9332"]
    # [protocol: The payment resource]: `total` is the order's amount; `payer_total` what the payer paid.
    assert cash.resource["amount"] == {"total": 100, "payer_total": 80, "currency": "CNY", "payer_currency": "CNY"}
    assert nocash.resource["amount"]["payer_total"] == 70
    (coupon,) = cash.resource["promotion_detail"]
    assert list(coupon) == [
        "coupon_id", "name", "scope", "type", "amount", "stock_id", "wechatpay_contribute", "merchant_contribute",
        "other_contribute", "currency",
    ]  # fmt: skip
    assert (coupon["type"], coupon["amount"], nocash.resource["promotion_detail"][0]["type"]) == ("CASH", 20, "NOCASH")
    assert list(cash.resource)[-2:] == ["amount", "promotion_detail"]
    assert (answered["amount"]["payer_total"], answered["promotion_detail"]) == (80, cash.resource["promotion_detail"])
    assert refund.resource["amount"] == {"total": 100, "refund": 50, "payer_total": 80, "payer_refund": 40}
    # The bill: the coupon as 代金券金额; a NOCASH coupon is not settled to the merchant.
    assert (rows["ORDER-9331"].coupon_fen, rows["ORDER-9331"].settlement_total_fen) == (20, 100)
    assert (rows["ORDER-9332"].coupon_fen, rows["ORDER-9332"].settlement_total_fen) == (30, 70)
    assert rows["ORDER-9332"].amount_total_fen == 100


# -- (6) the refund resource's key order -----------------------------------------------------------


def test_refund_resources_keep_the_official_key_order(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sample = NotificationFactory(mchid="1900000100").refund(
        "20150806125346",
        "7752501201407033233368018",
        999,
        999,
        transaction_id="1008450740201411110005820873",
        refund_id="50200207182018070300011301001",
        success_time="2018-06-08T10:34:56+08:00",
        user_received_account="招商银行信用卡0403",
    )
    assert compact_json(sample) == OFFICIAL_REFUND
    sandbox = make_sandbox()
    receiver = NotifyReceiver()
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9341", 100)
        sandbox.pay("ORDER-9341", notify=False)
        sandbox.refund("ORDER-9341", "R-9341", 100)
        sandbox.wait_idle(5)
    (refund,) = delivered(receiver, factory.key_store(), factory.apiv3_key)
    assert list(refund.resource) == list(sample)
    assert refund.resource["success_time"].endswith("+08:00")
