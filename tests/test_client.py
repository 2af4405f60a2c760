"""The outbound client against a fake WeChat Pay ([protocol: Calling WeChat Pay; Signature probes; Test vectors] D1/V8).

No network: an `httpx.MockTransport` plays WeChat Pay, signing its answers with the session
`factory` key, and a fake clock whose `sleep` advances time stands in for waiting.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ledger.errors import ResponseUntrusted, WeChatPayRejected, WeChatPayUnavailable
from ledger.wechatpay.client import WeChatPayClient, classify
from ledger.wechatpay.keys import KeyStore, PlatformCertificate
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from ledger.wechatpay.signature import build_message, sign, verify
from tests.support.clients import MERCHANT_SERIAL, client_maker
from tests.support.constants import MCHID
from tests.support.fakes import Answer, FakeClock, FakeWeChatPay

# Real "now": the session factory's platform certificate is valid from yesterday for a year.
NOW = float(int(time.time()))
SIGNATURE_HEADERS = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial")
AUTHORIZATION = re.compile(
    r'WECHATPAY2-SHA256-RSA2048 mchid="(?P<mchid>[^"]*)",nonce_str="(?P<nonce>[^"]*)",'
    r'timestamp="(?P<timestamp>\d+)",serial_no="(?P<serial>[^"]*)",signature="(?P<signature>[^"]*)"'
)

# wechatpay-go's public test key (`testPrivateKeyStr` in core/auth/signers/sha256withrsa_signer_test.go,
# [protocol: Test vectors] V2). It is published test material, not a secret; the D1 vector was made
# with it. Labelled "TESTING KEY" there as here; the label is swapped before loading.
GO_TEST_PRIVATE_KEY = """-----BEGIN TESTING KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDZUJN33V+dSfvd
fL0Mu+39XrZNXFFMQSy1V15FpncHeV47SmV0TzTqZc7hHB0ddqAdDi8Z5k3TKqb7
6sOwYr5TcAfuR6PIPaleyE0/0KrljBum2Isa2Nyq7Dgc3ElBQ6YN4l/a+DpvKaz1
FSKmKrhLNskqokWVSlu4g8OlKlbPXQ9ibII14MZRQrrkTmHYHzfi7GXXM0thAKuR
0HNvyhTHBh4/lrYM3GaMvmWwkwvsMavnOex6+eioZHBOb1/EIZ/LzC6zuHArPpyW
3daGaZ1rtQB1vVzTyERAVVFsXXgBHvfFud3w3ShsJYk8JvMwK2RpJ5/gV0QSARcm
LDRUAlPzAgMBAAECggEBAMc7rDeUaXiWv6bMGbZ3BTXpg1FhdddnWUnYE8HfX/km
OFI7XtBHXcgYFpcjYz4D5787pcsk7ezPidAj58zqenuclmjKnUmT3pfbI5eCA2v4
C9HnbYDrmUPK1ZcADtka4D6ScDccpNYNa1g2TFHzkIrEa6H+q7S3O2fqxY/DRVtN
0JIXalBb8daaqL5QVzSmM2BMVnHy+YITJWIkP2a3pKs9C0W65JGDsnG0wVrHinHF
+cnhFZIbaPEI//DAFMc9NkrWOKVRTEgcCUxCFaHOZVNxDWZD7A2ZfJB2rK6eg//y
gEiFDR2h6mTaDowMB4YF2n2dsIO4/dCG8vPHI20jn4ECgYEA/ZGu6lEMlO0XZnam
AZGtiNgLcCfM/C2ZERZE7QTRPZH1WdK92Al9ndldsswFw4baJrJLCmghjF/iG4zi
hhBvLnOLksnZUfjdumxoHDWXo2QBWbI5QsWIE7AuTiWgWj1I7X4fCXSQf6i+M/y2
6TogQ7d0ANpZFyOkTNMn/tiJvLECgYEA22XqlamG/yfAGWery5KNH2DGlTIyd6xJ
WtJ9j3jU99lZ0bCQ5xhiBbU9ImxCi3zgTsoqLWgA/p00HhNFNoUcTl9ofc0G3zwT
D1y0ZzcnVKxGJdZ6ohW52V0hJStAigtjYAsUgjm7//FH7PiQDBDP1Wa6xSRkDQU/
aSbQxvEE8+MCgYEA3bb8krW7opyM0XL9RHH0oqsFlVO30Oit5lrqebS0oHl3Zsr2
ZGgoBlWBsEzk3UqUhTFwm/DhJLTSJ/TQPRkxnhQ5/mewNhS9C7yua7wQkzVmWN+V
YeUGTvDGDF6qDz12/vJAgSwDDRym8x4NcXD5tTw7mmNRcwIfL22SkysThIECgYAV
BgccoEoXWS/HP2/u6fQr9ZIR6eV8Ij5FPbZacTG3LlS1Cz5XZra95UgebFFUHHtC
EY1JHJY7z8SWvTH8r3Su7eWNaIAoFBGffzqqSVazfm6aYZsOvRY6BfqPHT3p/H1h
Tq6AbBffxrcltgvXnCTORjHPglU0CjSxVs7awW3AEQKBgB5WtaC8VLROM7rkfVIq
+RXqE5vtJfa3e3N7W3RqxKp4zHFAPfr82FK5CX2bppEaxY7SEZVvVInKDc5gKdG/
jWNRBmvvftZhY59PILHO2X5vO4FXh7suEjy6VIh0gsnK36mmRboYIBGsNuDHjXLe
BDa+8mDLkWu5nHEhOxy2JJZl
-----END TESTING KEY-----
"""


TRANSACTION = {
    "mchid": MCHID,
    "out_trade_no": "ORDER-1",
    "transaction_id": "4200000000002104083200000488",
    "trade_state": "SUCCESS",
    "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 100, "payer_total": 100, "currency": "CNY"},
}


def signed(
    factory: NotificationFactory,
    clock: FakeClock,
    body: bytes | None = None,
    *,
    status: int = 200,
    sign_body: bytes | None = None,
    drop: str | None = None,
    **sign_kwargs: Any,
) -> Answer:
    """A 2xx signed with `factory`'s key at the clock's time (`sign_body` signs other bytes)."""
    payload = compact_json(TRANSACTION) if body is None else body

    def answer(request: httpx.Request) -> httpx.Response:
        sign_kwargs.setdefault("timestamp", int(clock()))
        headers = factory.sign_headers(payload if sign_body is None else sign_body, **sign_kwargs)
        headers.pop(drop or "", None)
        return httpx.Response(status, headers=headers, content=payload)

    return answer


def error(status: int, code: str = "", message: str = "", headers: dict[str, str] | None = None) -> Answer:
    """An error answer as WeChat sends it: JSON code and message, no signature headers."""
    body = compact_json({"code": code, "message": message}) if code else b"<html>bad gateway</html>"
    return lambda request: httpx.Response(status, headers=headers or {}, content=body)


def raises(exc_type: type[httpx.TransportError]) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return answer


@pytest.fixture(scope="module")
def merchant_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def fake(factory: NotificationFactory, clock: FakeClock) -> FakeWeChatPay:
    """WeChat Pay answering every request with TRANSACTION, signed at the clock's time."""
    return FakeWeChatPay(signed(factory, clock))


