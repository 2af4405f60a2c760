"""Legacy APIv2 XML notifications ([protocol: Legacy APIv2 XML]): the body read as hostile XML, the
`sign` of payments ([protocol: The APIv2 sign]), the encrypted `req_info` of refunds ([protocol:
APIv2 refund notifications]) and the two XML answers ([protocol: Answering in XML]).

Pure: bytes and the APIv2 key in, a `V2Notification` or one of the tree's errors out. The order
of the checks is [protocol: APIv2 checks, in order]: size, XML, `return_code`, then the sign of a
payment before any of its fields is used, or the decryption of a refund's `req_info`. A
notification is then told as an APIv3 one would tell it (`v2_delivery`, [protocol: APIv2 as
APIv3]): a payment as the transaction resource, a refund as the refund resource, so that one
order has one history whichever API told us.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from ledger.errors import (
    BodyTooLarge,
    ConfigurationError,
    MalformedNotification,
    V2DecryptionFailed,
    V2Malformed,
    V2ReturnCodeFail,
    V2SignInvalid,
    V2XmlForbidden,
)

__all__ = [
    "HMAC_SHA256",
    "MD5",
    "SIGN_TYPES",
    "V2_KEY_LENGTH",
    "V2_KEY_SERIAL",
    "V2Delivery",
    "V2Notification",
    "answer_xml",
    "check_v2_key",
    "decrypt_ecb",
    "decrypt_req_info",
    "encrypt_ecb",
    "encrypt_req_info",
    "parse_v2_notification",
    "parse_v2_xml",
    "req_info_key",
    "sign_v2",
    "to_xml",
    "v2_delivery",
    "v2_refund_resource",
    "v2_transaction",
    "verify_v2_sign",
]

MD5 = "MD5"
HMAC_SHA256 = "HMAC-SHA256"
SIGN_TYPES = (MD5, HMAC_SHA256)
V2_KEY_LENGTH = 32
ANSWER_MESSAGE_LENGTH = 128

# An XML declaration stands at the very start; a parser given text reads UTF-8 whatever it says,
# while another reader of the kept bytes would honour it, so only UTF-8 may be declared.
_DECLARATION = re.compile(r"\A\ufeff?<\?xml\s[^>]*?\bencoding\s*=\s*([\"'])(.*?)\1")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# What XML 1.0 cannot carry at all, not even in CDATA.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# An answer's reason is one short line.
_NOT_A_LINE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]+")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")


# -- XML ----------------------------------------------------------------------------------------


def parse_v2_xml(raw: bytes, *, max_bytes: int, root: str = "xml") -> dict[str, str]:
    """The fields of a flat `<xml>` (or `<root>`) of text elements; anything else is refused.

    The size is checked before anything is parsed, and the parser stops at the start of a DTD, so a
    hostile body costs no more than reading its prolog."""
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"XML body of {len(raw)} bytes, limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise V2Malformed("XML body is not UTF-8") from None
    declared = _DECLARATION.match(text)
    if declared and declared[2].lower() != "utf-8":
        raise V2Malformed("XML declares an encoding other than UTF-8")
    # Comments and processing instructions are kept in the tree only so that they can be refused.
    parser = DefusedXMLParser(
        target=TreeBuilder(insert_comments=True, insert_pis=True),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(text)
        document = parser.close()
    except DefusedXmlException:
        raise V2XmlForbidden("XML with a DTD, an entity declaration or an external reference") from None
    except (ParseError, ValueError) as exc:
        line, column = getattr(exc, "position", ("?", "?"))
        raise V2Malformed(f"XML not well-formed at line {line}, column {column}") from None
    return _flat_fields(document, root)


def _flat_fields(document: Element, root: str) -> dict[str, str]:
    if document.tag != root or document.attrib:
        raise V2Malformed(f"the root element is not a plain <{root}>")
    if (document.text or "").strip():
        raise V2Malformed(f"text directly inside <{root}>")
    fields: dict[str, str] = {}
    for child in document:
        if not isinstance(child.tag, str):  # the Comment and ProcessingInstruction factories
            raise V2Malformed(f"a comment or processing instruction inside <{root}>")
        name = child.tag[:64]
        if len(child) or child.attrib or child.tag.startswith("{"):
            raise V2Malformed(f"element {name!r} is nested, has attributes or a namespace")
        if (child.tail or "").strip():
            raise V2Malformed(f"text between elements after {name!r}")
        if child.tag in fields:
            raise V2Malformed(f"element {name!r} appears twice")
        fields[child.tag] = child.text or ""
    return fields


def _cdata(value: str) -> str:
    """`value` as CDATA that reads back exactly: `]]>` split across two sections, CR as a reference."""
    if _NOT_XML.search(value):
        raise ValueError("XML cannot carry control characters or lone surrogates")
    escaped = value.replace("]]>", "]]]]><![CDATA[>").replace("\r", "]]>&#13;<![CDATA[")
    return f"<![CDATA[{escaped}]]>"


def to_xml(fields: Mapping[str, str], *, root: str = "xml") -> bytes:
    """The flat XML WeChat writes, fields in the given order, every value in CDATA (for the sandbox)."""
    parts = [f"<{root}>"]
    for name, value in fields.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name[:64]!r} is not an element name")
        parts.append(f"<{name}>{_cdata(value)}</{name}>")
    parts.append(f"</{root}>")
    return "".join(parts).encode()


def answer_xml(success: bool, message: str = "OK") -> bytes:
    """The answer WeChat reads: return_code SUCCESS or FAIL, and a short fixed reason, never exception text."""
    short = _NOT_A_LINE.sub(" ", message).strip()[:ANSWER_MESSAGE_LENGTH]
    return to_xml({"return_code": "SUCCESS" if success else "FAIL", "return_msg": short})


# -- the sign -----------------------------------------------------------------------------------


def _string_to_sign(fields: Mapping[str, str], key: str) -> bytes:
    pairs = sorted((name, value) for name, value in fields.items() if name != "sign" and value != "")
    return ("&".join(f"{name}={value}" for name, value in pairs) + f"&key={key}").encode()


def sign_v2(fields: Mapping[str, str], key: str, sign_type: str = MD5) -> str:
    """Every non-empty field but `sign`, sorted, `&key=` appended; MD5 or HMAC-SHA256, upper-case hex."""
    message = _string_to_sign(fields, key)
    if sign_type == MD5:
        return hashlib.md5(message).hexdigest().upper()  # noqa: S324 - APIv2's sign is MD5 by definition
    if sign_type == HMAC_SHA256:
        return hmac.new(key.encode(), message, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"sign_type must be one of {SIGN_TYPES}")


def verify_v2_sign(fields: Mapping[str, str], key: str) -> None:
    """The algorithm is the one `sign_type` names (MD5 when absent); the comparison is constant-time."""
    sign_type = fields.get("sign_type") or MD5
    if sign_type not in SIGN_TYPES:
        raise V2SignInvalid(f"unknown sign_type {sign_type[:32]!r}")
    received = fields.get("sign", "")
    if not received:
        raise V2SignInvalid("no sign")
    if not hmac.compare_digest(sign_v2(fields, key, sign_type).encode(), received.encode()):
        raise V2SignInvalid(f"{sign_type} sign does not match")


# -- req_info -----------------------------------------------------------------------------------


def req_info_key(key: str) -> bytes:
    """The AES-256 key of `req_info`: the 32 ASCII bytes of the lower-case hex MD5 of the APIv2 key."""
    return hashlib.md5(key.encode()).hexdigest().encode("ascii")  # noqa: S324 - WeChat's key derivation


def _ecb(aes_key: bytes) -> Cipher[modes.ECB]:
    if len(aes_key) != 32:
        raise ValueError("AES-256 takes a 32-byte key")
    return Cipher(algorithms.AES(aes_key), modes.ECB())  # noqa: S305 - WeChat's req_info is ECB, unauthenticated


def decrypt_ecb(aes_key: bytes, ciphertext: bytes) -> bytes:
    """AES-256-ECB, PKCS#7 checked strictly (every padding byte); failures are `V2DecryptionFailed`."""
    if not ciphertext or len(ciphertext) % 16:
        raise V2DecryptionFailed("req_info is not whole AES blocks")
    decryptor = _ecb(aes_key).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise V2DecryptionFailed("req_info has a bad PKCS#7 padding (wrong APIv2 key?)") from None


