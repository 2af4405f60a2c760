"""Legacy APIv2 XML notifications, the protocol alone ([protocol: Legacy APIv2 XML]): the vectors of
[protocol: APIv2 vectors] both ways, hostile and malformed XML refused quickly, and round trips."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.errors import answer_for
from ledger.errors import (
    BodyTooLarge,
    ConfigurationError,
    LedgerError,
    V2DecryptionFailed,
    V2Malformed,
    V2ReturnCodeFail,
    V2SignInvalid,
    V2XmlForbidden,
)
from ledger.wechatpay.v2 import (
    HMAC_SHA256,
    MD5,
    answer_xml,
    check_v2_key,
    decrypt_ecb,
    decrypt_req_info,
    encrypt_ecb,
    encrypt_req_info,
    parse_v2_notification,
    parse_v2_xml,
    req_info_key,
    sign_v2,
    to_xml,
    v2_delivery,
    verify_v2_sign,
)
from tests.support.v2_vectors import (
    BILLION_LAUGHS,
    D6_HMAC,
    D6_MD5,
    D7_PLAINTEXT,
    DOC_KEY,
    HOSTILE_XML,
    PAYMENT,
    T1_KEY,
    T1_PLAINTEXT,
    T1_REQ_INFO,
    T2_KEY,
    T2_PLAINTEXT,
    T2_REQ_INFO,
    T8_SIGN,
    ecb_without_padding,
    payment,
    refund,
)

LIMIT = 64 * 1024
FAST = 0.2  # seconds: a hostile body is refused before its cost can grow


@contextmanager
def refused_quickly(error: type[LedgerError]) -> Iterator[None]:
    started = time.perf_counter()
    with pytest.raises(error):
        yield
    assert time.perf_counter() - started < FAST


# -- the sign -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "key", "expected_md5", "expected_hmac"),
    [
        pytest.param(  # T3: the v2 documentation's own example
            {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000", "body": "test"}
            | {"nonce_str": "ibuaiVcKdpRxkhJA"},
            DOC_KEY,
            "9A0A8659F005D6984697E2CA0A9CF3B7",
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6",
            id="T3",
        ),
        pytest.param(  # T4: wechatpy
            {"test1": "test1", "test2": "test2"},
            DOC_KEY,
            "1E3A8D73B5A4AEE787C0F68B5DAB8520",
            "EDAC6D70D2FDF5A2382F8204FC96A1918017E46ACC5297F565ED1A7610ACF659",
            id="T4",
        ),
    ],
)
def test_the_published_signs_are_reproduced_and_verify(
    fields: dict[str, str], key: str, expected_md5: str, expected_hmac: str
) -> None:
    """[protocol: The APIv2 sign; APIv2 vectors] T3, T4: MD5 by default, HMAC-SHA256 when `sign_type` says so."""
    assert sign_v2(fields, key) == sign_v2(fields, key, MD5) == expected_md5
    assert sign_v2(fields, key, HMAC_SHA256) == expected_hmac
    verify_v2_sign(fields | {"sign": expected_md5}, key)
    with pytest.raises(V2SignInvalid):  # `sign_type` is itself a signed field
        verify_v2_sign(fields | {"sign": expected_md5, "sign_type": "MD5"}, key)
    with pytest.raises(V2SignInvalid):  # an HMAC sign is not an MD5 one, whatever the fields say
        verify_v2_sign(fields | {"sign": expected_hmac}, key)
    with pytest.raises(V2SignInvalid):
        verify_v2_sign(fields | {"sign": expected_md5}, "0" * 32)


def test_sign_sorts_by_ascii_and_keeps_values_with_equals_signs() -> None:
    """[protocol: The APIv2 sign; APIv2 vectors] T5: `appId` < `nonceStr` < `package` < `signType` < `timeStamp`."""
    fields = {
        "appId": "mock-appid",
        "timeStamp": "1601234567",
        "nonceStr": "mock-nonce",
        "package": "prepay_id=mock-prepay-id",
        "signType": "MD5",
    }
    assert sign_v2(fields, "mock-v2-secret-key") == "C52D6B09E8A039D6E8696A014BB37160"
    hmac_fields = fields | {"signType": "HMAC-SHA256"}
    assert (
        sign_v2(hmac_fields, "mock-v2-secret-key", HMAC_SHA256)
        == "BAC9240577E86EDC7753264E502196C61F78F24777E9E7CCE82A7BD97F906EED"
    )


def test_a_full_payment_notification_verifies_with_md5_and_hmac() -> None:
    """[protocol: APIv2 payment notifications; APIv2 vectors] D6: the official sample's 19 fields, re-signed."""
    notification = parse_v2_notification(payment(), DOC_KEY, max_bytes=LIMIT)
    assert notification.kind == "payment"
    assert notification.fields["total_fee"] == "1"  # a value outside CDATA reads the same
    assert notification.fields["attach"] == "支付测试"
    assert (notification.mch_id, notification.out_trade_no) == ("10000100", "1409811653")
    assert notification.raw == payment() and notification.req_info is None

    hmac_signed = payment(D6_HMAC, extra="<sign_type><![CDATA[HMAC-SHA256]]></sign_type>")
    assert parse_v2_notification(hmac_signed, DOC_KEY, max_bytes=LIMIT).fields["sign_type"] == HMAC_SHA256
    empty_device = payment(extra="<device_info></device_info>")  # an empty field is not signed
    assert parse_v2_notification(empty_device, DOC_KEY, max_bytes=LIMIT).fields["device_info"] == ""


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(payment(T8_SIGN), id="T8-published-sign"),
        pytest.param(payment(total_fee="100"), id="amount-changed"),
        pytest.param(payment(D6_MD5.lower()), id="lower-case-sign"),
        pytest.param(payment(""), id="empty-sign"),
        pytest.param(payment(D6_MD5, extra="<coupon_fee_0>10</coupon_fee_0>"), id="unsigned-extra-field"),
        pytest.param(payment(D6_HMAC), id="hmac-sign-without-sign_type"),
        pytest.param(payment(D6_HMAC, extra="<sign_type>HMAC-SHA1</sign_type>"), id="unknown-sign_type"),
        pytest.param(payment(D6_MD5, extra="<sign_type>md5</sign_type>"), id="lower-case-sign_type"),
        pytest.param(payment().replace(b"<sign>", b"<signature>").replace(b"</sign>", b"</signature>"), id="no-sign"),
    ],
)
def test_a_payment_whose_sign_does_not_verify_is_refused(body: bytes) -> None:
    """[protocol: The APIv2 sign; APIv2 vectors] T8's published sign is reproduced by no public key."""
    with pytest.raises(V2SignInvalid):
        parse_v2_notification(body, DOC_KEY, max_bytes=LIMIT)


