"""A daily bill kept as evidence ([protocol: Keeping a bill]), on both stores: stored once per
(mchid, bill day, kind), read back byte for byte and streamed, an empty day kept, and `payledger
verify` re-hashing what is kept ([protocol: Daily bills]: the SHA-1 is of the decompressed bill)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.application import Ledger, build_ledger
from ledger.audit.integrity import check_all
from ledger.bill_evidence import CHUNK, STORED_CHUNK
from ledger.errors import BillHashMismatch, BillNotStored, InvalidRequest, StoredBillCorrupt
from ledger.statements import BillStatement, bill_statement_id
from ledger.store.cipher import SETTING
from tests.support.audit import problems
from tests.support.cli import clean_env, payledger
from tests.support.constants import MCHID, ROOT
from tests.support.tamper import edit_json, edit_state, rechain

BILLS = ROOT.parent / "shared" / "vectors" / "bills"
SAMPLE = BILLS / "sample.ALL.csv"  # the constructed sample trade bill: 3 rows ([protocol: Daily bills])
FIXTURE = BILLS / "public-fixture.ALL.csv"  # the public 45-row fixture
SAMPLE_SHA1 = "5e6c27bfe03881ce667112778b67257b318e1851"
FIXTURE_SHA1 = "9bb6cd819be348f17a9cbcedddc8eb62fefbd790"
DAY = dt.date(2024, 5, 20)


def keep(ledger: Ledger, path: Path, day: dt.date = DAY, kind: str = "trade") -> bool:
    data = path.read_bytes()
    return ledger.store_bill(MCHID, day, kind, path, hashlib.sha1(data).hexdigest(), len(data))


def read_back(ledger: Ledger, day: dt.date = DAY, kind: str = "trade") -> bytes:
    return b"".join(ledger.open_stored_bill(MCHID, day, kind))


def event_count(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def test_the_sample_and_the_public_fixture_are_kept_and_read_back_byte_for_byte(
    ledger_factory: Callable[[], Ledger],
) -> None:
    ledger = ledger_factory()
    assert ledger.bill_status(MCHID, DAY, "trade").state == "absent"
    assert keep(ledger, SAMPLE) is True
    assert keep(ledger, FIXTURE, DAY + dt.timedelta(days=1)) is True
    assert keep(ledger, FIXTURE, DAY, "fundflow") is True  # another kind of the same day: its own stream

    restarted = ledger_factory()  # what is kept is read from the store, not from memory
    assert read_back(restarted) == SAMPLE.read_bytes()
    assert read_back(restarted, DAY + dt.timedelta(days=1)) == FIXTURE.read_bytes()
    status = restarted.bill_status(MCHID, DAY, "trade")
    assert (status.state, status.sha1, status.size) == ("stored", SAMPLE_SHA1, SAMPLE.stat().st_size)
    assert restarted.bill_status(MCHID, DAY, "fundflow").sha1 == FIXTURE_SHA1
    history = restarted.history(bill_statement_id(MCHID, DAY, "trade"))
    assert [e["type"] for e in history] == ["Opened", "ChunkStored", "Fetched"]
    assert history[0]["data"] == {"mchid": MCHID, "bill_date": "2024-05-20", "kind": "trade"}
    # The chunk is the bill gzip-compressed, as any gzip reader opens it.
    assert gzip.decompress(base64.b64decode(history[1]["data"]["data"])) == SAMPLE.read_bytes()


def test_keeping_the_same_bill_again_changes_nothing(ledger_factory: Callable[[], Ledger], tmp_path: Path) -> None:
    ledger = ledger_factory()
    assert keep(ledger, SAMPLE)
    before = event_count(ledger)
    assert keep(ledger, SAMPLE) is False
    assert keep(ledger_factory(), SAMPLE) is False  # another process, the same answer
    # Another file for a kept day is refused too: what was kept first stays the evidence.
    assert keep(ledger, FIXTURE) is False
    assert ledger.store_empty_bill(MCHID, DAY, "trade") is False
    assert event_count(ledger) == before
    assert read_back(ledger) == SAMPLE.read_bytes()


def test_an_empty_day_is_kept_once_and_has_no_bill_to_read(ledger_factory: Callable[[], Ledger]) -> None:
    ledger = ledger_factory()
    assert ledger.store_empty_bill(MCHID, DAY, "fundflow") is True
    before = event_count(ledger)
    assert ledger.store_empty_bill(MCHID, DAY, "fundflow") is False
    assert keep(ledger, SAMPLE, DAY, "fundflow") is False  # NO_STATEMENT_EXIST is final
    assert event_count(ledger) == before
    assert ledger.bill_status(MCHID, DAY, "fundflow").state == "empty"
    assert ledger.bill_status(MCHID, DAY, "trade").state == "absent"
    for kind in ("fundflow", "trade"):
        with pytest.raises(BillNotStored):
            ledger.open_stored_bill(MCHID, DAY, kind)
    assert [e["type"] for e in ledger.history(bill_statement_id(MCHID, DAY, "fundflow"))] == ["Opened", "FoundEmpty"]


def test_a_file_that_is_not_the_downloaded_bill_and_an_unknown_kind_are_refused(
    ledger_factory: Callable[[], Ledger],
) -> None:
    ledger = ledger_factory()
    size = SAMPLE.stat().st_size
    with pytest.raises(BillHashMismatch):
        ledger.store_bill(MCHID, DAY, "trade", SAMPLE, FIXTURE_SHA1, size)
    with pytest.raises(BillHashMismatch):
        ledger.store_bill(MCHID, DAY, "trade", SAMPLE, SAMPLE_SHA1, size + 1)
    assert ledger.bill_status(MCHID, DAY, "trade").state == "absent" and event_count(ledger) == 0
    with pytest.raises(InvalidRequest):
        ledger.store_bill(MCHID, DAY, "ALL", SAMPLE, SAMPLE_SHA1, size)
    with pytest.raises(InvalidRequest):
        ledger.store_empty_bill(MCHID, DAY, "refund")
    # Upper-case hex (WeChat's hash_value is compared without regard to case) is kept lower-case.
    assert ledger.store_bill(MCHID, DAY, "trade", SAMPLE, SAMPLE_SHA1.upper(), size)
    assert ledger.bill_status(MCHID, DAY, "trade").sha1 == SAMPLE_SHA1


def _other_bill_chunk(state: dict[str, Any]) -> None:
    """Swap the chunk for a valid gzip stream of a different bill (one amount changed)."""
    altered = SAMPLE.read_bytes().replace(b"`88.00", b"`8.00", 1)
    state["data"] = base64.b64encode(gzip.compress(altered)).decode()


def test_verify_passes_on_a_kept_bill_and_reports_a_chunk_changed_in_the_store(
    ledger_factory: Callable[[], Ledger], database_url: str, merchant_env: dict[str, str]
) -> None:
    ledger = ledger_factory()
    keep(ledger, SAMPLE)
    ledger.store_empty_bill(MCHID, DAY, "fundflow")
    env = {**clean_env(), **merchant_env, "LEDGER_DATABASE_URL": database_url}
    clean = payledger("verify", "--all", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert check_all(ledger, {}).ok and check_all(ledger, {}).streams == 2

    stream = bill_statement_id(MCHID, DAY, "trade")
    edit_json(database_url, stream, 2, _other_bill_chunk)
    rechain(database_url, ledger, stream, 2)  # an attacker who recomputes the chain: only the SHA-1 tells
    assert problems(check_all(ledger, {})) == [("trade 2024-05-20", 3, "bill sha1 mismatch")]
    broken = payledger("verify", "--all", env=env)
    assert broken.returncode == 1
    assert f"BREAK bill trade 2024-05-20 (mchid {MCHID}) version 3: bill sha1 mismatch" in broken.stdout


def test_a_chunk_that_no_longer_inflates_is_reported(ledger_factory: Callable[[], Ledger], database_url: str) -> None:
    ledger = ledger_factory()
    keep(ledger, FIXTURE)
    stream = bill_statement_id(MCHID, DAY, "trade")
    edit_json(database_url, stream, 2, lambda s: s.update(data=base64.b64encode(b"not gzip").decode()))
    assert problems(check_all(ledger, {})) == [
        ("trade 2024-05-20", 2, "chain mismatch"),
        ("trade 2024-05-20", 2, "bill chunk 0 does not inflate: stored chunks are not a valid gzip stream"),
        ("trade 2024-05-20", 3, "bill sha1 mismatch (a chunk is broken)"),
    ]


def test_an_altered_chunk_in_an_encrypted_store_is_reported(database_url: str) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    ledger = build_ledger(database_url, {SETTING: key})
    try:
        keep(ledger, SAMPLE)
        assert read_back(ledger) == SAMPLE.read_bytes()
        assert check_all(ledger, {}).ok
        flip = lambda b: b[:-1] + bytes([b[-1] ^ 1])  # noqa: E731
        edit_state(database_url, bill_statement_id(MCHID, DAY, "trade"), 2, flip)
        found = problems(check_all(ledger, {}))
        assert [(version, problem.split(":")[0]) for _, version, problem in found] == [
            (2, "event does not decode"),
            (3, "bill sha1 mismatch (a chunk is broken)"),
        ]
    finally:
        ledger.close()


def _generated_bill(path: Path, size: int, seed: int = 7) -> None:
    """A trade bill of `size` bytes or more: the sample's header and rows with random ids."""
    lines = SAMPLE.read_bytes().split(b"\r\n")
    rows = lines[1:4]
    rng = random.Random(seed)
    with path.open("wb") as out:
        out.write(lines[0] + b"\r\n")
        written = 0
        while written < size:
            row = rows[rng.randrange(3)].replace(b"1234567890", rng.randbytes(5).hex().encode())
            row = row.replace(b"ORD20240520001", f"ORD{rng.randrange(10**12):012d}".encode())
            written += out.write(row + b"\r\n")
        out.write(b"\r\n".join(lines[4:]))


