"""The APIv2 vectors of [protocol: APIv2 vectors], and hostile XML, shared by the protocol's tests and the
endpoint's: T1 (a real refund `req_info`, gopay), T2 (EasyWeChat), D7 (the PHP SDK's refund sample under the
documentation's key), T8/D6 (the official sample payment notification: its published sign, and the signs the
documentation's key gives), and bodies that attack an XML parser (XXE, external DTDs, entity expansion)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "BILLION_LAUGHS",
    "D6_HMAC",
    "D6_MD5",
    "D7_PLAINTEXT",
    "DOC_KEY",
    "EXTERNAL_DTD",
    "HOSTILE_XML",
    "PAYMENT",
    "PUBLIC_DTD",
    "QUADRATIC_BLOWUP",
    "T1_KEY",
    "T1_PLAINTEXT",
    "T1_REQ_INFO",
    "T2_KEY",
    "T2_PLAINTEXT",
    "T2_REQ_INFO",
    "T8_SIGN",
    "XXE_FILE",
    "XXE_PARAMETER",
    "ecb_without_padding",
    "payment",
    "refund",
]

DOC_KEY = "192006250b4c09247ec02edce69f6a2d"  # the v2 documentation's example key

T1_KEY = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP"
T1_REQ_INFO = (
    "YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p6frOX1"
    "PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeASZJNvof0ulnH"
    "lWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDncTezX4bf/ZiSLXt79aE"
    "1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAOiAMg+bh5+Gu1ubA9O3E+vehULy"
    "dD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+QjjhhBmwgbd6J0VqpRorwOuzC/BHdkP72"
    "DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjDXMXrknrGPN/oE1t0rLRq+78cI+k8xe5E6seeUXQs"
    "Ee8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUWa/Cv/XAKFQuvUYA5ea2eYWtPRHa4DpyuF1SNsaqVKfgqKX"
    "ZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/lqiy6TTyP/dHDN6/v+AuJx5"
    "AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8cUpafIHc+GesDlbF6Zbt+/KXka"
    "fJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw=="
)
T1_PLAINTEXT = """<root>
<out_refund_no><![CDATA[50fd012ed1b311e7af7800163e32c503]]></out_refund_no>
<out_trade_no><![CDATA[4893e76d8c8b434cb64e9cd536338e33]]></out_trade_no>
<refund_account><![CDATA[REFUND_SOURCE_RECHARGE_FUNDS]]></refund_account>
<refund_fee><![CDATA[6]]></refund_fee>
<refund_id><![CDATA[50000404922017112502468056157]]></refund_id>
<refund_recv_accout><![CDATA[支付用户零钱]]></refund_recv_accout>
<refund_request_source><![CDATA[API]]></refund_request_source>
<refund_status><![CDATA[SUCCESS]]></refund_status>
<settlement_refund_fee><![CDATA[6]]></settlement_refund_fee>
<settlement_total_fee><![CDATA[6]]></settlement_total_fee>
<success_time><![CDATA[2017-11-25 15:36:17]]></success_time>
<total_fee><![CDATA[6]]></total_fee>
<transaction_id><![CDATA[4200000015201711256947025404]]></transaction_id>
</root>""".encode()

T2_KEY = "1234567890abcdef1234567890abcdef"
T2_PLAINTEXT = (
    "<root><out_refund_no><![CDATA[123]]></out_refund_no><out_trade_no><![CDATA[abc]]></out_trade_no>"
    "<refund_account><![CDATA[REFUND_SOURCE_UNSETTLED_FUNDS]]></refund_account><refund_fee><![CDATA[1]]></refund_fee>"
    "<refund_id><![CDATA[50000303712017072701466990000]]></refund_id><refund_recv_accout><![CDATA[用户零钱]]>"
    "</refund_recv_accout><refund_request_source><![CDATA[API]]></refund_request_source><refund_status>"
    "<![CDATA[SUCCESS]]></refund_status><settlement_refund_fee><![CDATA[1]]></settlement_refund_fee>"
    "<settlement_total_fee><![CDATA[1]]></settlement_total_fee><success_time><![CDATA[2017-07-27 00:33:09]]>"
    "</success_time><total_fee><![CDATA[1]]></total_fee><transaction_id><![CDATA[4005302001201707272838220000]]>"
    "</transaction_id></root>"
).encode()
T2_REQ_INFO = (
    "m+cqC5OWNek/jGSeSFjMwxqoQmt9x/XQEPRosjYHR2a6kosdkuS2hFlt1QP/ykVOCm6PXnC0tOc7gsPzP3aG4Hhn7wJwJAvMhSUJhOAOlnXtHupbyiw"
    "b9vNgqAwcSr04U1yoI8UemDCz+TnIsbldurZh6UKtDqSutp/KiutgJ/9crss+fh9hy9UcBKO60JkJgka79q6lkQoOKZh3kIHrFEZGFKcvCOJzx/heVt"
    "z8AHGoB/IuNV4Mh280FZM1TTe8V54eXgqHNAOdJCoYQuKu34tepA+a4sjCcPOmNU5wLCjEFQ/+w7Ad8U2i3bfaA713DPk5qV8IVSB1cMGZj+zZBGPT4"
    "OWBg0vZD4ZJCydf93e95CbxV7FuSPiFnZwjvsHBCA7DNGoAfSx72p5ZBcyCTFV9y4O9xTukHUmJNI8XK+JhR5Imz9u5422lfN5FcM6g4WdLDTVO/DiN"
    "4chaTUk9uqEiMqD2Bn3+ZWe/R91YDW8koG3qd7m/9y7sckptNQWU9fi+zk/AbCLHETiUIj4dtFxsZRTBUFIEmSl2ebcPEdowOLzjUe2uW/Qr8dDwFuW"
    "GsSYawYnsbsxliNc5DthzhcdB9MDkOab6hckUIC7639s6DKFP44Olgjc+tt5EfDpNxK0rHh4rhlCz9h5ZhzI7CVqJRx5pCLEBaJKntPeF9IWfj92VYM"
    "Y7o8TesmqhiDWnGVGSK8vXDsQMAWIhHi2STvdVAZkaOTzF+cxVJsUgy2zVlGhNzlqjQZmLoXZ/Kiid7cfUQvg/Bqw4We6KRrAfTHplwjbghjVzqWsgJ"
    "v8KI3cYjFJEtTy19a0z3yBrcthtjszmBEUyUG/d4O0DzGEG+JNB4VsMz/jWUJ2d2uJmpyvngyt5RkafRH4mCHWkNTPz5UCBZtJbvFzQ/VB/X077Apwg"
    "k7lfgULu1uVF9N108kRKQcrqoGEH/oZ6lo0wIXbITx+7lr91eMvu4JgGPSQW4MKbluSa28iwkE5YcnQbYd0="
)

# The PHP SDK's refund sample (tests/fixtures/refund.notification.req_info.sample.xml), final LF included.
D7_PLAINTEXT = """<root>
<out_refund_no><![CDATA[131811191610442717309]]></out_refund_no>
<out_trade_no><![CDATA[71106718111915575302817]]></out_trade_no>
<refund_account><![CDATA[REFUND_SOURCE_RECHARGE_FUNDS]]></refund_account>
<refund_fee><![CDATA[3960]]></refund_fee>
<refund_id><![CDATA[50000408942018111907145868882]]></refund_id>
<refund_recv_accout><![CDATA[支付用户零钱]]></refund_recv_accout>
<refund_request_source><![CDATA[API]]></refund_request_source>
<refund_status><![CDATA[SUCCESS]]></refund_status>
<settlement_refund_fee><![CDATA[3960]]></settlement_refund_fee>
<settlement_total_fee><![CDATA[3960]]></settlement_total_fee>
<success_time><![CDATA[2018-11-19 16:24:13]]></success_time>
<total_fee><![CDATA[3960]]></total_fee>
<transaction_id><![CDATA[4200000215201811190261405420]]></transaction_id>
</root>
""".encode()

# The official sample payment notification (T8) as the PHP SDK ships it; {sign} and {extra} are ours.
T8_SIGN = "B552ED6B279343CB493C5DD0D78AB241"
D6_MD5 = "F3F481B732273AFA2839E877583F311D"
D6_HMAC = "24E6E92F0FDF7A6E11079FDA7500F7AC2220CB42E026B3AFB4811FFA0E706008"
PAYMENT = """<xml>
  <appid><![CDATA[wx2421b1c4370ec43b]]></appid>
  <attach><![CDATA[支付测试]]></attach>
  <bank_type><![CDATA[CFT]]></bank_type>
  <fee_type><![CDATA[CNY]]></fee_type>
  <is_subscribe><![CDATA[Y]]></is_subscribe>
  <mch_id><![CDATA[10000100]]></mch_id>
  <nonce_str><![CDATA[5d2b6c2a8db53831f7eda20af46e531c]]></nonce_str>
  <openid><![CDATA[oUpF8uMEb4qRXf22hE3X68TekukE]]></openid>
  <out_trade_no><![CDATA[1409811653]]></out_trade_no>
  <result_code><![CDATA[SUCCESS]]></result_code>
  <return_code><![CDATA[SUCCESS]]></return_code>
  <sign><![CDATA[{sign}]]></sign>
  <time_end><![CDATA[20140903131540]]></time_end>
  <total_fee>{total_fee}</total_fee>
  <coupon_fee><![CDATA[10]]></coupon_fee>
  <coupon_count><![CDATA[1]]></coupon_count>
  <coupon_type><![CDATA[CASH]]></coupon_type>
  <coupon_id><![CDATA[10000]]></coupon_id>
  <trade_type><![CDATA[JSAPI]]></trade_type>
  <transaction_id><![CDATA[1004400740201409030005092168]]></transaction_id>{extra}