def test_a_payment_under_another_key_is_refused() -> None:
    with pytest.raises(V2SignInvalid):
        parse_v2_notification(payment(), T1_KEY, max_bytes=LIMIT)
    with pytest.raises(V2SignInvalid):
        parse_v2_notification(payment(), DOC_KEY.upper(), max_bytes=LIMIT)


# -- req_info -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "plaintext", "req_info"),
    [
        pytest.param(T1_KEY, T1_PLAINTEXT, T1_REQ_INFO, id="T1"),
        pytest.param(T2_KEY, T2_PLAINTEXT, T2_REQ_INFO, id="T2"),
    ],
)
def test_published_req_info_decrypts_and_encrypts_both_ways(key: str, plaintext: bytes, req_info: str) -> None:
    """[protocol: APIv2 refund notifications; APIv2 vectors] T1 (a real callback), T2: ECB is deterministic."""
    assert encrypt_req_info(plaintext, key) == req_info
    assert decrypt_ecb(req_info_key(key), base64.b64decode(req_info)) == plaintext
    assert decrypt_req_info(req_info, key) == parse_v2_xml(plaintext, max_bytes=LIMIT, root="root")


def test_t1_is_the_reference_plaintext() -> None:
    """[protocol: APIv2 vectors] T1: 820 bytes with PKCS#7 padding 12, the AES key the lower-case hex MD5."""
    assert len(T1_PLAINTEXT) == 820
    assert (
        hashlib.sha256(T1_PLAINTEXT).hexdigest() == "fe9673e322c7ed0db1fa2871c6fce06da29e8063215a8418c54db8f192a7f451"
    )
    assert req_info_key(T1_KEY) == b"a1fdc4d1da9fb443b1091d34bcee9493"
    assert len(base64.b64decode(T1_REQ_INFO)) == 820 + 12
    fields = decrypt_req_info(T1_REQ_INFO, T1_KEY)
    assert fields["refund_recv_accout"] == "支付用户零钱"
    assert (fields["out_refund_no"], fields["refund_fee"], fields["refund_status"]) == (
        "50fd012ed1b311e7af7800163e32c503",
        "6",
        "SUCCESS",
    )
    assert len(fields) == 13


