"""Trying the ledger without WeChat Pay: `--dev`, `dev-notify`, `sandbox` and `demo`.

`--dev` is a throwaway local merchant: keys that play WeChat Pay's side (like the test suite
does), written to ``./payledger-dev/`` with the matching ``WECHATPAY_*`` settings;
`payledger dev-notify` signs and POSTs test notifications to a running ledger. Never use it
for real money: the "WeChat" key is local. `payledger sandbox` runs the fake WeChat Pay
(`ledger.wechatpay.sandbox`) on its own; `payledger demo` runs it with the ledger (`cli.demo`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cli.exits import FAILED, exit_codes
from ledger.wechatpay.sandbox.signer import NotificationFactory

if TYPE_CHECKING:
    from cli.common import SubParsers

__all__ = ["DEV_DIR", "dev_environment", "dev_factory", "register"]

DEV_DIR = Path("payledger-dev")


def dev_factory(folder: Path = DEV_DIR) -> NotificationFactory:
    """The development 'WeChat Pay', created on first use and reused afterwards."""
    meta = folder / "merchant.json"
    key_file = folder / "fake_wechatpay_private_key.pem"
    if meta.exists() and key_file.exists():
        data = json.loads(meta.read_text())
        key = load_pem_private_key(key_file.read_bytes(), password=None)
        return NotificationFactory(
            mchid=data["mchid"],
            appid=data["appid"],
            apiv3_key=data["apiv3_key"],
            public_key_id=data["public_key_id"],
            private_key=key,  # type: ignore[arg-type]
        )
    factory = NotificationFactory()
    folder.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(
        factory.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    meta.write_text(
        json.dumps(
            {
                "mchid": factory.mchid,
                "appid": factory.appid,
                "apiv3_key": factory.apiv3_key,
                "public_key_id": factory.public_key_id,
            }
        )
    )
    meta.chmod(0o600)
    return factory


def dev_environment(folder: Path = DEV_DIR) -> dict[str, str]:
    factory = dev_factory(folder)
    env = factory.write_keys(folder.resolve())
    (folder / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def cmd_dev_notify(args: argparse.Namespace) -> int:
    factory = dev_factory()
    if args.refund:
        out_refund_no, _, amount = args.refund.partition(":")
        delivery = factory.refunded(args.out_trade_no, out_refund_no, int(amount), args.amount)
    else:
        delivery = factory.paid(args.out_trade_no, args.amount)
    response = httpx.post(f"{args.url.rstrip('/')}/wechatpay/notify", content=delivery.body, headers=delivery.headers)
    print(f"POST /wechatpay/notify -> {response.status_code} {response.text}")
    return 0 if response.status_code in (200, 204) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo  # the demo imports the whole service; only `demo` needs it

    return run_demo(host=args.host, port=args.port, sandbox_port=args.sandbox_port, wait=not args.no_wait)


def cmd_sandbox(args: argparse.Namespace) -> int:
    # The fake WeChat Pay (a web app) is imported only by the command that runs it.
    from ledger.wechatpay.sandbox.server import Sandbox, run_sandbox

    sandbox = Sandbox(
        notify_url=args.notify_url,
        time_scale=args.time_scale,
        duplicate_rate=args.duplicate_rate,
        probe_rate=args.probe_rate,
        drop_rate=args.drop_rate,
        seed=args.seed,
        signing="certificate" if args.sign_with == "certificate" else "public_key",
        sub_mchids=args.sub_mchid or (),
        v2_notify_url=args.v2_notify_url or None,
    )
    run_sandbox(sandbox, args.host, args.port, Path(args.folder))
    return 0


def register(sub: SubParsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the ledger against the sandbox with a scripted scenario",
        epilog=exit_codes(
            (0, "the script ran (with --no-wait), or stopped by ctrl-C"), (1, "a step of the script failed")
        ),
    )
    demo.add_argument("--host", default="127.0.0.1", help="address of both services (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="the ledger's port (default 8000)")
    demo.add_argument("--sandbox-port", type=int, default=8090, help="the sandbox's port (default 8090)")
    demo.add_argument("--no-wait", action="store_true", help="exit after the scripted part")
    demo.set_defaults(func=cmd_demo)

    sandbox = sub.add_parser(
        "sandbox",
        help="run a local fake WeChat Pay (writes the ledger configuration)",
        epilog=exit_codes((0, "stopped by SIGTERM or ctrl-C"), FAILED),
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    sandbox.add_argument("--folder", default="payledger-sandbox", help="where keys and the ledger's env file go")
    sandbox.add_argument(
        "--notify-url", default="http://127.0.0.1:8000/wechatpay/notify", help="where notifications are sent"
    )
    sandbox.add_argument(
        "--v2-notify-url",
        default="http://127.0.0.1:8000/wechatpay/v2/notify",
        help="where APIv2 XML notifications are sent",
    )
    sandbox.add_argument(
        "--sign-with",
        choices=["public-key", "certificate"],
        default="public-key",
        help="sign notifications and answers with WeChat's public key or its platform certificate",
    )
    sandbox.add_argument(
        "--sub-mchid",
        action="append",
        metavar="SUB_MCHID",
        help="be a service provider serving this sub-merchant (repeat for more)",
    )
    sandbox.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="divide WeChat's retry schedule by this (never the 5 s answer deadline)",
    )
    sandbox.add_argument("--duplicate-rate", type=float, default=0.0, help="share of deliveries sent twice (0-1)")
    sandbox.add_argument("--probe-rate", type=float, default=0.0, help="share of signature probes sent (0-1)")
    sandbox.add_argument("--drop-rate", type=float, default=0.0, help="share of notifications never sent (0-1)")
    sandbox.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    sandbox.set_defaults(func=cmd_sandbox)

    dev = sub.add_parser(
        "dev-notify",
        help="send a signed test notification (development merchant only)",
        epilog=exit_codes((0, "the ledger answered 200 or 204"), (1, "it answered anything else")),
    )
    dev.add_argument("out_trade_no", help="the order's number")
    dev.add_argument("--amount", type=int, required=True, help="order total in fen")
    dev.add_argument("--refund", metavar="OUT_REFUND_NO:FEN", help="send a refund notification instead")
    dev.add_argument("--url", default="http://127.0.0.1:8000", help="the ledger (default http://127.0.0.1:8000)")
    dev.set_defaults(func=cmd_dev_notify)