</xml>
"""


def payment(sign: str = D6_MD5, *, total_fee: str = "1", extra: str = "") -> bytes:
    return PAYMENT.format(sign=sign, total_fee=total_fee, extra=extra).encode()


def refund(req_info: str, *, extra: str = "") -> bytes:
    return (
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid>"
        "<mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str>"
        f"<req_info><![CDATA[{req_info}]]></req_info>{extra}</xml>"
    ).encode()


# -- hostile XML -----------------------------------------------------------------------------------

XXE_FILE = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><return_code>SUCCESS</return_code><attach>&xxe;</attach></xml>"""
XXE_PARAMETER = b"""<!DOCTYPE xml [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/x.dtd"> %remote;]><xml/>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd"><xml><a>1</a></xml>"""
PUBLIC_DTD = b"""<!DOCTYPE xml PUBLIC "-//W3C//DTD XHTML 1.0//EN" "http://127.0.0.1:9/x.dtd"><xml/>"""
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE xml [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10)
    )
    + b"]>\n<xml><return_code>&lol9;</return_code></xml>"
)
QUADRATIC_BLOWUP = b'<!DOCTYPE xml [<!ENTITY a "' + b"x" * 20_000 + b'">]><xml><a>' + b"&a;" * 10_000 + b"</a></xml>"
HOSTILE_XML = {
    "xxe-file-read": XXE_FILE,
    "xxe-parameter-entity": XXE_PARAMETER,
    "external-dtd": EXTERNAL_DTD,
    "public-dtd": PUBLIC_DTD,
    "billion-laughs": BILLION_LAUGHS,
    "quadratic-blowup": QUADRATIC_BLOWUP,
}
"""Every hostile body above, by its test case's id: `parametrize("body", HOSTILE_XML.values(), ids=HOSTILE_XML)`."""


def ecb_without_padding(key: bytes, data: bytes) -> str:
    """`data` (whole blocks) encrypted as `req_info` is, without adding a padding: to make bad ones."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode()
