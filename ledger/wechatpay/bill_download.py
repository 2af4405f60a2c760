"""A daily bill's ticket and its download: gunzip as it streams, SHA-1 the result, compare ([protocol: Daily bills]).

The apply answer ([protocol: Applying for a bill]) is signed and verified like any other; the file
([protocol: Downloading a bill]) is not signed, so its only guarantee is the SHA-1 of the *decompressed*
bytes against the ticket's `hash_value`. `BillWriter` checks that while the bytes go to the caller's
file, so memory stays flat whatever the bill's size; a caller that gets `BillDownloadFailed` (or its
`BillHashMismatch`) must throw away what was written. `download_bill_to_temp` does that for it.

The download URL carries a token that lets anyone with the merchant's signature fetch the bill:
it is kept out of `repr`, logs and error messages, and never stored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from ledger.errors import BillDownloadFailed, BillHashMismatch, ResponseUntrusted

__all__ = ["BillDownload", "BillTicket", "BillWriter", "download_bill_to_temp", "ticket_from_answer"]

_CHUNK = 1 << 20  # the most decompressed bytes produced per step: a gzip bomb cannot fill memory


@dataclass(frozen=True)
class BillTicket:
    """What an apply answer grants: a short-lived URL (seconds to minutes), and the expected SHA-1.

    `gzip` says whether the ticket was asked with `tar_type=GZIP`, so the file is a gzip stream."""

    download_url: str = field(repr=False)
    hash_type: str
    hash_value: str
    gzip: bool = True


@dataclass(frozen=True)
class BillDownload:
    """A verified download: the SHA-1 (lowercase hex) and the size of the decompressed bill."""

    sha1: str
    size: int


def ticket_from_answer(data: dict[str, Any] | None, *, gzip: bool) -> BillTicket:
    """The ticket in a verified apply answer; `ResponseUntrusted` when it is not what WeChat sends."""
    data = data or {}
    url, hash_type, hash_value = data.get("download_url"), data.get("hash_type"), data.get("hash_value")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ResponseUntrusted("bill apply answer: no usable download_url")
    if hash_type != "SHA1":
        raise ResponseUntrusted("bill apply answer: hash_type is not SHA1")
    if not isinstance(hash_value, str) or len(hash_value) != 40 or not _is_hex(hash_value):
        raise ResponseUntrusted("bill apply answer: hash_value is not a SHA-1")
    return BillTicket(url, hash_type, hash_value.lower(), gzip)


def _is_hex(value: str) -> bool:
    return value.isascii() and all(c in "0123456789abcdefABCDEF" for c in value)


class BillWriter:
    """Feed it the downloaded bytes as they come; it writes the bill to `into` and checks it at `finish`."""

    def __init__(self, ticket: BillTicket, into: BinaryIO | IO[bytes]) -> None:
        self._expected = ticket.hash_value.lower()
        self._into = into
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._size = 0
        self._inflate: zlib._Decompress | None = _gunzip() if ticket.gzip else None

    def feed(self, data: bytes) -> None:
        if self._inflate is None:
            self._emit(data)
            return
        try:
            while data:
                if self._inflate.eof:
                    # Another gzip member follows, as `gzip` reads them (WeChat sends one).
                    self._inflate = _gunzip()
                self._emit(self._inflate.decompress(data, _CHUNK))
                data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
        except zlib.error:
            raise BillDownloadFailed("bill download: not a valid gzip stream") from None

    def finish(self) -> BillDownload:
        """The verified result; `BillDownloadFailed` if the stream stopped short, `BillHashMismatch` if the
        SHA-1 differs."""
        if self._inflate is not None:
            try:
                self._emit(self._inflate.flush())
            except zlib.error:
                raise BillDownloadFailed("bill download: not a valid gzip stream") from None
            if not self._inflate.eof:
                raise BillDownloadFailed("bill download: the gzip stream stops short")
        sha1 = self._sha1.hexdigest()
        if sha1 != self._expected:
            raise BillHashMismatch(f"bill download: SHA-1 {sha1} is not the announced {self._expected}")
        return BillDownload(sha1, self._size)

    def _emit(self, data: bytes) -> None:
        if data:
            self._sha1.update(data)
            self._size += len(data)
            self._into.write(data)


def _gunzip() -> zlib._Decompress:
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


def download_bill_to_temp(
    download: Callable[[BillTicket, BinaryIO], BillDownload], ticket: BillTicket, *, folder: Path | None = None
) -> tuple[Path, BillDownload]:
    """Download into a new file in `folder` (the system's temp folder by default) and return its path,
    which the caller then owns; on any failure the file is deleted before the error is raised.

    `download` is `WeChatPayClient.download_bill`."""
    fd, name = tempfile.mkstemp(prefix="wechatpay-bill-", suffix=".csv", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as into:
            result = download(ticket, into)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, result
