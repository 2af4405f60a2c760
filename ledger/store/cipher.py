"""Encryption at rest of event states, with key rotation (`LEDGER_ENCRYPTION_KEYS`).

The setting is comma-separated base64 AES-256 keys, newest first: the first encrypts, all
decrypt. A stored state is ``MAGIC ‖ key id ‖ nonce ‖ AES-256-GCM(state)``; the key id is a
fingerprint of the key (safe to print), so a state names the key it needs and a missing key is
a clear error rather than garbage. States without the magic prefix were written while
encryption was off and are read as they are, so it can be switched on for an existing ledger.
The cipher is always installed (`ledger.store.backends.persistence_env`): with no keys it writes
plaintext and still explains an encrypted state it cannot read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Cipher

from ledger.errors import ConfigurationError, EventUndecryptable

__all__ = ["MAGIC", "SETTING", "RotatingAESCipher", "key_id", "parse_keys", "stored_key_id"]

SETTING = "LEDGER_ENCRYPTION_KEYS"
MAGIC = b"\x00PLE1"  # a JSON state never starts with NUL
_ID_BYTES = 8
_NONCE_BYTES = 12
_HEADER = len(MAGIC) + _ID_BYTES


def parse_keys(raw: str | None) -> tuple[bytes, ...]:
    """The keys of the setting, newest first; a ConfigurationError that never shows a key."""
    if raw is None or not raw.strip():
        return ()
    keys: list[bytes] = []
    parts = [part.strip() for part in raw.split(",")]
    for n, part in enumerate(parts, 1):
        where = f"key {n} of {len(parts)}"
        try:
            key = base64.b64decode(part.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ConfigurationError(SETTING, f"{where} is not base64") from None
        if len(key) != 32:
            raise ConfigurationError(SETTING, f"{where} is {len(key)} bytes; AES-256 keys are 32 bytes")
        if key in keys:
            raise ConfigurationError(SETTING, f"{where} is listed twice")
        keys.append(key)
    return tuple(keys)


def key_id(key: bytes) -> str:
    """A key's public fingerprint (hex), as stored in front of each state it encrypts."""
    return hashlib.sha256(b"payledger key id\x00" + key).digest()[:_ID_BYTES].hex()


def stored_key_id(state: bytes) -> str | None:
    """The id of the key a stored state needs; None for a plaintext state."""
    return state[len(MAGIC) : _HEADER].hex() if state.startswith(MAGIC) else None


class RotatingAESCipher(Cipher):
    """The library's `Cipher` interface over AES-256-GCM (`cryptography`), several keys."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        keys = parse_keys(environment.get(SETTING))
        self._keys = {bytes.fromhex(key_id(k)): AESGCM(k) for k in keys}
        self._current = next(iter(self._keys.items()), None)

    def __repr__(self) -> str:
        return f"RotatingAESCipher(key_ids={[k.hex() for k in self._keys]})"

    @property
    def key_ids(self) -> list[str]:
        """Configured key ids, the encrypting one first."""
        return [k.hex() for k in self._keys]

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._current is None:
            return plaintext
        kid, aes = self._current
        nonce = os.urandom(_NONCE_BYTES)
        header = MAGIC + kid
        return header + nonce + aes.encrypt(nonce, plaintext, header)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if not ciphertext.startswith(MAGIC):
            return ciphertext
        header, kid = ciphertext[:_HEADER], ciphertext[len(MAGIC) : _HEADER]
        aes = self._keys.get(kid)
        if aes is None:
            raise EventUndecryptable(f"encrypted with key {kid.hex()}, which is not in {SETTING}", kid.hex())
        nonce = ciphertext[_HEADER : _HEADER + _NONCE_BYTES]
        try:
            return aes.decrypt(nonce, ciphertext[_HEADER + _NONCE_BYTES :], header)
        except (InvalidTag, ValueError):
            raise EventUndecryptable(
                f"does not decrypt with key {kid.hex()}: the stored bytes were altered", kid.hex()
            ) from None