def test_d7_req_info_is_regenerated_from_the_php_sample() -> None:
    """[protocol: APIv2 vectors] D7: the sample (813 bytes) under the documentation's key."""
    assert (
        hashlib.sha256(D7_PLAINTEXT).hexdigest() == "abaac7c4b685e5158e844cd2dfc0c5d29b2f621c8fc5c28471a09bb04a2c06ac"
    )
    assert req_info_key(DOC_KEY) == b"d96eb16afdd491fa1e705096edbc2205"
    req_info = encrypt_req_info(D7_PLAINTEXT, DOC_KEY)
    assert len(req_info) == 1088
    assert req_info.startswith("4gS8kbcHysCW7bHqyEU0M4GTNkgJQP6/zKHbA/E3CvwLlNgCKUkGRy0OpONZjd4s")
    assert req_info.endswith("4/arW1IeJs8Sq12CiJFB")
    assert decrypt_req_info(req_info, DOC_KEY)["out_refund_no"] == "131811191610442717309"


def test_raw_aes_256_ecb() -> None:
    """[protocol: APIv2 vectors] T6: the key used as given, PKCS#7 padding."""
    key = b"0123456789abcdef0123456789abcdef"
    assert base64.b64encode(encrypt_ecb(key, b"hello")) == b"pZwJZBLuy3mDACEQT4YTBw=="
    assert decrypt_ecb(key, base64.b64decode("pZwJZBLuy3mDACEQT4YTBw==")) == b"hello"


def test_a_refund_notification_is_decrypted_not_signed() -> None:
    """[protocol: APIv2 refund notifications; APIv2 checks, in order] `req_info` makes it a refund."""
    notification = parse_v2_notification(refund(T1_REQ_INFO), T1_KEY, max_bytes=LIMIT)
    assert notification.kind == "refund"
    assert notification.req_info == decrypt_req_info(T1_REQ_INFO, T1_KEY)
    assert notification.fields["req_info"] == T1_REQ_INFO
    assert (notification.mch_id, notification.out_trade_no) == ("10000100", "4893e76d8c8b434cb64e9cd536338e33")


def test_a_sign_beside_req_info_is_verified_too() -> None:
    body = refund(T1_REQ_INFO, extra=f"<sign>{D6_MD5}</sign>")
    with pytest.raises(V2SignInvalid):
        parse_v2_notification(body, T1_KEY, max_bytes=LIMIT)
    outer = parse_v2_xml(refund(T1_REQ_INFO), max_bytes=LIMIT)
    signed = refund(T1_REQ_INFO, extra=f"<sign>{sign_v2(outer, T1_KEY)}</sign>")
    assert parse_v2_notification(signed, T1_KEY, max_bytes=LIMIT).kind == "refund"


@pytest.mark.parametrize(
    ("key", "plaintext"),
    [
        pytest.param(T1_KEY, T1_PLAINTEXT, id="T1"),
        pytest.param(T2_KEY, T2_PLAINTEXT, id="T2"),
        pytest.param(DOC_KEY, D7_PLAINTEXT, id="D7"),
    ],
)
def test_a_wrong_key_never_gives_fields(key: str, plaintext: bytes) -> None:
    """[protocol: APIv2 refund notifications] another key, or the upper-case hex MD5 of the right one."""
    req_info = encrypt_req_info(plaintext, key)
    for wrong in (T1_KEY if key != T1_KEY else DOC_KEY, key.upper() if key != key.upper() else key.lower()):
        with pytest.raises(V2DecryptionFailed):
            decrypt_req_info(req_info, wrong)
        with pytest.raises(V2DecryptionFailed):
            parse_v2_notification(refund(req_info), wrong, max_bytes=LIMIT)
    upper_hex = hashlib.md5(key.encode()).hexdigest().upper().encode()
    with pytest.raises(V2DecryptionFailed):
        decrypt_ecb(upper_hex, base64.b64decode(req_info))
    by_upper_hex = base64.b64encode(encrypt_ecb(upper_hex, plaintext)).decode()  # a sender with the wrong key
    with pytest.raises(V2DecryptionFailed):
        decrypt_req_info(by_upper_hex, key)


