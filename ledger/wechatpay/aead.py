"""AEAD_AES_256_GCM as WeChat Pay uses it for notification resources and certificates ([protocol: Decrypting
the resource]).

Key: the APIv3 key's bytes. Nonce and associated data: the UTF-8 bytes of the strings as
given. Ciphertext: base64 of ciphertext ‖ 16-byte tag.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import DecryptionFailed

__all__ = ["ALGORITHM", "decrypt", "encrypt"]

ALGORITHM = "AEAD_AES_256_GCM"


def decrypt(key: bytes, nonce: str, associated_data: str, ciphertext: str) -> bytes:
    """Decrypt and authenticate; any failure is `DecryptionFailed`, never another exception."""
    try:
        data = base64.b64decode(ciphertext.encode("ascii"), validate=True)
        return AESGCM(key).decrypt(nonce.encode(), data, associated_data.encode())
    except (InvalidTag, binascii.Error, ValueError, UnicodeEncodeError, TypeError, OverflowError):
        raise DecryptionFailed("AES-GCM authentication failed") from None


def encrypt(key: bytes, nonce: str, associated_data: str, plaintext: bytes) -> str:
    return base64.b64encode(AESGCM(key).encrypt(nonce.encode(), plaintext, associated_data.encode())).decode()
