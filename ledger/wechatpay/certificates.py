"""Platform certificates: download, decrypt, verify, store, rotate ([protocol: Which key signed it;
Downloading platform certificates]).

The manager holds the verification keys of one merchant as an immutable `KeyStore` that is
swapped whole on refresh, so request paths read it without locks and never touch the network.
Every currently valid certificate is kept: WeChat starts signing with a new certificate up to
5 days before the old one expires, and either may sign for a while.

Trust: a download is accepted only if its signature verifies with a certificate (or public
key) we already trust; we ask WeChat to sign with one (`Wechatpay-Serial` request header).
Only when no certificate is trusted yet is the first download accepted on first use, verified
with the certificates it carries, and the log says so.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ledger.errors import LedgerError, ResponseUntrusted, VerificationFailed, WeChatPayError
from ledger.wechatpay import aead
from ledger.wechatpay.client import WeChatPayClient, WeChatPayResponse
from ledger.wechatpay.keys import KeyStore, PlatformCertificate, load_certificate_dir, normalise_serial
from ledger.wechatpay.signature import SignatureHeaders, verify_signed_message

__all__ = ["CertificateManager", "ClientFactory"]

log = logging.getLogger("ledger.certificates")

# (Wechatpay-Serial to request, keys to verify with) -> a client for one download.
ClientFactory = Callable[[str | None, Callable[[], KeyStore]], WeChatPayClient]


class CertificateManager:
    def __init__(
        self,
        *,
        folder: Path,
        apiv3_key: bytes,
        public_keys: dict[str, RSAPublicKey] | None = None,
        client_factory: ClientFactory | None = None,
        min_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._folder = folder
        self._apiv3_key = apiv3_key
        self._public_keys = dict(public_keys or {})
        self._client_factory = client_factory
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self._refreshing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self._keys = KeyStore(self._public_keys, load_certificate_dir(folder, "WECHATPAY_PLATFORM_CERT_DIR"))

    def keys(self) -> KeyStore:
        return self._keys

    def certificates(self) -> list[PlatformCertificate]:
        return self._keys.certificates

    # -- refresh -----------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Download, verify and store the platform certificates; returns the new serials."""
        if self._client_factory is None:
            raise WeChatPayError("no merchant key configured", reason="certificate download needs the merchant API key")
        with self._lock:
            self._last_attempt = self._clock()
        now = self._clock()
        trusted = [c for c in self._keys.certificates if c.valid_at(now)]
        if trusted:
            # Ask WeChat to sign with the certificate we trust that lives longest.
            signer = trusted[-1].serial
            with self._client_factory(signer, self.keys) as client:
                response = client.download_certificates(verify=True)
            downloaded = self._decrypt(response)
        else:
            with self._client_factory(None, self.keys) as client:
                response = client.download_certificates(verify=False)
            downloaded = self._decrypt(response)
            self._verify_first_use(response, downloaded, now)
        new = [c for c in downloaded if c.serial not in set(self._keys.serials) and c.valid_at(now)]
        for cert in new:
            try:
                self._write(cert)
            except OSError as exc:
                # Still trusted in memory; only the copy on disk for the next start is missing.
                log.error("cannot write certificate %s to %s: %s", cert.serial, self._folder, exc.strerror)
        certificates = {c.serial: c for c in [*self._keys.certificates, *downloaded]}
        self._keys = KeyStore(self._public_keys, certificates.values())
        self.refreshes += 1
        if new:
            log.info("platform certificates added: %s", ", ".join(c.serial for c in new))
        return [c.serial for c in new]

    def _decrypt(self, response: WeChatPayResponse) -> list[PlatformCertificate]:
        items = (response.data or {}).get("data")
        if not isinstance(items, list):
            raise ResponseUntrusted("certificate response has no data list")
        certificates = []
        for item in items:
            encrypted = item.get("encrypt_certificate") if isinstance(item, dict) else None
            if not isinstance(encrypted, dict):
                raise ResponseUntrusted("certificate entry has no encrypt_certificate")
            try:
                pem = aead.decrypt(
                    self._apiv3_key,
                    str(encrypted.get("nonce", "")),
                    str(encrypted.get("associated_data", "")),
                    str(encrypted.get("ciphertext", "")),
                )
                cert = PlatformCertificate.from_pem(pem, "download")
            except (LedgerError, ValueError):
                raise ResponseUntrusted("a downloaded certificate does not decrypt or parse") from None
            if cert.serial != normalise_serial(str(item.get("serial_no", ""))):
                raise ResponseUntrusted("serial_no does not match the certificate")
            certificates.append(cert)
        return certificates

    def _verify_first_use(self, response: WeChatPayResponse, downloaded: list[PlatformCertificate], now: float) -> None:
        try:
            verify_signed_message(
                SignatureHeaders.from_headers(response.headers),
                response.body,
                KeyStore(self._public_keys, downloaded),
                now,
            )
        except VerificationFailed:
            raise ResponseUntrusted("first certificate download does not verify with itself") from None
        log.warning(
            "no platform certificate was trusted yet: accepted %s on first use (trust on first use)",
            ", ".join(c.serial for c in downloaded),
        )

    def _write(self, cert: PlatformCertificate) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        pem = cert.certificate.public_bytes(serialization.Encoding.PEM)
        fd, tmp = tempfile.mkstemp(dir=self._folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(tmp, self._folder / f"{cert.serial}.pem")

    # -- background ----------------------------------------------------------------------------

    def request_refresh(self, serial: str) -> bool:
        """An unknown serial was seen: refresh in the background, at most once per interval."""
        with self._lock:
            if self._refreshing or self._clock() - self._last_attempt < self._min_interval:
                return False
            self._refreshing = True
            self._last_attempt = self._clock()
        log.info("unknown serial %s: refreshing platform certificates in the background", serial[:64])
        threading.Thread(target=self._refresh_quietly, name="cert-refresh", daemon=True).start()
        return True

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except WeChatPayError as exc:
            log.warning("platform certificate refresh failed: %s", exc.reason)
        finally:
            with self._lock:
                self._refreshing = False

    def start(self, interval: float = 3600.0) -> None:
        """Refresh every `interval` seconds in a daemon thread (JAVA SDK: hourly)."""

        def loop() -> None:
            while not self._stop.wait(interval):
                self._refresh_quietly()

        self._thread = threading.Thread(target=loop, name="cert-refresh-timer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