@pytest.fixture
def make_client(
    factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey, clock: FakeClock
) -> Iterator[Callable[..., WeChatPayClient]]:
    with client_maker(factory, merchant_key, clock=clock, sleep=clock.sleep) as make:
        yield lambda fake, **kwargs: make(transport=httpx.MockTransport(fake), **kwargs)


def authorization_fields(request: httpx.Request) -> dict[str, str]:
    match = AUTHORIZATION.fullmatch(request.headers["Authorization"])
    assert match is not None, request.headers["Authorization"]
    return match.groupdict()


def assert_signed_by(request: httpx.Request, key: rsa.RSAPrivateKey) -> None:
    """The signature verifies over METHOD, the raw target sent, ts, nonce and the body sent."""
    fields = authorization_fields(request)
    message = build_message(request.method, request.url.raw_path, fields["timestamp"], fields["nonce"], request.content)
    assert verify(key.public_key(), message, fields["signature"])


# -- [protocol: Test vectors] D1 and V8: the Authorization header --------------------------------------------------


def test_d1_authorization_header_reproduces_the_vector(vectors: dict[str, Any], factory: NotificationFactory) -> None:
    """[protocol: Test vectors] D1: GO's test key, fixed time and nonce give D1's signature, over the target sent."""
    d1 = vectors["D1_authorization_signature"]
    key = load_pem_private_key(GO_TEST_PRIVATE_KEY.replace("TESTING KEY", "PRIVATE KEY").encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    clock = FakeClock(float(d1["timestamp"]))
    fake = FakeWeChatPay(signed(factory, clock))
    client = WeChatPayClient(
        mchid=d1["mchid"],
        merchant_serial_no=d1["serial_no"],
        merchant_private_key=key,
        keys=factory.key_store,
        transport=httpx.MockTransport(fake),
        clock=clock,
        nonce=lambda: d1["nonce_str"],
    )
    with client:
        client.query_by_out_trade_no("1217752501201407033233368018")
    (request,) = fake.requests
    assert request.headers["Authorization"] == (
        f'WECHATPAY2-SHA256-RSA2048 mchid="{d1["mchid"]}",nonce_str="{d1["nonce_str"]}",'
        f'timestamp="{d1["timestamp"]}",serial_no="{d1["serial_no"]}",signature="{d1["signature"]}"'
    )
    message = build_message(request.method, request.url.raw_path, d1["timestamp"], d1["nonce_str"], b"")
    assert message == d1["signed_message"].encode()
    cert = PlatformCertificate.from_pem(vectors["platform_certificate_pem"].encode())
    assert verify(cert.public_key, message, d1["signature"])


def test_authorization_header_format_and_request_headers(
    make_client: Callable[..., WeChatPayClient],
    fake: FakeWeChatPay,
    factory: NotificationFactory,
    merchant_key: rsa.RSAPrivateKey,
) -> None:
    """[protocol: Signing a request; Test vectors] V8: field names and order, no spaces after commas, seconds,
    a 32-char nonce."""
    make_client(fake, wechatpay_serial=factory.public_key_id).query_by_transaction_id("4200000000002104083200000488")
    (request,) = fake.requests
    value = request.headers["Authorization"]
    assert ", " not in value and "\n" not in value
    fields = authorization_fields(request)
    assert (fields["mchid"], fields["serial"], fields["timestamp"]) == (MCHID, MERCHANT_SERIAL, str(int(NOW)))
    assert re.fullmatch(r"[0-9A-Za-z]{32}", fields["nonce"])
    assert len(base64.b64decode(fields["signature"], validate=True)) == 256
    assert_signed_by(request, merchant_key)
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("wechatpay-ledger/")
    assert request.headers["Wechatpay-Serial"] == factory.public_key_id
    assert "Content-Type" not in request.headers and request.content == b""


def test_no_wechatpay_serial_header_unless_configured(
    make_client: Callable[..., WeChatPayClient], fake: FakeWeChatPay
) -> None:
    """[protocol: Signing a request]: Wechatpay-Serial is optional; it is only sent when configured."""
    make_client(fake).query_refund("REFUND-1")
    assert "Wechatpay-Serial" not in fake.requests[0].headers


def test_each_request_is_signed_afresh(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Signing a request]: a retry carries its own timestamp and nonce, so it is never a stale signature."""
    fake = FakeWeChatPay(error(503, "SYSTEM_ERROR", "busy"), signed(factory, clock))
    make_client(fake, backoff=4.0).query_by_out_trade_no("ORDER-1")
    first, second = (authorization_fields(r) for r in fake.requests)
    assert first["nonce"] != second["nonce"]


# -- the URL line [protocol: Signing a request] and the endpoints [protocol: Querying an order;
# Querying a refund; Closing an order; Downloading platform certificates] --------------------------


@pytest.mark.parametrize(
    ("out_trade_no", "quoted"),
    [
        ("A|B*C", "A%7CB%2AC"),
        ("订单 1/2", "%E8%AE%A2%E5%8D%95%201%2F2"),
        ("a%2Fb", "a%252Fb"),
        ("x_y-z.~", "x_y-z.~"),
    ],
)
def test_path_parameters_are_quoted_and_signed_as_sent(
    make_client: Callable[..., WeChatPayClient],
    fake: FakeWeChatPay,
    merchant_key: rsa.RSAPrivateKey,
    out_trade_no: str,
    quoted: str,
) -> None:
    """[protocol: Signing a request]: the URL line signed is byte-identical to the target on the wire."""
    make_client(fake).query_by_out_trade_no(out_trade_no)
    (request,) = fake.requests
    expected = f"/v3/pay/transactions/out-trade-no/{quoted}?mchid={MCHID}".encode()
    assert request.url.raw_path == expected
    assert_signed_by(request, merchant_key)  # over the raw target: the URL line is what was sent


@pytest.mark.parametrize(
    ("call", "method", "target"),
    [
        (
            "query_by_transaction_id",
            "GET",
            f"/v3/pay/transactions/id/4200000000002104083200000488?mchid={MCHID}",
        ),
        ("query_refund", "GET", "/v3/refund/domestic/refunds/4200000000002104083200000488"),
        ("query_combined", "GET", "/v3/combine-transactions/out-trade-no/4200000000002104083200000488"),
        (
            "query_by_out_trade_no:1900000110",
            "GET",
            f"/v3/pay/partner/transactions/out-trade-no/4200000000002104083200000488?sp_mchid={MCHID}&sub_mchid=1900000110",
        ),
        (
            "query_refund:1900000110",
            "GET",
            "/v3/refund/domestic/refunds/4200000000002104083200000488?sub_mchid=1900000110",
        ),
    ],
)
def test_endpoints(
    make_client: Callable[..., WeChatPayClient],
    fake: FakeWeChatPay,
    call: str,
    method: str,
    target: str,
) -> None:
    """[protocol: Querying an order; Querying a refund; Service providers; Combined payments]: method and
    target of each query (`name:sub_mchid` asks as a service provider for that sub-merchant)."""
    name, _, sub_mchid = call.partition(":")
    extra = {"sub_mchid": sub_mchid} if sub_mchid else {}
    getattr(make_client(fake), name)("4200000000002104083200000488", **extra)
    assert (fake.requests[0].method, fake.requests[0].url.raw_path) == (method, target.encode())


def test_a_base_url_prefix_is_part_of_the_signed_target(
    make_client: Callable[..., WeChatPayClient],
    fake: FakeWeChatPay,
    merchant_key: rsa.RSAPrivateKey,
) -> None:
    """[protocol: Signing a request]: a sandbox mounted under a prefix sees (and must verify) the full path."""
    make_client(fake, base_url="http://127.0.0.1:8080/sandbox/").query_refund("R-1")
    (request,) = fake.requests
    assert request.url.raw_path == b"/sandbox/v3/refund/domestic/refunds/R-1"
    assert_signed_by(request, merchant_key)


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_unusable_path_parameters_are_refused_before_sending(
    make_client: Callable[..., WeChatPayClient], fake: FakeWeChatPay, bad: str
) -> None:
    """An empty or dot segment would address another resource once the URL is normalised."""
    with pytest.raises(ValueError, match="path parameter"):
        make_client(fake).query_by_out_trade_no(bad)
    assert fake.requests == []


def test_close_order_sends_compact_mchid_and_accepts_a_verified_204(
    make_client: Callable[..., WeChatPayClient],
    factory: NotificationFactory,
    clock: FakeClock,
    merchant_key: rsa.RSAPrivateKey,
) -> None:
    """[protocol: Closing an order]: POST {"mchid":…} compact; the 204 is verified over `ts\\nnonce\\n\\n`
    ([protocol: The signed message])."""

    def no_content(request: httpx.Request) -> httpx.Response:
        ts, nonce = str(int(clock())), "NONCE-204"
        headers = {
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": sign(factory.private_key, f"{ts}\n{nonce}\n\n".encode()),
            "Wechatpay-Serial": factory.certificate_serial,
            "Request-ID": "08ABCDEF",
        }
        return httpx.Response(204, headers=headers)

    fake = FakeWeChatPay(no_content)
    response = make_client(fake).close_order("A|B")
    (request,) = fake.requests
    assert request.method == "POST"
    assert request.url.raw_path == b"/v3/pay/transactions/out-trade-no/A%7CB/close"
    assert request.content == f'{{"mchid":"{MCHID}"}}'.encode()
    assert request.headers["Content-Type"] == "application/json"
    assert_signed_by(request, merchant_key)
    assert (response.status_code, response.body, response.data) == (204, b"", None)
    assert (response.key_serial, response.request_id) == (factory.certificate_serial, "08ABCDEF")


def test_a_204_signed_over_some_other_body_is_untrusted(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: The signed message]: the empty body is part of the message; a signature over anything else fails."""
    fake = FakeWeChatPay(signed(factory, clock, b"", status=204, sign_body=b"{}"))
    with pytest.raises(ResponseUntrusted):
        make_client(fake).close_order("ORDER-1")


def test_download_certificates_verified_and_unverified(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Verifying an answer; Downloading platform certificates]: normally verified; the first
    download (verify=False) is returned unverified."""
    body = compact_json({"data": [{"serial_no": "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC"}]})
    unsigned = FakeWeChatPay(lambda request: httpx.Response(200, content=body))
    client = make_client(unsigned)
    with pytest.raises(ResponseUntrusted, match="missing header"):
        client.download_certificates()
    first = client.download_certificates(verify=False)
    assert (first.key_serial, first.data) == ("", json.loads(body))
    assert [r.url.raw_path for r in unsigned.requests] == [b"/v3/certificates"] * 2
    verified = make_client(FakeWeChatPay(signed(factory, clock, body))).download_certificates()
    assert verified.key_serial == factory.public_key_id


# -- [protocol: Verifying an answer; Signature probes]: response verification --------------------------------


def test_a_verified_response(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Verifying an answer]: raw body kept, JSON parsed with Decimal floats, headers and Request-ID kept."""
    body = '{"mchid":"1900000109","trade_state_desc":"支付成功","rate":0.1,"amount":{"total":100}}'.encode()
    fake = FakeWeChatPay(signed(factory, clock, body))
    response = make_client(fake).query_by_out_trade_no("ORDER-1")
    assert response.status_code == 200 and response.body == body
    assert response.data == {
        "mchid": "1900000109",
        "trade_state_desc": "支付成功",
        "rate": Decimal("0.1"),
        "amount": {"total": 100},
    }
    assert response.key_serial == factory.public_key_id
    assert all(name in response.headers for name in SIGNATURE_HEADERS)
    assert response.request_id is not None and response.request_id == response.headers["Request-ID"]
    assert response.received_at == dt.datetime.fromtimestamp(NOW, dt.UTC)


def test_a_response_signed_with_a_platform_certificate(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Which key signed it]: the key is chosen by Wechatpay-Serial; certificate serials work too."""
    fake = FakeWeChatPay(signed(factory, clock, serial=factory.certificate_serial.lower()))
    assert make_client(fake).query_by_out_trade_no("ORDER-1").key_serial == factory.certificate_serial


def test_a_tampered_body_is_untrusted_and_not_retried(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Verifying an answer]: the signature covers the raw body; an untrusted 2xx is raised at once."""
    tampered = compact_json({**TRANSACTION, "trade_state": "NOTPAY"})
    fake = FakeWeChatPay(signed(factory, clock, tampered, sign_body=compact_json(TRANSACTION)))
    with pytest.raises(ResponseUntrusted, match="signature"):
        make_client(fake).query_by_out_trade_no("ORDER-1")
    assert len(fake.requests) == 1 and clock.sleeps == []


def test_an_unknown_serial_calls_the_hook_once(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Which key signed it; Certificate rotation]: an unknown serial asks for a certificate
    refresh, then fails."""
    seen: list[str] = []
    fake = FakeWeChatPay(signed(factory, clock, serial="7E5A0D3F11C2"))
    with pytest.raises(ResponseUntrusted, match="unknown serial"):
        make_client(fake, on_unknown_serial=seen.append).query_by_out_trade_no("ORDER-1")
    assert seen == ["7E5A0D3F11C2"]
    assert len(fake.requests) == 1


def test_a_failing_hook_does_not_hide_the_untrusted_answer(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """The refresh is best effort; the caller still learns the answer was untrusted."""

    def broken(serial: str) -> None:
        raise RuntimeError("refresh failed")

    fake = FakeWeChatPay(signed(factory, clock, serial="7E5A0D3F11C2"))
    with pytest.raises(ResponseUntrusted):
        make_client(fake, on_unknown_serial=broken).query_by_out_trade_no("ORDER-1")


def test_keys_are_read_per_response_so_rotation_is_seen(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Which key signed it]: after the certificate manager adds a key, the next response verifies with it."""
    current = [KeyStore()]
    client = make_client(FakeWeChatPay(signed(factory, clock)), keys=lambda: current[0])
    with pytest.raises(ResponseUntrusted):
        client.query_by_out_trade_no("ORDER-1")
    current[0] = factory.key_store()
    assert client.query_by_out_trade_no("ORDER-1").key_serial == factory.public_key_id


def test_a_signature_probe_is_untrusted(make_client: Callable[..., WeChatPayClient], fake: FakeWeChatPay) -> None:
    """[protocol: Signature probes]: probes appear on responses too; they fail like any bad signature, no refresh."""
    seen: list[str] = []
    client = make_client(fake, on_unknown_serial=seen.append)
    real = fake.answers[0]

    def probe(request: httpx.Request) -> httpx.Response:
        response = real(request)
        response.headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + "A" * 32
        return response

    fake.answers = [probe]
    with pytest.raises(ResponseUntrusted):
        client.query_by_out_trade_no("ORDER-1")
    assert seen == [] and len(fake.requests) == 1


@pytest.mark.parametrize(("offset", "trusted"), [(-300, True), (300, True), (-301, False), (301, False)])
def test_timestamp_window(
    make_client: Callable[..., WeChatPayClient],
    factory: NotificationFactory,
    clock: FakeClock,
    offset: int,
    trusted: bool,
) -> None:
    """[protocol: The timestamp window]: abs(now - ts) <= 300 is accepted, anything further is not."""
    fake = FakeWeChatPay(signed(factory, clock, timestamp=int(NOW) + offset))
    client = make_client(fake)
    if trusted:
        client.query_by_out_trade_no("ORDER-1")
    else:
        with pytest.raises(ResponseUntrusted, match="timestamp"):
            client.query_by_out_trade_no("ORDER-1")


@pytest.mark.parametrize("missing", SIGNATURE_HEADERS)
def test_a_2xx_missing_a_signature_header_is_untrusted(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock, missing: str
) -> None:
    """[protocol: Verifying an answer]: a 2xx without its signature is treated as forged."""
    fake = FakeWeChatPay(signed(factory, clock, drop=missing))
    with pytest.raises(ResponseUntrusted, match=missing):
        make_client(fake).query_by_out_trade_no("ORDER-1")


@pytest.mark.parametrize("body", [b"<xml>ok</xml>", b'{"total":NaN}', b"[1,2]", b"\xff\xfe"])
def test_a_verified_2xx_that_is_not_a_json_object_is_untrusted(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock, body: bytes
) -> None:
    """[protocol: Verifying an answer] (JAVA MalformedMessageException): a signed body we cannot read is not
    an answer."""
    fake = FakeWeChatPay(signed(factory, clock, body))
    with pytest.raises(ResponseUntrusted):
        make_client(fake).query_by_out_trade_no("ORDER-1")


# -- [protocol: Errors and retries]: classification, retries, deadline -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc", "outcome"),
    [
        (200, None, "ok"),
        (204, None, "ok"),
        (400, None, "reject"),
        (401, None, "reject"),
        (404, None, "reject"),
        (302, None, "reject"),
        (429, None, "retry"),
        (500, None, "retry"),
        (503, None, "retry"),
        (None, httpx.ReadTimeout("t"), "retry"),
        (None, httpx.ConnectError("c"), "retry"),
        (None, httpx.RemoteProtocolError("p"), "retry"),
        (None, httpx.DecodingError("d"), "reject"),
    ],
)
def test_classify(status: int | None, exc: Exception | None, outcome: str) -> None:
    """[protocol: Errors and retries]: 429, 5xx and transport errors are retried; other 4xx are final."""
    assert classify(status, exc) == outcome


