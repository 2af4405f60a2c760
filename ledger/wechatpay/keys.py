"""The keys that may sign WeChat Pay notifications and responses, selected by serial ([protocol: Which key
signed it; Comparing serials]).

Two sources may be configured at once during the public-key migration: a WeChat Pay public key
with its ``PUB_KEY_ID_...`` id, and a folder of platform certificates keyed by their serial.
Loading happens at start-up; a lookup never touches the network or the disk.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ledger.errors import ConfigurationError, UnknownSerial, VerificationFailed

__all__ = ["PUBLIC_KEY_ID_PREFIX", "KeyStore", "PlatformCertificate", "normalise_serial"]

PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"


def normalise_serial(serial: str) -> str:
    """Public-key ids as given; certificate serials as uppercase hex without leading zeros."""
    serial = serial.strip()
    if serial.startswith(PUBLIC_KEY_ID_PREFIX):
        return serial
    try:
        return format(int(serial, 16), "X")
    except ValueError:
        return serial


@dataclass(frozen=True)
class PlatformCertificate:
    serial: str
    public_key: RSAPublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    source: str
    certificate: x509.Certificate = field(repr=False, compare=False)

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "") -> PlatformCertificate:
        cert = x509.load_pem_x509_certificate(pem)
        key = cert.public_key()
        if not isinstance(key, RSAPublicKey):
            raise ValueError("not an RSA certificate")
        return cls(
            serial=format(cert.serial_number, "X"),
            public_key=key,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            source=source,
            certificate=cert,
        )

    def valid_at(self, now: float) -> bool:
        return self.not_before.timestamp() <= now <= self.not_after.timestamp()


class KeyStore:
    """Public keys by normalised serial; immutable once built."""

    def __init__(
        self,
        public_keys: dict[str, RSAPublicKey] | None = None,
        certificates: Iterable[PlatformCertificate] = (),
    ) -> None:
        self._public_keys = dict(public_keys or {})
        self._certificates = {c.serial: c for c in certificates}

    @classmethod
    def load(
        cls,
        *,
        public_key_id: str | None,
        public_key_file: Path | None,
        platform_cert_dir: Path | None,
        setting_prefix: str = "WECHATPAY_",
    ) -> KeyStore:
        public_keys: dict[str, RSAPublicKey] = {}
        if public_key_id is not None and public_key_file is not None:
            public_keys[normalise_serial(public_key_id)] = load_public_key_file(
                public_key_file, f"{setting_prefix}PUBLIC_KEY_FILE"
            )
        certificates: list[PlatformCertificate] = []
        if platform_cert_dir is not None:
            certificates = load_certificate_dir(platform_cert_dir, f"{setting_prefix}PLATFORM_CERT_DIR")
        return cls(public_keys, certificates)

    @property
    def serials(self) -> list[str]:
        return sorted([*self._public_keys, *self._certificates])

    @property
    def public_keys(self) -> dict[str, RSAPublicKey]:
        return dict(self._public_keys)

    @property
    def certificates(self) -> list[PlatformCertificate]:
        return sorted(self._certificates.values(), key=lambda c: c.not_after)

    def __len__(self) -> int:
        return len(self._public_keys) + len(self._certificates)

    def lookup(self, serial: str, now: float) -> tuple[str, RSAPublicKey]:
        key_id = normalise_serial(serial)
        if key_id in self._public_keys:
            return key_id, self._public_keys[key_id]
        cert = self._certificates.get(key_id)
        if cert is None:
            raise UnknownSerial(key_id)
        if not cert.valid_at(now):
            raise VerificationFailed(f"certificate {key_id} not valid now", reason="certificate expired")
        return key_id, cert.public_key


def load_public_key_file(path: Path, setting: str) -> RSAPublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigurationError(setting, f"{path} is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigurationError(setting, f"{path} is not an RSA public key")
    return key


def load_certificate_dir(folder: Path, setting: str) -> list[PlatformCertificate]:
    if not folder.is_dir():
        raise ConfigurationError(setting, f"{folder} is not a directory")
    certificates = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in {".pem", ".crt", ".cer"}:
            continue
        try:
            certificates.append(PlatformCertificate.from_pem(path.read_bytes(), str(path)))
        except (OSError, ValueError):
            raise ConfigurationError(setting, f"{path} is not a PEM RSA certificate") from None
    return certificates
