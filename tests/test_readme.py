"""The README's commands are the ones CI runs, the dev quick start really works, and the
configuration file of docs/configuration.md is one the ledger accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.settings import Settings
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_quick_start_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    blocks = quick_start()
    assert len(blocks) == 2
    serve, tests = blocks
    assert serve.startswith("python3 -m venv .venv && ") and serve.endswith("payledger demo")
    assert tests.endswith("python -m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_dev_quick_start_serves_records_and_shows_history(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHATPAY_", "LEDGER_"))}
    cli = [sys.executable, "-m", "cli.main"]
    server = subprocess.Popen(
        [*cli, "serve", "--dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"

        def run(*args):
            return subprocess.run([*cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True)

        assert run("dev-notify", "ORDER-0001", "--amount", "100", "--url", url).returncode == 0
        assert run("dev-notify", "ORDER-0001", "--amount", "100", "--refund", "R-0001:30", "--url", url).returncode == 0
        history = run("history", "ORDER-0001", "--dev")
        assert history.returncode == 0, history.stderr
        assert "PaymentSucceeded" in history.stdout and "RefundSucceeded" in history.stdout
        assert "REFUND" in history.stdout.splitlines()[0]
        order = httpx.get(f"{url}/orders/ORDER-0001").json()
        assert (order["trade_state"], order["refunded_total"]) == ("REFUND", 30)
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0].decode()
    apiv3_key = json.loads((tmp_path / "payledger-dev" / "merchant.json").read_text())["apiv3_key"]
    assert "serving on" in output and apiv3_key not in output


def test_bad_configuration_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHATPAY_", "LEDGER_"))}
    env |= {"WECHATPAY_MCHID": "1900000109", "WECHATPAY_APIV3_KEY": "too-short"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "WECHATPAY_APIV3_KEY" in result.stderr and "too-short" not in result.stderr


def test_the_configuration_file_example_loads_as_settings(tmp_path: Path) -> None:
    (example,) = re.findall(r"```toml\n(.*?)```", CONFIGURATION, re.S)
    data = tomllib.loads(example)
    # Its key files are placeholders under /etc/payledger/: real ones go in the same places here.
    keys = tmp_path / "etc"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (keys / "1900000109").mkdir(parents=True)
    (keys / "1900000109" / "pub_key.pem").write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (keys / "1900000222" / "certs").mkdir(parents=True)  # no certificate yet: the first download
    config = tmp_path / "payledger.toml"
    config.write_text(example.replace("/etc/payledger/", f"{keys}/"))

    settings = Settings.load({"LEDGER_CONFIG": str(config)})

    assert settings.database_url.value == data["database_url"]
    assert settings.admin_token is not None and settings.admin_token.value == data["admin_token"]
    first, second = settings.merchants
    assert (first.mchid, first.appid, first.public_key_id) == (
        "1900000109",
        "wxd678efh567hg6787",
        "PUB_KEY_ID_0119000001092025000000000000",
    )
    assert first.keys.serials == ["PUB_KEY_ID_0119000001092025000000000000"]
    assert (second.mchid, second.platform_cert_dir) == ("1900000222", keys / "1900000222" / "certs")
    assert [(e.id, e.url, e.events) for e in settings.endpoints] == [
        ("erp", "https://erp.internal/wechatpay/events", ("PaymentSucceeded", "RefundSucceeded")),
        ("warehouse", "amqp://ledger:change-me@rabbitmq:5672/shop?exchange=payments", None),
    ]
    assert "change-me" not in repr(settings.endpoints)