@pytest.mark.parametrize(("status", "code"), [(500, "SYSTEM_ERROR"), (503, ""), (429, "FREQUENCY_LIMITED")])
def test_retryable_statuses_are_retried_then_succeed(
    make_client: Callable[..., WeChatPayClient],
    factory: NotificationFactory,
    clock: FakeClock,
    status: int,
    code: str,
) -> None:
    """[protocol: Errors and retries]: retry with exponential backoff and full jitter, then the verified answer."""
    fake = FakeWeChatPay(error(status, code, "系统繁忙"), signed(factory, clock))
    response = make_client(fake, backoff=0.5).query_by_out_trade_no("ORDER-1")
    assert response.status_code == 200 and len(fake.requests) == 2
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 0.5


def test_exhausted_retries_raise_unavailable(
    make_client: Callable[..., WeChatPayClient], clock: FakeClock, merchant_key: rsa.RSAPrivateKey
) -> None:
    """[protocol: Errors and retries]: after max_attempts the call fails with the last status, and no secret."""
    fake = FakeWeChatPay(error(503, "SYSTEM_ERROR", "系统繁忙"))
    with pytest.raises(WeChatPayUnavailable) as caught:
        make_client(fake, max_attempts=4, backoff=0.5, deadline=60).query_by_out_trade_no("ORDER-1")
    assert len(fake.requests) == 4
    assert "503" in str(caught.value) and "SYSTEM_ERROR" in str(caught.value)
    assert len(clock.sleeps) == 3
    assert all(0 <= slept <= 0.5 * 2**i for i, slept in enumerate(clock.sleeps))
    assert "Authorization" not in str(caught.value) and "signature" not in str(caught.value)


