"""Daily-bill benchmark: fetching and reading a large trade bill as the ledger will each morning.

Issue 2/8 asks for a 1,000,000-row bill fetched, parsed and matched in under 60 s with resident
memory under 300 MB. Matching against the ledger does not exist yet, so this measures what does:

* generation (not part of the verdict): an ALL trade bill of N rows in WeChat's format ([protocol:
  Daily bills]: BOM, CRLF, backtick-prefixed values, payments and about 10% refunds, summary = the
  column sums), gzipped to a temp file, its SHA-1 taken;
* apply: `WeChatPayClient.apply_trade_bill` against a small server on 127.0.0.1 (a child process, so
  its memory is not counted) that signs its answer as the sandbox does and serves the gzip file;
* download: `download_bill_to_temp(client.download_bill, ...)`: HTTP, gunzip, SHA-1, to disk;
* parse: `read_trade_bill` over the file, every row consumed and the summary checked;
* baseline: the same decompressed file read with `csv.DictReader`, no checks (what a naive
  integration does), for the ratio.

The process's resident memory is sampled every 0.2 s; the peak over apply+download+parse is the
figure for the verdict.

    python bench/bills.py [--rows 1000000] [--refunds 0.1] [--seed 1]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import hashlib
import json
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from memory import rss_mb  # bench/memory.py, beside this script
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ledger.wechatpay.bill_download import download_bill_to_temp
from ledger.wechatpay.bills import read_trade_bill
from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.sandbox.bills import TRADE_HEADER, TRADE_SUMMARY_HEADER
from ledger.wechatpay.sandbox.signer import NotificationFactory

MCHID, APPID = "1900000109", "wxd678efh567hg6787"
MERCHANT_SERIAL = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115"
BILL_DATE = dt.date(2026, 12, 2)
SECONDS, MEGABYTES = 60.0, 300.0


def yuan(fen: int) -> str:
    return f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def fee(units: int) -> str:
    """A fee in 0.00001 yuan (0.6% of a fen amount is exactly 6 of them per fen), to 5 decimals."""
    return f"{'-' if units < 0 else ''}{abs(units) // 100_000}.{abs(units) % 100_000:05d}"


def generate(path: Path, rows: int, refund_share: float, seed: int) -> tuple[str, int]:
    """Write the gzipped bill; return the SHA-1 and the size of the decompressed bytes."""
    rng = random.Random(seed)
    sha1, size = hashlib.sha1(usedforsecurity=False), 0
    settle = refunded = fees = 0
    day = dt.datetime.combine(BILL_DATE, dt.time())
    with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as out:

        def emit(lines: list[str]) -> None:
            nonlocal size
            data = "".join(line + "\r\n" for line in lines).encode()
            sha1.update(data)
            size += len(data)
            out.write(data)

        emit(["\ufeff" + ",".join(TRADE_HEADER)])
        batch: list[str] = []
        for i in range(rows):
            when = (day + dt.timedelta(seconds=i * 86_400 // rows)).strftime("%Y-%m-%d %H:%M:%S")
            total = rng.randint(1, 200_000)
            order, txn = f"BENCH{BILL_DATE:%Y%m%d}{i:010d}", f"42000{i:023d}"
            payer = f"oUpF8u{rng.getrandbits(64):016x}{i % 997:06d}"
            if rng.random() < refund_share:
                amount = rng.randint(1, total)
                values = [when, APPID, MCHID, "0", "", txn, order, payer, "JSAPI", "REFUND", "OTHERS", "CNY",
                          "0.00", "0.00", f"503000{i:023d}", f"RF{i:010d}", yuan(amount), "0.00", "ORIGINAL",
                          "SUCCESS", "测试商品", "", fee(-amount * 6), "0.60%", "0.00", yuan(amount), ""]  # fmt: skip
                refunded += amount
                fees -= amount * 6
            else:
                values = [when, APPID, MCHID, "0", "", txn, order, payer, "JSAPI", "SUCCESS", "OTHERS", "CNY",
                          yuan(total), "0.00", "0", "0", "0.00", "0.00", "", "", "测试商品", f"batch={i % 7}",
                          fee(total * 6), "0.60%", yuan(total), "0.00", ""]  # fmt: skip
                settle += total
                fees += total * 6
            batch.append(",".join("`" + value for value in values))
            if len(batch) == 10_000:
                emit(batch)
                batch = []
        emit(batch)
        summary = [str(rows), yuan(settle), yuan(refunded), "0.00", fee(fees), yuan(settle), yuan(refunded)]
        emit([",".join(TRADE_SUMMARY_HEADER), ",".join("`" + value for value in summary)])
    return sha1.hexdigest(), size


def serve(factory: NotificationFactory, bill: Path, sha1: str, port: int) -> None:
    """The WeChat side, in a child process: a signed apply answer, then the gzip file, streamed from disk."""

    async def apply(request: Request) -> Response:
        url = f"http://127.0.0.1:{port}/v3/billdownload/file?token=bench&tartype=gzip"
        body = json.dumps({"download_url": url, "hash_type": "SHA1", "hash_value": sha1}).encode()
        return Response(body, media_type="application/json", headers=factory.sign_headers(body))

    async def download(request: Request) -> Response:
        return FileResponse(bill, media_type="application/x-gzip")

    app = Starlette(
        routes=[Route("/v3/bill/tradebill", apply, methods=["GET"]), Route("/v3/billdownload/file", download)]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the bench server did not start")


class Peaks:
    """Peak RSS per phase, sampled every 0.2 s (and at each phase change)."""

    def __init__(self) -> None:
        self.phase, self.peaks, self._done = "start", {"start": rss_mb()}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _note(self) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss_mb())

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self._note()

    def enter(self, phase: str) -> None:
        self._note()
        self.phase = phase
        self._note()

    def stop(self) -> None:
        self._note()
        self._done.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--refunds", type=float, default=0.1, help="share of refund rows")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"daily-bill benchmark: ALL trade bill of {args.rows:,} rows (~{args.refunds:.0%} refunds) for "
        f"{BILL_DATE}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="payledger-bills-") as tmp:
        folder = Path(tmp)
        gz = folder / "bill.csv.gz"
        started = time.perf_counter()
        sha1, size = generate(gz, args.rows, args.refunds, args.seed)
        print(
            f"generated in {time.perf_counter() - started:.1f} s (not timed below): {gz.stat().st_size:,} bytes "
            f"gzipped, {size:,} bytes decompressed, sha1 {sha1}"
        )
        factory = NotificationFactory(mchid=MCHID, appid=APPID)
        port = free_port()
        server = multiprocessing.get_context("fork").Process(target=serve, args=(factory, gz, sha1, port))
        server.start()
        try:
            wait_listening(port)
            client = WeChatPayClient(
                mchid=MCHID,
                merchant_serial_no=MERCHANT_SERIAL,
                merchant_private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                keys=factory.key_store,
                base_url=f"http://127.0.0.1:{port}",
                max_attempts=1,
            )
            peaks = Peaks()
            times: dict[str, float] = {}

            def phase(name: str) -> None:
                peaks.enter(name)
                times[name] = time.perf_counter()

            phase("apply")
            ticket = client.apply_trade_bill(BILL_DATE)
            phase("download")
            path, download = download_bill_to_temp(client.download_bill, ticket, folder=folder)
            phase("parse")
            with path.open("rb") as file:
                bill = read_trade_bill(file)
                count = sum(1 for _ in bill)
                summary = bill.summary
            phase("baseline")
            with path.open(encoding="utf-8-sig", newline="") as file:
                naive = sum(1 for _ in csv.DictReader(file))
            phase("end")
            peaks.stop()
            client.close()
        finally:
            server.terminate()
            server.join()

    seconds = {name: times[after] - times[name] for name, after in zip(times, list(times)[1:], strict=False)}
    fetch_parse = times["baseline"] - times["apply"]
    peak = max(peaks.peaks[p] for p in ("apply", "download", "parse"))
    assert download.sha1 == sha1 and download.size == size and count == summary.count == args.rows, "bill mismatch"
    assert naive == args.rows + 2, "the csv baseline reads the rows and the two summary lines"
    print(f"RSS before the fetch: {peaks.peaks['start']:.0f} MB")
    for name in ("apply", "download", "parse", "baseline"):
        rate = f", {args.rows / seconds[name]:,.0f} rows/s" if name != "apply" else ""
        print(f"  {name:<9} {seconds[name]:7.2f} s{rate}; peak RSS {peaks.peaks[name]:.0f} MB")
    print(
        f"summary checked: {summary.count:,} rows, settlement {summary.settlement_total_fen:,} fen, "
        f"refunds {summary.refund_fen:,} fen, fee {summary.fee} yuan"
    )
    print(f"parse / csv baseline: {seconds['parse'] / seconds['baseline']:.2f}x the time")
    print(f"fetch+parse: {fetch_parse:.1f} s, {args.rows / fetch_parse:,.0f} rows/s, peak RSS {peak:.0f} MB")
    met = fetch_parse < SECONDS and peak < MEGABYTES
    print(
        f"target (fetch+parse < {SECONDS:.0f} s and < {MEGABYTES:.0f} MB; matching not measured): "
        f"{'MET' if met else 'NOT MET'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