@pytest.mark.parametrize(
    "last_block",
    [
        pytest.param(b"</root>\n" + b"\x00" * 8, id="pad-zero"),
        pytest.param(b"</root>\n" + b"\x11" * 8, id="pad-17"),
        pytest.param(b"</root>\n\x01\x02\x03\x04\x05\x06\x07\x08", id="pad-bytes-differ"),
        pytest.param(b"</root>" + b"\x08" + b"\x09" * 8, id="pad-one-byte-off"),
    ],
)
def test_bad_padding_is_refused(last_block: bytes) -> None:
    """PKCS#7 is checked byte by byte, even where the XML before it would parse."""
    data = b"<root><a>1</a>\n " + last_block
    with pytest.raises(V2DecryptionFailed):
        decrypt_req_info(ecb_without_padding(req_info_key(DOC_KEY), data), DOC_KEY)
    padded = b"<root><a>1</a>\n " + b"</root>" + b"\x09" * 9  # the same blocks, correctly padded
    assert decrypt_req_info(ecb_without_padding(req_info_key(DOC_KEY), padded), DOC_KEY) == {"a": "1"}


@pytest.mark.parametrize(
    "req_info",
    [
        pytest.param(T1_REQ_INFO[:-4], id="truncated-base64"),
        pytest.param(base64.b64encode(base64.b64decode(T1_REQ_INFO)[:-1]).decode(), id="one-byte-short"),
        pytest.param(base64.b64encode(base64.b64decode(T1_REQ_INFO)[:-16]).decode(), id="one-block-short"),
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param("支付", id="not-ascii"),
        pytest.param(ecb_without_padding(req_info_key(T1_KEY), b"<xml><a>1</a></xml>" + b"\x0d" * 13), id="not-root"),
        pytest.param(encrypt_req_info(b"<root><a>1</a><a>2</a></root>", T1_KEY), id="duplicate-inside"),
        pytest.param(encrypt_req_info(b'<!DOCTYPE r [<!ENTITY x "y">]><root/>', T1_KEY), id="dtd-inside"),
    ],
)
def test_req_info_that_does_not_decrypt_to_a_root_is_refused(req_info: str) -> None:
    """[protocol: APIv2 checks, in order] `500`: our APIv2 key is wrong (or the body was cut)."""
    with pytest.raises(V2DecryptionFailed):
        decrypt_req_info(req_info, T1_KEY)
    with pytest.raises(V2DecryptionFailed):
        parse_v2_notification(refund(req_info), T1_KEY, max_bytes=LIMIT)


# -- hostile and malformed XML --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [*HOSTILE_XML.values(), b"<!DOCTYPE xml><xml><return_code>SUCCESS</return_code></xml>"],
    ids=[*HOSTILE_XML, "bare-doctype"],
)
def test_dtds_and_entities_are_refused_before_they_cost_anything(body: bytes) -> None:
    """[protocol: Hostile XML] refused at the DTD's start: no file read, no request, no expansion."""
    with refused_quickly(V2XmlForbidden):
        parse_v2_xml(body, max_bytes=1024 * 1024)
    with refused_quickly(V2XmlForbidden):
        parse_v2_notification(body, DOC_KEY, max_bytes=1024 * 1024)