def encrypt_ecb(aes_key: bytes, plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = _ecb(aes_key).encryptor()
    return encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()


def decrypt_req_info(req_info: str, key: str) -> dict[str, str]:
    """base64 → AES-256-ECB with `req_info_key(key)` → the `<root>` fields, read by the same safe parser.

    ECB carries no MAC: a result is a hint, to be confirmed by a refund query before it decides anything."""
    try:
        ciphertext = base64.b64decode(req_info.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise V2DecryptionFailed("req_info is not base64") from None
    plaintext = decrypt_ecb(req_info_key(key), ciphertext)
    try:
        return parse_v2_xml(plaintext, max_bytes=len(plaintext), root="root")
    except MalformedNotification:
        raise V2DecryptionFailed("req_info does not decrypt to a <root> of fields (wrong APIv2 key?)") from None


def encrypt_req_info(plaintext: bytes, key: str) -> str:
    """The `req_info` WeChat would send for this `<root>` XML (for the sandbox)."""
    return base64.b64encode(encrypt_ecb(req_info_key(key), plaintext)).decode("ascii")


# -- notifications ------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2Notification:
    """A payment whose sign verified, or a refund whose `req_info` decrypted (not authenticated)."""

    kind: Literal["payment", "refund"]
    fields: Mapping[str, str]
    raw: bytes = field(repr=False)
    req_info: Mapping[str, str] | None = None

    @property
    def mch_id(self) -> str | None:
        return self.fields.get("mch_id")

    @property
    def out_trade_no(self) -> str | None:
        return (self.req_info if self.req_info is not None else self.fields).get("out_trade_no")


def parse_v2_notification(raw: bytes, key: str, *, max_bytes: int) -> V2Notification:
    """Size, safe XML, `return_code`; then a payment's sign, or a refund's `req_info` (a refund is
    the notification that has one; a sign beside it, which WeChat does not send, is checked too)."""
    fields = parse_v2_xml(raw, max_bytes=max_bytes)
    return_code = fields.get("return_code")
    if return_code == "FAIL":
        raise V2ReturnCodeFail("notification with return_code FAIL")
    if return_code != "SUCCESS":
        raise V2Malformed("return_code is missing or neither SUCCESS nor FAIL")
    if "req_info" in fields:
        if "sign" in fields:
            verify_v2_sign(fields, key)
        return V2Notification("refund", fields, raw, decrypt_req_info(fields["req_info"], key))
    verify_v2_sign(fields, key)
    return V2Notification("payment", fields, raw)


# -- as APIv3 tells it ([protocol: APIv2 as APIv3]) --------------------------------------------

V2_KEY_SERIAL = "APIv2"
"""What a v2 delivery records as its key serial: it was checked with the merchant's APIv2 key."""
CST = dt.timezone(dt.timedelta(hours=8))
# A refund's v2 `refund_status` and the APIv3 `refund_status` saying the same.
_REFUND_STATUSES = {"SUCCESS": "SUCCESS", "REFUNDCLOSE": "CLOSED", "CHANGE": "ABNORMAL"}
_TIME_END = re.compile(r"[0-9]{14}")
_REFUND_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_FEN = re.compile(r"[0-9]{1,15}")


def _fen(value: str | None) -> int | None:
    """Fen as WeChat writes them (digits); anything else reads as absent, as in a JSON resource."""
    return int(value) if value is not None and _FEN.fullmatch(value) else None


def _rfc3339(value: str, pattern: re.Pattern[str], layout: str) -> str:
    """A Beijing time of APIv2 as APIv3 writes it (`2014-09-03T13:15:40+08:00`); anything else as given."""
    if not pattern.fullmatch(value):
        return value
    try:
        return dt.datetime.strptime(value, layout).replace(tzinfo=CST).isoformat()
    except ValueError:
        return value


def _merchants(fields: Mapping[str, str], *, appids: bool) -> dict[str, str]:
    """`mch_id` (and `appid`) as `mchid` (`appid`); a service provider's, which names a `sub_mch_id`, as
    `sp_mchid`/`sub_mchid` (`sp_appid`/`sub_appid`), the shape of a partner resource."""
    partner = bool(fields.get("sub_mch_id"))
    found = {"sp_mchid" if partner else "mchid": fields.get("mch_id", "")}
    if partner:
        found["sub_mchid"] = fields["sub_mch_id"]
    if appids:
        found["sp_appid" if partner else "appid"] = fields.get("appid", "")
        if partner and fields.get("sub_appid"):
            found["sub_appid"] = fields["sub_appid"]
    return found


def _present(fields: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """The fields of `names` (v2 name -> APIv3 name) that are present and not empty, renamed."""
    return {v3: fields[v2] for v2, v3 in names.items() if fields.get(v2)}


def v2_transaction(fields: Mapping[str, str]) -> dict[str, Any]:
    """A payment notification's (verified) fields as the APIv3 transaction resource: `trade_state`
    SUCCESS when `result_code` is, `time_end` as RFC 3339, `total_fee` as `amount.total`, `cash_fee`
    as `amount.payer_total`, `fee_type` (or CNY) as `amount.currency`."""
    amount: dict[str, Any] = {"total": _fen(fields.get("total_fee"))}
    if "cash_fee" in fields:
        amount["payer_total"] = _fen(fields["cash_fee"])
    amount["currency"] = fields.get("fee_type") or "CNY"
    paid = fields.get("result_code") == "SUCCESS"
    transaction: dict[str, Any] = {
        **_merchants(fields, appids=True),
        "out_trade_no": fields.get("out_trade_no", ""),
        "transaction_id": fields.get("transaction_id", ""),
        "trade_type": fields.get("trade_type", ""),
        "trade_state": "SUCCESS" if paid else "PAYERROR",
    }
    if not paid and fields.get("err_code_des"):
        transaction["trade_state_desc"] = fields["err_code_des"]
    if "time_end" in fields:
        transaction["success_time"] = _rfc3339(fields["time_end"], _TIME_END, "%Y%m%d%H%M%S")
    transaction["amount"] = amount
    return transaction | _present(fields, {"bank_type": "bank_type", "attach": "attach"})


def v2_refund_resource(fields: Mapping[str, str], req_info: Mapping[str, str]) -> dict[str, Any]:
    """A refund notification's decrypted `req_info` as the APIv3 refund resource (a hint: ECB is not
    authenticated): `refund_status` SUCCESS, CLOSED or ABNORMAL for SUCCESS, REFUNDCLOSE or CHANGE;
    `success_time` as RFC 3339; `total_fee`/`refund_fee` as `amount.total`/`amount.refund`."""
    status = req_info.get("refund_status", "")
    amount: dict[str, Any] = {"total": _fen(req_info.get("total_fee")), "refund": _fen(req_info.get("refund_fee"))}
    for v2, v3 in (
        ("settlement_total_fee", "settlement_total"),
        ("settlement_refund_fee", "settlement_refund"),
        ("cash_refund_fee", "payer_refund"),
    ):
        if v2 in req_info:
            amount[v3] = _fen(req_info[v2])
    resource: dict[str, Any] = {
        **_merchants(fields, appids=False),
        "out_trade_no": req_info.get("out_trade_no", ""),
        "transaction_id": req_info.get("transaction_id", ""),
        "out_refund_no": req_info.get("out_refund_no", ""),
        "refund_id": req_info.get("refund_id", ""),
        "refund_status": _REFUND_STATUSES.get(status, status),
    }
    if "success_time" in req_info:
        resource["success_time"] = _rfc3339(req_info["success_time"], _REFUND_TIME, "%Y-%m-%d %H:%M:%S")
    resource["amount"] = amount
    kept = {
        "refund_recv_accout": "user_received_account",
        "refund_account": "refund_account",
        "refund_request_source": "refund_request_source",
    }
    return resource | _present(req_info, kept)


@dataclass(frozen=True)
class V2Delivery:
    """A v2 notification as an APIv3 delivery: its id, event type, resource and delivery key."""

    notification_id: str
    event_type: str
    resource: dict[str, Any]
    delivery_key: str


def v2_delivery(notification: V2Notification) -> V2Delivery:
    """[protocol: APIv2 as APIv3]. A payment is `TRANSACTION.SUCCESS` (`TRANSACTION.FAIL` when its
    `result_code` is not SUCCESS: recorded, deciding nothing) with id `v2:<transaction_id>`; a refund is
    `REFUND.V2` (deciding nothing until a refund query confirms it) with id `v2:refund:<refund_id>:<status>`.
    The delivery key is the SHA-256 of the body: WeChat's v2 retries are the same bytes, so they collapse."""
    key = hashlib.sha256(notification.raw).hexdigest()
    if notification.kind == "refund":
        assert notification.req_info is not None
        resource = v2_refund_resource(notification.fields, notification.req_info)
        refund_id, status = resource["refund_id"], notification.req_info.get("refund_status", "")
        return V2Delivery(f"v2:refund:{refund_id}:{status}" if refund_id else f"v2:{key}", "REFUND.V2", resource, key)
    resource = v2_transaction(notification.fields)
    event_type = "TRANSACTION.SUCCESS" if resource["trade_state"] == "SUCCESS" else "TRANSACTION.FAIL"
    transaction_id = resource["transaction_id"]
    return V2Delivery(f"v2:{transaction_id}" if transaction_id else f"v2:{key}", event_type, resource, key)


# -- settings -----------------------------------------------------------------------------------


def check_v2_key(key: str, setting: str) -> str:
    """The APIv2 key as WeChat Pay issues it: 32 printable ASCII characters; `setting` names where it was
    read (the environment variable or the TOML key). Messages never quote the key."""
    if len(key) != V2_KEY_LENGTH:
        raise ConfigurationError(setting, f"must be the {V2_KEY_LENGTH}-character APIv2 key, got {len(key)} characters")
    if not _PRINTABLE_ASCII.fullmatch(key):
        raise ConfigurationError(setting, "must be printable ASCII without spaces")
    return key