def test_timeouts_are_retried(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Errors and retries]: a timeout is transient."""
    fake = FakeWeChatPay(raises(httpx.ReadTimeout), signed(factory, clock))
    assert make_client(fake).query_by_out_trade_no("ORDER-1").status_code == 200
    assert len(fake.requests) == 2


def test_persistent_transport_errors_name_the_error_kind(
    make_client: Callable[..., WeChatPayClient], clock: FakeClock
) -> None:
    fake = FakeWeChatPay(raises(httpx.ConnectError))
    with pytest.raises(WeChatPayUnavailable, match="ConnectError"):
        make_client(fake, max_attempts=3).query_by_out_trade_no("ORDER-1")
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, "ORDER_NOT_EXIST", "订单不存在"),
        (401, "SIGN_ERROR", "签名错误"),
        (400, "PARAM_ERROR", "参数错误"),
    ],
)
def test_other_4xx_are_rejected_at_once(
    make_client: Callable[..., WeChatPayClient], clock: FakeClock, status: int, code: str, message: str
) -> None:
    """[protocol: Errors and retries]: no retry; WeChat's code and message are carried; errors are not
    signature-checked."""
    fake = FakeWeChatPay(error(status, code, message))
    with pytest.raises(WeChatPayRejected) as caught:
        make_client(fake).query_by_out_trade_no("ORDER-1")
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, code, message)
    assert len(fake.requests) == 1 and clock.sleeps == []


def test_a_4xx_without_a_json_body_is_still_rejected(
    make_client: Callable[..., WeChatPayClient], clock: FakeClock
) -> None:
    fake = FakeWeChatPay(error(403))
    with pytest.raises(WeChatPayRejected) as caught:
        make_client(fake).query_by_out_trade_no("ORDER-1")
    assert (caught.value.status, caught.value.code) == (403, "")


def test_retry_after_is_honoured(
    make_client: Callable[..., WeChatPayClient], factory: NotificationFactory, clock: FakeClock
) -> None:
    """[protocol: Errors and retries]: a rate-limited answer says how long to wait; we wait exactly that."""
    fake = FakeWeChatPay(error(429, "FREQUENCY_LIMITED", "频率超限", {"Retry-After": "3"}), signed(factory, clock))
    make_client(fake).query_by_out_trade_no("ORDER-1")
    assert clock.sleeps == [3.0]


def test_a_retry_after_beyond_the_deadline_gives_up_now(
    make_client: Callable[..., WeChatPayClient], clock: FakeClock
) -> None:
    fake = FakeWeChatPay(error(503, "SYSTEM_ERROR", "busy", {"Retry-After": "60"}))
    with pytest.raises(WeChatPayUnavailable, match="503"):
        make_client(fake, deadline=15).query_by_out_trade_no("ORDER-1")
    assert len(fake.requests) == 1 and clock.sleeps == []


def test_the_deadline_bounds_the_whole_call(make_client: Callable[..., WeChatPayClient], clock: FakeClock) -> None:
    """[protocol: Errors and retries]: never past `deadline` seconds since the call started, whatever
    max_attempts says."""
    fake = FakeWeChatPay(error(503, "SYSTEM_ERROR", "busy", {"Retry-After": "2"}))
    with pytest.raises(WeChatPayUnavailable):
        make_client(fake, deadline=5, max_attempts=10).query_by_out_trade_no("ORDER-1")
    assert len(fake.requests) == 3 and clock.sleeps == [2.0, 2.0]
    assert clock() - NOW <= 5


def test_slow_attempts_are_cut_to_the_time_left(make_client: Callable[..., WeChatPayClient], clock: FakeClock) -> None:
    """Each attempt's timeout shrinks to what is left of the deadline."""

    def hangs(request: httpx.Request) -> httpx.Response:
        clock.now += request.extensions["timeout"]["read"]  # the whole timeout passes
        raise httpx.ReadTimeout("simulated", request=request)

    fake = FakeWeChatPay(hangs)
    with pytest.raises(WeChatPayUnavailable, match="ReadTimeout"):
        make_client(fake, timeout=5.0, deadline=12, max_attempts=10, backoff=0).query_by_out_trade_no("O-1")
    assert len(fake.requests) == 3
    assert clock() - NOW == pytest.approx(12)


# -- secrets and logs ------------------------------------------------------------------------


def test_repr_shows_only_mchid_and_base_url(make_client: Callable[..., WeChatPayClient]) -> None:
    client = make_client(FakeWeChatPay(error(500)))
    assert repr(client) == f"WeChatPayClient(mchid='{MCHID}', base_url='https://api.mch.weixin.qq.com')"


def test_logs_name_the_call_but_never_the_body(
    make_client: Callable[..., WeChatPayClient],
    fake: FakeWeChatPay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Response bodies hold payer data (openid); the debug log has method, path, status only."""
    with caplog.at_level(logging.DEBUG, logger="ledger.wechatpay.client"):
        make_client(fake).query_by_out_trade_no("ORDER-1")
    assert "GET /v3/pay/transactions/out-trade-no/ORDER-1" in caplog.text and "HTTP 200" in caplog.text
    assert "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" not in caplog.text