def test_a_body_above_the_limit_is_refused_before_it_is_parsed() -> None:
    body = payment()
    assert parse_v2_notification(body, DOC_KEY, max_bytes=len(body)).kind == "payment"
    with refused_quickly(BodyTooLarge):
        parse_v2_notification(body, DOC_KEY, max_bytes=len(body) - 1)
    with refused_quickly(BodyTooLarge):
        parse_v2_xml(BILLION_LAUGHS + b" " * LIMIT, max_bytes=LIMIT)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(PAYMENT.format(sign=D6_MD5, total_fee=1, extra="").encode("gbk"), id="gbk"),
        pytest.param(PAYMENT.format(sign=D6_MD5, total_fee=1, extra="").encode("utf-16"), id="utf-16"),
        pytest.param(b'<?xml version="1.0" encoding="ISO-8859-1"?><xml><a>\xc3\xa9</a></xml>', id="latin-1-declared"),
        pytest.param(b'<?xml version="1.0" encoding="GBK"?><xml><a>1</a></xml>', id="gbk-declared"),
        pytest.param(b"<xml><a>\xff</a></xml>", id="invalid-utf-8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"{}", id="json"),
        pytest.param(b"<xml><a>1</a>", id="unclosed"),
        pytest.param(b"<xml><a>1</b></xml>", id="mismatched"),
        pytest.param(b"<xml><a>&xxe;</a></xml>", id="undeclared-entity"),
        pytest.param(b"<xml><a>\x00</a></xml>", id="nul"),
        pytest.param(b"<root><return_code>SUCCESS</return_code></root>", id="root-not-xml"),
        pytest.param(b"<XML><return_code>SUCCESS</return_code></XML>", id="root-upper-case"),
        pytest.param(b'<xml id="1"><return_code>SUCCESS</return_code></xml>', id="root-attribute"),
        pytest.param(b'<xml xmlns="urn:x"><return_code>SUCCESS</return_code></xml>', id="root-namespace"),
        pytest.param(b"<xml><return_code><b>SUCCESS</b></return_code></xml>", id="nested"),
        pytest.param(b'<xml><return_code a="1">SUCCESS</return_code></xml>', id="attribute"),
        pytest.param(b'<xml><x:a xmlns:x="urn:x">1</x:a></xml>', id="namespace"),
        pytest.param(b"<xml><return_code>SUCCESS</return_code><return_code>FAIL</return_code></xml>", id="duplicate"),
        pytest.param(b"<xml>SUCCESS<return_code>SUCCESS</return_code></xml>", id="text-in-root"),
        pytest.param(b"<xml><return_code>SUCCESS</return_code>x<a>1</a></xml>", id="text-between"),
        pytest.param(b"<xml><return_code>SUCC<!-- -->ESS</return_code></xml>", id="comment-in-value"),
        pytest.param(b"<xml><!-- c --><return_code>SUCCESS</return_code></xml>", id="comment"),
        pytest.param(b"<xml><?pi x?><return_code>SUCCESS</return_code></xml>", id="processing-instruction"),
        pytest.param(b"<xml><return_code>SUCCESS</return_code></xml><xml/>", id="two-roots"),
    ],
)
def test_anything_but_a_flat_utf8_xml_is_malformed(body: bytes) -> None:
    """[protocol: Hostile XML] `400`: what WeChat does not write is not read."""
    with refused_quickly(V2Malformed):
        parse_v2_xml(body, max_bytes=LIMIT)


def test_a_duplicated_signed_field_is_refused_even_when_either_copy_would_verify() -> None:
    """Two readers of one body must not see two amounts."""
    with pytest.raises(V2Malformed):
        parse_v2_notification(payment(extra="<total_fee>100</total_fee>"), DOC_KEY, max_bytes=LIMIT)


def test_whitespace_between_fields_and_a_utf8_declaration_are_fine() -> None:
    body = b'<?xml version="1.0" encoding="utf-8"?>\n<xml>\n <a><![CDATA[ x ]]></a>\n <b/>\n</xml>\n'
    assert parse_v2_xml(body, max_bytes=LIMIT) == {"a": " x ", "b": ""}
    assert parse_v2_xml(b"\xef\xbb\xbf<xml><a>&amp;&#x41;&lt;</a></xml>", max_bytes=LIMIT) == {"a": "&A<"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            b"<xml><return_code>FAIL</return_code><return_msg>x</return_msg></xml>", V2ReturnCodeFail, id="fail"
        ),
        pytest.param(b"<xml><return_msg>OK</return_msg></xml>", V2Malformed, id="no-return_code"),
        pytest.param(b"<xml><return_code>success</return_code></xml>", V2Malformed, id="lower-case"),
        pytest.param(refund(T1_REQ_INFO).replace(b"SUCCESS", b"FAIL"), V2ReturnCodeFail, id="refund-fail"),
    ],
)
def test_return_code_is_checked_before_the_sign(body: bytes, error: type[LedgerError]) -> None:
    """[protocol: APIv2 checks, in order] a FAIL carries nothing to act on."""
    with pytest.raises(error):
        parse_v2_notification(body, DOC_KEY, max_bytes=LIMIT)


