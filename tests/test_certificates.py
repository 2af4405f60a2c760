"""Platform certificates: trust on first use only when empty, background refresh, verified downloads."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.bootstrap import Services, bootstrap
from ledger.errors import ResponseUntrusted
from ledger.settings import Settings
from ledger.wechatpay.sandbox.server import Sandbox
from tests.support.servers import running


@pytest.fixture
def sandbox() -> Iterator[tuple[Sandbox, str]]:
    wechat = Sandbox(seed=5, signing="certificate")
    with running(wechat.app) as url:
        yield wechat, url


def services_for(wechat: Sandbox, url: str, folder: Path, *, empty_certs: bool = False) -> Services:
    env = wechat.write_ledger_config(folder, url)
    env.pop("WECHATPAY_PUBLIC_KEY_ID")
    env.pop("WECHATPAY_PUBLIC_KEY_FILE")
    if empty_certs:
        for pem in Path(env["WECHATPAY_PLATFORM_CERT_DIR"]).glob("*.pem"):
            pem.unlink()
    env["LEDGER_DATABASE_URL"] = f"sqlite:///{folder / 'ledger.sqlite3'}"
    return bootstrap(Settings.load(env))


def test_first_download_into_an_empty_folder_is_trusted_on_first_use_and_says_so(
    sandbox: tuple[Sandbox, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wechat, url = sandbox
    services = services_for(wechat, url, tmp_path / "keys", empty_certs=True)
    manager = services.merchants[wechat.mchid].certificates
    assert manager is not None and manager.certificates() == []
    try:
        with caplog.at_level(logging.WARNING):
            added = manager.refresh()
    finally:
        services.close()
    expected = format(wechat.listed_certificates()[0].serial_number, "X")
    assert added == [expected]
    assert (tmp_path / "keys" / "platform_certs" / f"{expected}.pem").exists()
    assert "first use" in caplog.text


def test_a_download_signed_by_an_untrusted_key_is_refused(sandbox: tuple[Sandbox, str], tmp_path: Path) -> None:
    wechat, url = sandbox
    services = services_for(wechat, url, tmp_path / "keys")
    manager = services.merchants[wechat.mchid].certificates
    assert manager is not None
    wechat.tamper_next_response()
    try:
        with pytest.raises(ResponseUntrusted):
            manager.refresh()
    finally:
        services.close()
    assert len(list((tmp_path / "keys" / "platform_certs").glob("*.pem"))) == 1


def test_background_refresh_picks_up_a_rotation_before_it_is_used(sandbox: tuple[Sandbox, str], tmp_path: Path) -> None:
    wechat, url = sandbox
    services = services_for(wechat, url, tmp_path / "keys")
    manager = services.merchants[wechat.mchid].certificates
    assert manager is not None
    new = wechat.rotate_certificate()
    manager.start(0.1)
    try:
        deadline = time.monotonic() + 10
        while new not in manager.keys().serials and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        services.close()
    assert new in manager.keys().serials
    assert len(manager.keys().certificates) == 2
