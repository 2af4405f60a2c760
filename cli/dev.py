"""`--dev`: a throwaway local merchant so the service can be tried without a WeChat account.

It generates keys that play WeChat Pay's side (like the test suite does), writes them to
``./payledger-dev/`` with the matching ``WECHATPAY_*`` settings, and can sign and POST test
notifications to a running ledger. Never use it for real money: the "WeChat" key is local.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ledger.wechatpay.sandbox.signer import NotificationFactory

__all__ = ["DEV_DIR", "dev_environment", "dev_factory"]

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