def test_each_refusal_is_answered_like_its_apiv3_counterpart() -> None:
    """[protocol: APIv2 checks, in order] 413, 400, 401, 500 through the one answer table."""
    assert answer_for(BodyTooLarge).status == 413
    assert answer_for(V2Malformed).status == answer_for(V2XmlForbidden).status == 400
    assert answer_for(V2ReturnCodeFail).status == 400
    assert answer_for(V2SignInvalid).status == 401
    assert answer_for(V2DecryptionFailed).status == 500
    for error in (V2Malformed, V2XmlForbidden, V2ReturnCodeFail, V2SignInvalid, V2DecryptionFailed):
        assert len(error.reason) < 64


# -- as APIv3 tells it ([protocol: APIv2 as APIv3]) -----------------------------------------------


def test_a_payment_is_told_as_the_apiv3_transaction() -> None:
    delivery = v2_delivery(parse_v2_notification(payment(D6_MD5), DOC_KEY, max_bytes=LIMIT))
    assert (delivery.notification_id, delivery.event_type) == ("v2:1004400740201409030005092168", "TRANSACTION.SUCCESS")
    assert delivery.delivery_key == hashlib.sha256(payment(D6_MD5)).hexdigest()
    assert delivery.resource == {
        "mchid": "10000100",
        "appid": "wx2421b1c4370ec43b",
        "out_trade_no": "1409811653",
        "transaction_id": "1004400740201409030005092168",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "success_time": "2014-09-03T13:15:40+08:00",
        "amount": {"total": 1, "currency": "CNY"},  # no cash_fee: no payer_total
        "bank_type": "CFT",
        "attach": "支付测试",
    }


def test_a_providers_failed_payment_is_told_as_a_partner_transaction_that_decides_nothing() -> None:
    fields = {
        "return_code": "SUCCESS",
        "result_code": "FAIL",
        "err_code_des": "余额不足",
        "mch_id": "1230000109",
        "appid": "wx8888888888888888",
        "sub_mch_id": "1900000109",
        "sub_appid": "wxd678efh567hg6999",
        "out_trade_no": "ORDER-0001",
        "total_fee": "100",
        "cash_fee": "x",  # what is not fen reads as absent, as in a JSON resource
        "fee_type": "",
        "time_end": "2014-13-03",  # what is not yyyyMMddHHmmss is kept as given
        "nonce_str": "n",
    }
    body = to_xml(fields | {"sign": sign_v2(fields, DOC_KEY)})
    delivery = v2_delivery(parse_v2_notification(body, DOC_KEY, max_bytes=LIMIT))
    assert delivery.event_type == "TRANSACTION.FAIL"
    assert delivery.notification_id == f"v2:{hashlib.sha256(body).hexdigest()}"  # no transaction_id
    assert delivery.resource == {
        "sp_mchid": "1230000109",
        "sub_mchid": "1900000109",
        "sp_appid": "wx8888888888888888",
        "sub_appid": "wxd678efh567hg6999",
        "out_trade_no": "ORDER-0001",
        "transaction_id": "",
        "trade_type": "",
        "trade_state": "PAYERROR",
        "trade_state_desc": "余额不足",
        "success_time": "2014-13-03",
        "amount": {"total": 100, "payer_total": None, "currency": "CNY"},
    }


def test_a_refund_is_told_as_the_apiv3_refund_resource() -> None:
    delivery = v2_delivery(parse_v2_notification(refund(T1_REQ_INFO), T1_KEY, max_bytes=LIMIT))
    assert (delivery.notification_id, delivery.event_type) == (
        "v2:refund:50000404922017112502468056157:SUCCESS",
        "REFUND.V2",
    )
    assert delivery.resource == {
        "mchid": "10000100",
        "out_trade_no": "4893e76d8c8b434cb64e9cd536338e33",
        "transaction_id": "4200000015201711256947025404",
        "out_refund_no": "50fd012ed1b311e7af7800163e32c503",
        "refund_id": "50000404922017112502468056157",
        "refund_status": "SUCCESS",
        "success_time": "2017-11-25T15:36:17+08:00",
        "amount": {"total": 6, "refund": 6, "settlement_total": 6, "settlement_refund": 6},
        "user_received_account": "支付用户零钱",
        "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS",
        "refund_request_source": "API",
    }
    for v2_status, status in (("REFUNDCLOSE", "CLOSED"), ("CHANGE", "ABNORMAL"), ("ODD", "ODD")):
        closed = encrypt_req_info(T1_PLAINTEXT.replace(b"[SUCCESS]", f"[{v2_status}]".encode()), T1_KEY)
        other = v2_delivery(parse_v2_notification(refund(closed), T1_KEY, max_bytes=LIMIT))
        assert other.resource["refund_status"] == status
        assert other.notification_id.endswith(f":{v2_status}")


