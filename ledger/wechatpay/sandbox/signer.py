"""Generate correctly signed and encrypted notifications with keys of our own.

This plays WeChat Pay's side of [protocol: Notifications … Decrypting the resource] for the tests, the
benchmarks and `payledger dev`: it holds a signing key (as a public-key id, a platform certificate, or
both), the merchant's APIv3 key, and builds compact bodies with raw UTF-8 exactly like WeChat's."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ledger.wechatpay import aead
from ledger.wechatpay.keys import PUBLIC_KEY_ID_PREFIX, KeyStore, PlatformCertificate
from ledger.wechatpay.sandbox import resources
from ledger.wechatpay.sandbox.resources import Party
from ledger.wechatpay.signature import SIGNATURE_TYPE, build_message, new_nonce, sign

__all__ = [
    "Delivery",
    "NotificationFactory",
    "compact_json",
    "original_type_of",
    "random_apiv3_key",
    "random_certificate_serial",
    "random_public_key_id",
    "serial_hex",
]

CST = dt.timezone(dt.timedelta(hours=8))
SUMMARIES = {
    "TRANSACTION.SUCCESS": "支付成功",
    "REFUND.SUCCESS": "退款成功",
    "REFUND.CLOSED": "退款关闭",
    "REFUND.ABNORMAL": "退款异常",
    "COMPLAINT.CREATE": "投诉单创建通知",
    "COMPLAINT.STATE_CHANGE": "投诉单状态变更通知",
    "PROFITSHARING.SUCCESS": "分账",
    "PROFITSHARING.RETURN": "分账回退",
}
# [next: Other notification types]: the `original_type` (and the sandbox's AAD) of each family of event types.
_ORIGINAL_TYPES = {
    "TRANSACTION": "transaction",
    "REFUND": "refund",
    "COMPLAINT": "complaint",
    "PROFITSHARING": "profitsharing",
    "MCHTRANSFER": "mch_payment",
}


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def random_apiv3_key() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def random_public_key_id() -> str:
    """`PUB_KEY_ID_` and 34 digits, like WeChat's ([protocol: Which key signed it]'s example)."""
    return f"{PUBLIC_KEY_ID_PREFIX}{secrets.randbelow(10**34):034d}"


def random_certificate_serial() -> int:
    """A serial that is 40 hex digits long without padding (below 2**159, as X.509 allows)."""
    return 16**39 + secrets.randbelow(2**159 - 16**39)


def serial_hex(serial: int) -> str:
    """A certificate serial as WeChat writes it: 40 uppercase hex digits, leading zeros kept."""
    return format(serial, "040X")


def original_type_of(event_type: str) -> str:
    family = event_type.partition(".")[0]
    return _ORIGINAL_TYPES.get(family, family.lower())


def _self_signed_certificate(key: rsa.RSAPrivateKey, serial: int, days: int, start: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payledger test platform certificate")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Delivery:
    """One HTTP delivery of a notification: what WeChat would POST."""

    body: bytes
    headers: dict[str, str]
    notification_id: str


@dataclass
class NotificationFactory:
    """WeChat Pay's signing side, with generated keys."""

    mchid: str = "1900000109"
    appid: str = "wxd678efh567hg6787"
    apiv3_key: str = field(default_factory=random_apiv3_key)
    public_key_id: str = field(default_factory=random_public_key_id)
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    certificate: x509.Certificate | None = None

    def with_certificate(
        self, days: int = 365, start: dt.datetime | None = None, *, serial: int | None = None
    ) -> NotificationFactory:
        """Also act as a platform certificate (same key), selectable by its serial (random unless given)."""
        start = start or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        serial = random_certificate_serial() if serial is None else serial
        self.certificate = _self_signed_certificate(self.private_key, serial, days, start)
        return self

    @property
    def certificate_serial(self) -> str:
        """40 uppercase hex digits, leading zeros kept ([protocol: Which key signed it])."""
        if self.certificate is None:
            raise ValueError("no certificate: call with_certificate() first")
        return serial_hex(self.certificate.serial_number)

    @property
    def public_key_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def key_store(self) -> KeyStore:
        certs = []
        if self.certificate is not None:
            pem = self.certificate.public_bytes(serialization.Encoding.PEM)
            certs.append(PlatformCertificate.from_pem(pem))
        return KeyStore({self.public_key_id: self.private_key.public_key()}, certs)

    def write_keys(self, folder: Path) -> dict[str, str]:
        """Write the public key (and certificate) files; return the matching environment."""
        folder.mkdir(parents=True, exist_ok=True)
        pub = folder / "wechatpay_public_key.pem"
        pub.write_bytes(self.public_key_pem)
        env = {
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_APPID": self.appid,
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PUBLIC_KEY_ID": self.public_key_id,
            "WECHATPAY_PUBLIC_KEY_FILE": str(pub),
        }
        if self.certificate is not None:
            cert_dir = folder / "platform_certs"
            cert_dir.mkdir(exist_ok=True)
            (cert_dir / f"{self.certificate_serial}.pem").write_bytes(
                self.certificate.public_bytes(serialization.Encoding.PEM)
            )
            env["WECHATPAY_PLATFORM_CERT_DIR"] = str(cert_dir)
        return env

    # -- resources ([protocol: The payment resource; The refund resource]) -----------------------------------

    def transaction(
        self,
        out_trade_no: str,
        total: int,
        *,
        transaction_id: str | None = None,
        success_time: str = "2026-11-27T10:34:56+08:00",
        mchid: str | None = None,
        appid: str | None = None,
        sub_mchid: str | None = None,
        sub_appid: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A paid transaction (`fields`: any other keyword of `resources.transaction`); with `sub_mchid`, the
        partner shape (`mchid`/`appid` are then the provider's)."""
        return resources.transaction(
            Party(mchid or self.mchid, appid or self.appid, sub_mchid, sub_appid),
            out_trade_no,
            total,
            transaction_id=transaction_id or f"42000{secrets.randbelow(10**23):023d}",
            success_time=success_time,
            **fields,
        )

    def refund(
        self,
        out_trade_no: str,
        out_refund_no: str,
        refund: int,
        total: int,
        *,
        refund_status: str = "SUCCESS",
        transaction_id: str = "4200000000002104083200000488",
        refund_id: str | None = None,
        mchid: str | None = None,
        sub_mchid: str | None = None,
        success_time: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A refund resource (`fields`: any other keyword of `resources.refund`); `success_time` (a fixed one
        unless given) only when SUCCESS; with `sub_mchid`, the partner shape."""
        if refund_status == "SUCCESS" and success_time is None:
            success_time = "2026-11-27T11:00:00+08:00"
        return resources.refund(
            Party(mchid or self.mchid, self.appid, sub_mchid),
            out_trade_no,
            out_refund_no,
            refund,
            total,
            transaction_id=transaction_id,
            refund_id=refund_id or f"5030{secrets.randbelow(10**25):025d}",
            refund_status=refund_status,
            success_time=success_time if refund_status == "SUCCESS" else None,
            **fields,
        )

    # -- envelopes and deliveries ([protocol: The envelope; The signed message]) -----------------------------

    def envelope(
        self,
        resource: dict[str, Any],
        event_type: str = "TRANSACTION.SUCCESS",
        *,
        notification_id: str | None = None,
        nonce: str | None = None,
        associated_data: str | None = None,
        apiv3_key: str | None = None,
        original_type: str | None = None,
        summary: str | None = None,
        create_time: str | None = None,
    ) -> bytes:
        """The compact envelope (D2's key order) around the encrypted `resource`; the AAD is the
        `original_type` unless given, which follows the event type ([next: Other notification types]) unless given."""
        original_type = original_type or original_type_of(event_type)
        aad = original_type if associated_data is None else associated_data
        resource_nonce = nonce or new_nonce(12)
        key = (apiv3_key or self.apiv3_key).encode()
        return compact_json(
            {
                "id": notification_id or str(uuid.uuid4()),
                "create_time": create_time or dt.datetime.now(CST).replace(microsecond=0).isoformat(),
                "resource_type": "encrypt-resource",
                "event_type": event_type,
                "summary": SUMMARIES.get(event_type, "通知") if summary is None else summary,
                "resource": {
                    "original_type": original_type,
                    "algorithm": aead.ALGORITHM,
                    "ciphertext": aead.encrypt(key, resource_nonce, aad, compact_json(resource)),
                    "associated_data": aad,
                    "nonce": resource_nonce,
                },
            }
        )

    def sign_headers(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
        serial: str | None = None,
    ) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or new_nonce(32)
        return {
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": sign(self.private_key, build_message(ts, nonce, body)),
            "Wechatpay-Serial": serial or self.public_key_id,
            "Wechatpay-Signature-Type": SIGNATURE_TYPE,
            "Request-ID": f"08{secrets.token_hex(15).upper()}",
        }

    def deliver(self, body: bytes, **kwargs: Any) -> Delivery:
        """Sign `body` as a fresh delivery (WeChat re-signs every retry)."""
        envelope_id = json.loads(body)["id"]
        return Delivery(body=body, headers=self.sign_headers(body, **kwargs), notification_id=envelope_id)

    def paid(self, out_trade_no: str, total: int, **kwargs: Any) -> Delivery:
        return self.deliver(self.envelope(self.transaction(out_trade_no, total, **kwargs)))

    def refunded(
        self, out_trade_no: str, out_refund_no: str, refund: int, total: int, status: str = "SUCCESS"
    ) -> Delivery:
        resource = self.refund(out_trade_no, out_refund_no, refund, total, refund_status=status)
        return self.deliver(self.envelope(resource, f"REFUND.{status}"))

    def probe(self, delivery: Delivery) -> Delivery:
        """The same delivery with a `WECHATPAY/SIGNTEST/` probe signature ([protocol: Signature probes])."""
        headers = dict(delivery.headers)
        headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + secrets.token_urlsafe(24)
        return Delivery(delivery.body, headers, delivery.notification_id)