def test_a_30_mb_bill_is_kept_and_read_back_streamed(ledger_factory: Callable[[], Ledger], tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    _generated_bill(path, 30 * CHUNK)
    size = path.stat().st_size
    digest = hashlib.sha1()
    with path.open("rb") as file:
        while piece := file.read(CHUNK):
            digest.update(piece)
    ledger = ledger_factory()
    assert ledger.store_bill(MCHID, DAY, "trade", path, digest.hexdigest(), size)
    assert ledger.bill_status(MCHID, DAY, "trade").size == size

    tracemalloc.start()
    try:
        read = hashlib.sha1()
        total = largest = 0
        for piece in ledger.open_stored_bill(MCHID, DAY, "trade"):
            read.update(piece)
            total += len(piece)
            largest = max(largest, len(piece))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (read.hexdigest(), total) == (digest.hexdigest(), size)
    assert largest <= CHUNK
    # One chunk at a time: its stored state, its base64 text, its gzip bytes and a piece inflated
    # (some 5 MiB), whatever the bill's size; never the bill (30 MiB) nor all its chunks.
    assert peak < 10 * CHUNK < size // 3, f"reading back held {peak} bytes of a {size}-byte bill"
    stored: Any = ledger.repository.get(bill_statement_id(MCHID, DAY, "trade"))
    assert isinstance(stored, BillStatement) and stored.chunks > 1
    # Each chunk event holds at most STORED_CHUNK gzip bytes, so a page of the log stays bounded.
    events = ledger.recorder.select_events(bill_statement_id(MCHID, DAY, "trade"))
    chunk_events = [e for e in events if e.topic.endswith(".ChunkStored")]
    assert len(chunk_events) == stored.chunks
    sizes = [len(base64.b64decode(ledger.mapper.to_domain_event(e).data)) for e in chunk_events]
    assert max(sizes) <= STORED_CHUNK and sum(sizes) > STORED_CHUNK
    assert check_all(ledger, {}).ok


def _bill_file(tmp_path: Path, name: str, size: int, seed: int = 7) -> tuple[Path, str]:
    path = tmp_path / name
    _generated_bill(path, size, seed)
    return path, hashlib.sha1(path.read_bytes()).hexdigest()


def test_a_bill_is_appended_a_slice_at_a_time_with_its_hash_last(
    ledger_factory: Callable[[], Ledger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.application.KEEP_SLICE", 3)
    monkeypatch.setattr("ledger.bill_evidence.STORED_CHUNK", 16 << 10)  # more chunks of a small bill
    path, sha1 = _bill_file(tmp_path, "bill.csv", 4 * CHUNK)
    ledger = ledger_factory()
    saves: list[int] = []
    save = ledger.save
    monkeypatch.setattr(ledger, "save", lambda *a: saves.append(1) or save(*a))
    assert ledger.store_bill(MCHID, DAY, "trade", path, sha1, path.stat().st_size)

    stored: Any = ledger.repository.get(bill_statement_id(MCHID, DAY, "trade"))
    assert stored.chunks > 3
    assert len(saves) == -(-stored.chunks // 3) + 1  # a transaction per slice of three, then Fetched
    assert hashlib.sha1(read_back(ledger)).hexdigest() == sha1
    assert check_all(ledger, {}).ok


def test_a_keep_that_stopped_half_way_is_not_kept_and_the_next_resumes_it(
    ledger_factory: Callable[[], Ledger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.application.KEEP_SLICE", 2)
    monkeypatch.setattr("ledger.bill_evidence.STORED_CHUNK", 16 << 10)
    path, sha1 = _bill_file(tmp_path, "bill.csv", 4 * CHUNK)
    size = path.stat().st_size
    crashing = ledger_factory()
    save = crashing.save
    calls = iter(range(100))

    def crash_on_the_third(*args: Any) -> Any:
        if next(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped between two slices
        return save(*args)

    monkeypatch.setattr(crashing, "save", crash_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        crashing.store_bill(MCHID, DAY, "trade", path, sha1, size)
    stream = bill_statement_id(MCHID, DAY, "trade")
    half: Any = crashing.repository.get(stream)
    assert half.chunks == 4 and not half.settled  # two slices of two appended, no Fetched
    assert crashing.bill_status(MCHID, DAY, "trade").state == "absent"
    with pytest.raises(BillNotStored):
        read_back(crashing)
    assert check_all(crashing, {}).ok  # a keep cut short is not a break in the record

    # Another bill of that day cannot be grafted onto the chunks kept.
    other, other_sha1 = _bill_file(tmp_path, "other.csv", 4 * CHUNK, seed=8)
    restarted = ledger_factory()
    with pytest.raises(StoredBillCorrupt, match="another bill's"):
        restarted.store_bill(MCHID, DAY, "trade", other, other_sha1, other.stat().st_size)

    assert restarted.store_bill(MCHID, DAY, "trade", path, sha1, size) is True
    whole: Any = restarted.repository.get(stream)
    events = restarted.recorder.select_events(stream)
    indexes = [restarted.mapper.to_domain_event(e).index for e in events if e.topic.endswith(".ChunkStored")]
    assert indexes == list(range(whole.chunks)) and whole.chunks > 4
    assert hashlib.sha1(read_back(restarted)).hexdigest() == sha1
    assert restarted.bill_status(MCHID, DAY, "trade").sha1 == sha1
    assert check_all(restarted, {}).ok


def test_keeping_a_bill_holds_a_slice_not_the_bill(ledger_factory: Callable[[], Ledger], tmp_path: Path) -> None:
    path = tmp_path / "incompressible.bin"  # the store keeps bytes: gzip of random bytes is their size
    path.write_bytes(random.Random(9).randbytes(24 * CHUNK))
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    ledger = ledger_factory()
    tracemalloc.start()
    try:
        assert ledger.store_bill(MCHID, DAY, "trade", path, sha1, path.stat().st_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stored: Any = ledger.repository.get(bill_statement_id(MCHID, DAY, "trade"))
    # 24 MiB of gzip in 192 chunk events; a slice is 8 of them (1 MiB) in its many forms at a time
    # (about 19 MiB). All the chunks at once held some 17 copies of the whole gzip bill (412 MiB here).
    assert stored.chunks >= 192
    assert peak < 24 * CHUNK, f"keeping held {peak} bytes for {stored.chunks} chunks"
