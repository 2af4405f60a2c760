"""Legacy APIv2 XML notifications ([protocol: Legacy APIv2 XML]): the body read as hostile XML, the
`sign` of payments ([protocol: The APIv2 sign]), the encrypted `req_info` of refunds ([protocol:
APIv2 refund notifications]) and the two XML answers ([protocol: Answering in XML]).

Pure: bytes and the APIv2 key in, a `V2Notification` or one of the tree's errors out. The order
of the checks is [protocol: APIv2 checks, in order]: size, XML, `return_code`, then the sign of a
payment before any of its fields is used, or the decryption of a refund's `req_info`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
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


# -- settings -----------------------------------------------------------------------------------


def check_v2_key(key: str, setting: str) -> str:
    """The APIv2 key as WeChat Pay issues it: 32 printable ASCII characters; `setting` names where it was
    read (the environment variable or the TOML key). Messages never quote the key."""
    if len(key) != V2_KEY_LENGTH:
        raise ConfigurationError(setting, f"must be the {V2_KEY_LENGTH}-character APIv2 key, got {len(key)} characters")
    if not _PRINTABLE_ASCII.fullmatch(key):
        raise ConfigurationError(setting, "must be printable ASCII without spaces")
    return key
