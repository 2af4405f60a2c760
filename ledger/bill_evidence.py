"""How a downloaded bill becomes chunks of evidence, and chunks become the bill again ([protocol: Keeping a bill]).

A bill is stored gzip-compressed (level 6), the gzip stream cut into pieces of at most 1 MiB,
each base64 in one `BillStatement.ChunkStored` event: a 300 MB trade bill is some 40 events, none
of them large for either store. Both directions stream: the file is read, hashed and compressed
1 MiB at a time, and reading back inflates each chunk in pieces of at most 1 MiB, so a stored
bill is never held decompressed in memory (nor is a forged chunk that would inflate to gigabytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ledger.errors import BillHashMismatch, StoredBillCorrupt

__all__ = ["CHUNK", "STORED_CHUNK", "BillInflater", "BillState", "BillStatus", "check_bill_file", "compress_bill"]

CHUNK = 1 << 20
"""The most bytes read, or inflated, per step."""
STORED_CHUNK = 128 << 10
"""The most gzip bytes per stored chunk event: small enough that a page of the log made only of
chunk events (`payledger verify` reads `ledger.audit.integrity.PAGE` events at a time) stays
within a couple of hundred MB."""
_LEVEL = 6
_GZIP = 16 + zlib.MAX_WBITS


def check_bill_file(path: Path, *, sha1: str, size: int) -> None:
    """`BillHashMismatch` unless the file is the bill that was downloaded and verified (`sha1` and
    `size` are the download's): checked before any of it is stored, so what is stored always matches
    its `Fetched`."""
    digest = hashlib.sha1(usedforsecurity=False)
    read = 0
    with path.open("rb") as file:
        while piece := file.read(CHUNK):
            digest.update(piece)
            read += len(piece)
    if digest.hexdigest() != sha1.lower() or read != size:
        raise BillHashMismatch(f"bill file: {read} bytes with SHA-1 {digest.hexdigest()}, not the downloaded bill")


def compress_bill(path: Path) -> Iterator[str]:
    """The file's bytes as stored chunks (base64 of at most `STORED_CHUNK` gzip bytes each), as they
    are made: a few MiB in memory whatever the bill's size. The same file gives the same chunks (the
    gzip header has no time in it), so a keep that stopped half-way can be checked and resumed."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP)
    pending = bytearray()
    with path.open("rb") as file:
        while piece := file.read(CHUNK):
            pending += compressor.compress(piece)
            while len(pending) >= STORED_CHUNK:
                yield base64.b64encode(pending[:STORED_CHUNK]).decode("ascii")
                del pending[:STORED_CHUNK]
    pending += compressor.flush()
    for start in range(0, len(pending), STORED_CHUNK):
        yield base64.b64encode(pending[start : start + STORED_CHUNK]).decode("ascii")


class BillInflater:
    """Feed it a stored bill's chunks in order; it yields the bill's bytes, at most `CHUNK` at a time.

    `StoredBillCorrupt` when a chunk is not base64, the stream is not gzip, goes on past its end,
    or (at `finish`) stops short. `sha1` and `size` are those of what it has yielded so far.
    """

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(_GZIP)
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self.size = 0

    @property
    def sha1(self) -> str:
        return self._sha1.hexdigest()

    def feed(self, data: str) -> Iterator[bytes]:
        try:
            compressed = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise StoredBillCorrupt("a stored chunk is not base64") from None
        try:
            while compressed:
                if self._inflate.eof:
                    raise StoredBillCorrupt("stored chunks go on past the end of the gzip stream")
                out = self._inflate.decompress(compressed, CHUNK)
                if out:
                    yield self._counted(out)
                compressed = self._inflate.unconsumed_tail
            if self._inflate.unused_data:
                raise StoredBillCorrupt("stored chunks go on past the end of the gzip stream")
        except zlib.error:
            raise StoredBillCorrupt("stored chunks are not a valid gzip stream") from None

    def finish(self) -> Iterator[bytes]:
        """What the stream still holds; then it must have ended, exactly."""
        try:
            rest = self._inflate.flush()
        except zlib.error:
            raise StoredBillCorrupt("stored chunks are not a valid gzip stream") from None
        if rest:
            yield self._counted(rest)
        if not self._inflate.eof:
            raise StoredBillCorrupt("stored chunks stop short of the end of the gzip stream")
        if self._inflate.unused_data:
            raise StoredBillCorrupt("stored chunks go on past the end of the gzip stream")

    def _counted(self, data: bytes) -> bytes:
        self._sha1.update(data)
        self.size += len(data)
        return data


BillState = Literal["absent", "stored", "empty"]


@dataclass(frozen=True)
class BillStatus:
    """What is kept of one bill: nothing, the bill (with its SHA-1 and size), or the fact that the day was empty."""

    state: BillState
    sha1: str | None = None
    size: int | None = None