# -- answers --------------------------------------------------------------------------------------


def test_the_success_answer_is_exactly_wechats() -> None:
    """[protocol: Answering in XML]"""
    expected = b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    assert answer_xml(True) == answer_xml(True, "OK") == expected
    assert answer_xml(False, V2SignInvalid.reason) == (
        b"<xml><return_code><![CDATA[FAIL]]></return_code>"
        b"<return_msg><![CDATA[sign verification failed]]></return_msg></xml>"
    )


@pytest.mark.parametrize(
    "message",
    ["a]]></return_msg><return_code>SUCCESS</return_code><return_msg>", "]]>", "x]]]]>y", "<![CDATA[", "支付失败"],
)
def test_a_failure_reason_cannot_break_out_of_its_cdata(message: str) -> None:
    """[protocol: Answering in XML]"""
    assert parse_v2_xml(answer_xml(False, message), max_bytes=LIMIT) == {"return_code": "FAIL", "return_msg": message}


def test_a_failure_reason_is_one_short_line() -> None:
    fields = parse_v2_xml(answer_xml(False, "line one\r\nline\x00two " + "x" * 500), max_bytes=LIMIT)
    assert fields["return_msg"].startswith("line one line two x")
    assert len(fields["return_msg"]) == 128


# -- the key --------------------------------------------------------------------------------------


def test_the_v2_key_is_32_printable_characters() -> None:
    assert check_v2_key(T1_KEY, "v2_key") == T1_KEY
    assert check_v2_key(DOC_KEY, "merchants[0].v2_key") == DOC_KEY
    for bad in ("", T1_KEY[:31], T1_KEY + "x", T1_KEY[:31] + " ", T1_KEY[:31] + "é", T1_KEY + "\n"):
        with pytest.raises(ConfigurationError) as refused:
            check_v2_key(bad, "v2_key")
        assert refused.value.setting == "v2_key"
        if bad.strip():
            assert bad.strip() not in str(refused.value)


# -- round trips ----------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
    lambda n: n not in ("sign", "sign_type", "return_code", "req_info")
)
# Anything XML can carry: no control characters but tab, LF and CR, no surrogates.
VALUES = st.text(st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\t\n\r"), max_size=40)
FIELDS = st.dictionaries(NAMES, VALUES, max_size=12)
KEYS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(FIELDS, st.sampled_from([MD5, HMAC_SHA256]), KEYS, st.data())
def test_sign_then_verify_round_trips_and_any_change_is_caught(
    fields: dict[str, str], sign_type: str, key: str, data: st.DataObject
) -> None:
    """[protocol: The APIv2 sign] through the XML WeChat would write, and every field counts."""
    fields = {"return_code": "SUCCESS", **fields} | ({"sign_type": sign_type} if sign_type == HMAC_SHA256 else {})
    signed = fields | {"sign": sign_v2(fields, key, sign_type)}
    verify_v2_sign(signed, key)
    notification = parse_v2_notification(to_xml(signed), key, max_bytes=LIMIT)
    assert notification.kind == "payment" and notification.fields == signed

    name = data.draw(st.sampled_from(sorted(fields)))
    changed = data.draw(VALUES.filter(lambda v: v not in ("", fields[name])))
    with pytest.raises(V2SignInvalid):
        verify_v2_sign(signed | {name: changed}, key)
    with pytest.raises(V2SignInvalid):
        verify_v2_sign(signed, key + "x")


@settings(max_examples=100, deadline=None)
@given(FIELDS, KEYS)
def test_encrypt_then_decrypt_round_trips(fields: dict[str, str], key: str) -> None:
    """[protocol: APIv2 refund notifications]"""
    req_info = encrypt_req_info(to_xml(fields, root="root"), key)
    assert decrypt_req_info(req_info, key) == fields


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_ecb_round_trips_any_bytes(plaintext: bytes) -> None:
    key = req_info_key(DOC_KEY)
    assert decrypt_ecb(key, encrypt_ecb(key, plaintext)) == plaintext


@pytest.mark.parametrize("build", [lambda: to_xml({"a b": "1"}), lambda: to_xml({"a": "\x00"})])
def test_to_xml_refuses_what_xml_cannot_carry(build: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        build()
