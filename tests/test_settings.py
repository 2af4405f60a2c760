"""Settings from the environment and LEDGER_CONFIG ([protocol: Which key signed it] key modes, [protocol:
Decrypting the resource] 32-byte APIv3 key, [protocol: Calling WeChat Pay] base URL).

Every problem is a ConfigurationError naming the setting; secrets never show in a repr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.errors import ConfigurationError, VerificationFailed
from ledger.settings import Settings
from ledger.store.backends import persistence_env, redact_url
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory

# [protocol: Published vectors] the JAVA merchant certificate serial
MERCHANT_SERIAL = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115"


@pytest.fixture
def env(merchant_env: dict[str, str], sqlite_url: str) -> dict[str, str]:
    return {**merchant_env, "LEDGER_DATABASE_URL": sqlite_url}


def private_key_file(factory: NotificationFactory, path: Path) -> str:
    path.write_bytes(
        factory.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(path)


def test_env_happy_path(env: dict[str, str], factory: NotificationFactory, sqlite_url: str) -> None:
    """[protocol: Which key signed it]: both key modes from WECHATPAY_* variables; defaults for everything optional."""
    settings = Settings.load(env)
    assert len(settings.merchants) == 1
    merchant = settings.default_merchant
    assert merchant is not None and settings.merchant(factory.mchid) is merchant
    assert settings.merchant("1900000999") is None
    assert (merchant.mchid, merchant.appid) == (factory.mchid, factory.appid)
    assert merchant.apiv3_key.value == factory.apiv3_key
    assert merchant.public_key_id == factory.public_key_id
    assert merchant.platform_cert_dir == Path(env["WECHATPAY_PLATFORM_CERT_DIR"])
    assert sorted(merchant.keys.serials) == sorted([factory.public_key_id, factory.certificate_serial])
    assert merchant.api_base_url == "https://api.mch.weixin.qq.com"
    assert merchant.merchant_private_key is None and merchant.merchant_serial_no is None
    assert settings.database_url.value == sqlite_url
    assert settings.admin_token is None
    assert settings.max_body_bytes == 64 * 1024
    verifier = NotificationVerifier(merchant.keys, merchant.apiv3_key.value.encode(), clock=time.time)
    for serial in (factory.public_key_id, factory.certificate_serial):
        delivery = factory.deliver(factory.envelope(factory.transaction("o-env", 10)), serial=serial)
        assert verifier.verify(delivery.headers, delivery.body).key_serial == serial


def test_env_optional_settings(env: dict[str, str], factory: NotificationFactory, tmp_path: Path) -> None:
    """[protocol: Signing a request]: merchant API key pair for queries; base URL without trailing slash;
    ledger knobs."""
    settings = Settings.load(
        {
            **env,
            "WECHATPAY_MERCHANT_SERIAL_NO": MERCHANT_SERIAL.lower(),
            "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE": private_key_file(factory, tmp_path / "apiclient_key.pem"),
            "WECHATPAY_API_BASE_URL": "https://api2.mch.weixin.qq.com/",
            "LEDGER_ADMIN_TOKEN": "0123456789abcdef",
            "LEDGER_MAX_BODY_BYTES": "2048",
        }
    )
    merchant = settings.merchants[0]
    assert merchant.merchant_serial_no == MERCHANT_SERIAL
    assert merchant.merchant_private_key is not None
    assert merchant.merchant_private_key.private_numbers() == factory.private_key.private_numbers()
    assert merchant.api_base_url == "https://api2.mch.weixin.qq.com"
    assert settings.admin_token is not None and settings.admin_token.value == "0123456789abcdef"
    assert settings.max_body_bytes == 2048


def test_no_merchant_allowed_when_not_required(sqlite_url: str) -> None:
    """Tools that need no merchant ([protocol: Calling WeChat Pay] queries aside) may load settings without one."""
    settings = Settings.load({"LEDGER_DATABASE_URL": sqlite_url}, require_merchant=False)
    assert settings.merchants == () and settings.default_merchant is None


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _bad_cert_dir(tmp: Path) -> str:
    (tmp / "certs").mkdir()
    _write(tmp / "certs" / "broken.pem", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    return str(tmp / "certs")


def _ec_public_key() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


MCHID, APPID, APIV3 = "WECHATPAY_MCHID", "WECHATPAY_APPID", "WECHATPAY_APIV3_KEY"
PK_ID, PK_FILE, CERTS = "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY_FILE", "WECHATPAY_PLATFORM_CERT_DIR"
SERIAL, KEY_FILE = "WECHATPAY_MERCHANT_SERIAL_NO", "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE"
BASE, DB = "WECHATPAY_API_BASE_URL", "LEDGER_DATABASE_URL"
Value = str | None | Callable[[Path, NotificationFactory], str]
FAILURES: list[tuple[str, dict[str, Value], str]] = [
    ("mchid-missing", {MCHID: None}, MCHID),
    ("mchid-blank", {MCHID: "  "}, MCHID),
    ("mchid-non-numeric", {MCHID: "19000001O9"}, MCHID),
    ("mchid-too-short", {MCHID: "12345"}, MCHID),
    ("appid-short", {APPID: "wx123"}, APPID),
    ("appid-not-wx", {APPID: "1230000109wxd678efh"}, APPID),
    ("apiv3-missing", {APIV3: None}, APIV3),
    ("apiv3-31-bytes", {APIV3: lambda t, f: f.apiv3_key[:31]}, APIV3),
    ("apiv3-33-bytes", {APIV3: lambda t, f: f.apiv3_key + "x"}, APIV3),
    ("apiv3-32-chars-96-bytes", {APIV3: "密" * 32}, APIV3),
    ("public-key-id-without-file", {PK_FILE: None}, PK_FILE),
    ("public-key-file-without-id", {PK_ID: None}, PK_ID),
    ("public-key-id-bad", {PK_ID: "PUBKEY_0001"}, PK_ID),
    ("public-key-file-missing", {PK_FILE: lambda t, f: str(t / "none.pem")}, PK_FILE),
    ("public-key-file-unreadable", {PK_FILE: lambda t, f: str(t)}, PK_FILE),
    ("public-key-file-not-pem", {PK_FILE: lambda t, f: _write(t / "k.pem", b"hello")}, PK_FILE),
    ("public-key-file-is-private-key", {PK_FILE: lambda t, f: private_key_file(f, t / "k.pem")}, PK_FILE),
    ("public-key-file-not-rsa", {PK_FILE: lambda t, f: _write(t / "k.pem", _ec_public_key())}, PK_FILE),
    ("no-verification-key", {PK_ID: None, PK_FILE: None, CERTS: None}, PK_ID),
    ("cert-dir-missing", {CERTS: lambda t, f: str(t / "nodir")}, CERTS),
    ("cert-dir-bad-pem", {CERTS: lambda t, f: _bad_cert_dir(t)}, CERTS),
    ("base-url-ftp", {BASE: "ftp://api.mch.weixin.qq.com"}, BASE),
    ("base-url-no-scheme", {BASE: "api.mch.weixin.qq.com"}, BASE),
    ("database-url-mysql", {DB: "mysql://u:pw@db/ledger"}, DB),
    ("database-url-no-dbname", {DB: "postgresql://u:pw@db/"}, DB),
    ("database-url-bad-port", {DB: "postgresql://u:pw@db:port/ledger"}, DB),
    ("database-url-sqlite-no-dir", {DB: lambda t, f: f"sqlite:///{t / 'no' / 'x.db'}"}, DB),
    ("merchant-serial-without-key", {SERIAL: MERCHANT_SERIAL}, KEY_FILE),
    ("merchant-key-without-serial", {KEY_FILE: lambda t, f: private_key_file(f, t / "m.pem")}, SERIAL),
    ("merchant-serial-not-hex", {SERIAL: "XYZ", KEY_FILE: lambda t, f: private_key_file(f, t / "m")}, SERIAL),
    ("merchant-key-not-pem", {SERIAL: "5F1C72E2", KEY_FILE: lambda t, f: _write(t / "m", b"x")}, KEY_FILE),
    ("admin-token-short", {"LEDGER_ADMIN_TOKEN": "short-token"}, "LEDGER_ADMIN_TOKEN"),
    ("max-body-not-int", {"LEDGER_MAX_BODY_BYTES": "64k"}, "LEDGER_MAX_BODY_BYTES"),
    ("max-body-too-small", {"LEDGER_MAX_BODY_BYTES": "10"}, "LEDGER_MAX_BODY_BYTES"),
    ("max-body-too-big", {"LEDGER_MAX_BODY_BYTES": str(10**9)}, "LEDGER_MAX_BODY_BYTES"),
    ("reconcile-schedule-words", {"LEDGER_RECONCILE_SCHEDULE": "5,soon"}, "LEDGER_RECONCILE_SCHEDULE"),
    ("webhook-schedule-words", {"LEDGER_WEBHOOK_RETRY_SCHEDULE": "5,later"}, "LEDGER_WEBHOOK_RETRY_SCHEDULE"),
    ("webhook-schedule-zero", {"LEDGER_WEBHOOK_RETRY_SCHEDULE": "5,0"}, "LEDGER_WEBHOOK_RETRY_SCHEDULE"),
    ("webhook-schedule-8-days", {"LEDGER_WEBHOOK_RETRY_SCHEDULE": "691200"}, "LEDGER_WEBHOOK_RETRY_SCHEDULE"),
    ("webhook-timeout-words", {"LEDGER_WEBHOOK_TIMEOUT": "ten"}, "LEDGER_WEBHOOK_TIMEOUT"),
    ("webhook-timeout-too-long", {"LEDGER_WEBHOOK_TIMEOUT": "301"}, "LEDGER_WEBHOOK_TIMEOUT"),
    ("webhook-disable-after-too-soon", {"LEDGER_WEBHOOK_DISABLE_AFTER": "59"}, "LEDGER_WEBHOOK_DISABLE_AFTER"),
    ("mode-unknown", {"WECHATPAY_MODE": "isv"}, "WECHATPAY_MODE"),
    ("sub-mchids-in-direct-mode", {"WECHATPAY_SUB_MCHIDS": "1900000110"}, "WECHATPAY_SUB_MCHIDS"),
    (
        "sub-mchids-not-numbers",
        {"WECHATPAY_MODE": "partner", "WECHATPAY_SUB_MCHIDS": "1900000110,abc"},
        "WECHATPAY_SUB_MCHIDS",
    ),
    ("v2-key-short", {"WECHATPAY_V2_KEY": "x" * 31}, "WECHATPAY_V2_KEY"),
    ("v2-key-not-ascii", {"WECHATPAY_V2_KEY": "密" * 32}, "WECHATPAY_V2_KEY"),
]


@pytest.mark.parametrize(("changes", "setting"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_failure_names_the_setting(
    env: dict[str, str], factory: NotificationFactory, tmp_path: Path, changes: dict[str, Value], setting: str
) -> None:
    """[protocol: Which key signed it; Decrypting the resource; Signing a request; Store, then answer]: each
    invalid setting fails at start-up, naming itself, echoing no secret."""
    for key, value in changes.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value(tmp_path, factory) if callable(value) else value
    with pytest.raises(ConfigurationError) as exc:
        Settings.load(env)
    assert exc.value.setting == setting
    assert str(exc.value).startswith(setting)
    for secret in (env.get(APIV3), env.get("LEDGER_ADMIN_TOKEN"), ":pw@"):
        assert not secret or secret not in str(exc.value)


def test_partner_mode_and_the_v2_key(env: dict[str, str]) -> None:
    """[protocol: Service providers; Legacy APIv2 XML]: a provider's sub-merchants, an APIv2 key (kept secret)."""
    direct = Settings.load(env).merchants[0]
    assert (direct.mode, direct.partner, direct.sub_mchids, direct.v2_key) == ("direct", False, None, None)
    v2_key = "a" * 16 + "B" * 16
    env.update(WECHATPAY_MODE="Partner", WECHATPAY_SUB_MCHIDS=" 1900000110, 1900000111 ,", WECHATPAY_V2_KEY=v2_key)
    merchant = Settings.load(env).merchants[0]
    assert (merchant.mode, merchant.partner) == ("partner", True)
    assert merchant.sub_mchids == frozenset({"1900000110", "1900000111"})
    assert merchant.v2_key is not None and merchant.v2_key.value == v2_key
    assert v2_key not in repr(merchant) and v2_key not in str(merchant)


def toml_table(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


@pytest.fixture
def two_merchants(
    factory: NotificationFactory, other_factory: NotificationFactory, tmp_path: Path, sqlite_url: str
) -> Path:
    a = factory.write_keys(tmp_path / "a")
    b = other_factory.write_keys(tmp_path / "b")
    config = tmp_path / "ledger.toml"
    config.write_text(
        toml_table({"database_url": sqlite_url, "LEDGER_MAX_BODY_BYTES": 4096})
        + "\n[[merchants]]\n"
        + toml_table(
            {
                "mchid": a["WECHATPAY_MCHID"],
                "AppId": a["WECHATPAY_APPID"],
                "apiv3_key": a["WECHATPAY_APIV3_KEY"],
                "public_key_id": a["WECHATPAY_PUBLIC_KEY_ID"],
                "WECHATPAY_PUBLIC_KEY_FILE": a["WECHATPAY_PUBLIC_KEY_FILE"],
                "wechatpay_platform_cert_dir": a["WECHATPAY_PLATFORM_CERT_DIR"],
            }
        )
        + "\n[[merchants]]\nMCHID = 1900000110\n"
        + toml_table(
            {
                "WeChatPay_APIv3_Key": b["WECHATPAY_APIV3_KEY"],
                "Public_Key_Id": b["WECHATPAY_PUBLIC_KEY_ID"],
                "public_key_file": b["WECHATPAY_PUBLIC_KEY_FILE"],
                "api_base_url": "https://api2.mch.weixin.qq.com",
            }
        ),
        encoding="utf-8",
    )
    return config


def test_toml_two_merchants(
    two_merchants: Path, factory: NotificationFactory, other_factory: NotificationFactory, sqlite_url: str
) -> None:
    """[protocol: Which key signed it; Several merchants on one ledger]: [[merchants]] tables, keys with or
    without WECHATPAY_, any case; each its own keys."""
    settings = Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert [m.mchid for m in settings.merchants] == ["1900000109", "1900000110"]
    first, second = settings.merchants
    assert first.apiv3_key.value == factory.apiv3_key and first.appid == factory.appid
    assert second.apiv3_key.value == other_factory.apiv3_key and second.appid is None
    assert sorted(first.keys.serials) == sorted([factory.public_key_id, factory.certificate_serial])
    assert second.keys.serials == [other_factory.public_key_id]
    assert second.api_base_url == "https://api2.mch.weixin.qq.com"
    assert settings.database_url.value == sqlite_url and settings.max_body_bytes == 4096
    verifier = NotificationVerifier(second.keys, second.apiv3_key.value.encode())
    own = other_factory.paid("o-toml", 5)
    assert verifier.verify(own.headers, own.body).key_serial == other_factory.public_key_id
    foreign = factory.paid("o-toml", 5)
    with pytest.raises(VerificationFailed):
        verifier.verify(foreign.headers, foreign.body)


@pytest.mark.parametrize(
    ("extra", "named"),
    [('colour = "blue"\n', "merchants[1].colour"), ('apiv3 = "x"\n', "merchants[1].apiv3")],
)
def test_toml_unknown_merchant_key_is_rejected(two_merchants: Path, extra: str, named: str) -> None:
    """A typo in a [[merchants]] table (e.g. a half-spelt [protocol: Decrypting the resource] APIv3 key name)
    is named, not ignored."""
    two_merchants.write_text(two_merchants.read_text(encoding="utf-8") + extra, encoding="utf-8")
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert exc.value.setting.startswith("LEDGER_CONFIG") and exc.value.setting.endswith(named)


def test_toml_unknown_top_level_key_is_rejected(two_merchants: Path) -> None:
    """Unknown top-level keys are rejected by name ([protocol: Store, then answer] store URL misspelt)."""
    two_merchants.write_text(
        'databse_url = "sqlite:///x.db"\n' + two_merchants.read_text(encoding="utf-8"), encoding="utf-8"
    )
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert "databse_url" in exc.value.setting


def test_toml_error_names_the_table(two_merchants: Path) -> None:
    """[protocol: Several merchants on one ledger]: one file, several merchants; an error names the table and
    the setting."""
    text = two_merchants.read_text(encoding="utf-8").replace("MCHID = 1900000110", "MCHID = 12")
    two_merchants.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert exc.value.setting == "LEDGER_CONFIG merchants[1].WECHATPAY_MCHID"


def test_toml_duplicate_mchid_is_rejected(two_merchants: Path) -> None:
    """[protocol: Several merchants on one ledger]: notifications are routed by mchid, so it must be unique."""
    text = two_merchants.read_text(encoding="utf-8").replace("MCHID = 1900000110", "MCHID = 1900000109")
    two_merchants.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert "MCHID" in exc.value.setting.upper() and "1900000109" in str(exc.value)


@pytest.mark.parametrize("content", [None, "merchants = [\n", "merchants = 1\n"])
def test_unreadable_config_names_ledger_config(tmp_path: Path, content: str | None) -> None:
    """A missing, invalid or mis-shaped LEDGER_CONFIG names LEDGER_CONFIG."""
    path = tmp_path / "ledger.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({"LEDGER_CONFIG": str(path)})
    assert exc.value.setting == "LEDGER_CONFIG"


def test_secrets_never_in_repr_or_str(env: dict[str, str], factory: NotificationFactory) -> None:
    """[protocol: Decrypting the resource]: the APIv3 key decrypts every resource; it, the admin token and the
    DB password never print."""
    token, password = "admin-token-0123456789-XYZ", "Sup3rS3cretPw"
    url = f"postgresql://ledger:{password}@db.internal:5432/ledger"
    settings = Settings.load({**env, "LEDGER_ADMIN_TOKEN": token, "LEDGER_DATABASE_URL": url})
    assert settings.admin_token is not None and settings.admin_token.value == token
    assert settings.database_url.value == url
    merchant = settings.merchants[0]
    texts = [repr(settings), str(settings), repr(merchant), str(merchant), f"{merchant.apiv3_key}"]
    texts += [repr(settings.database_url), str(settings.admin_token)]
    assert factory.mchid in repr(settings)
    for text in texts:
        for secret in (factory.apiv3_key, token, password):
            assert secret not in text


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://ledger:Sup3rS3cret@db:5432/ledger", "postgresql://ledger:***@db:5432/ledger"),
        (
            "postgresql://ledger:p%40ss%3Aword@db/ledger?schema=a",
            "postgresql://ledger:***@db/ledger?schema=a",
        ),
        ("postgresql://admin:admin@db/admin", "postgresql://admin:***@db/admin"),
        ("postgresql://:onlypw@db/ledger", "postgresql://:***@db/ledger"),
        ("postgresql://ledger@db/ledger", "postgresql://ledger@db/ledger"),
        ("sqlite:////var/lib/payledger.sqlite3", "sqlite:////var/lib/payledger.sqlite3"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    """[protocol: Store, then answer]: the store URL may be logged, its password never."""
    assert redact_url(url) == redacted


def test_persistence_env_sqlite(tmp_path: Path) -> None:
    """[protocol: Store, then answer]: sqlite:/// URLs (absolute, relative, memory) map to the eventsourcing
    SQLite settings."""
    absolute = persistence_env(f"sqlite:///{tmp_path / 'l.db'}")
    assert absolute["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    assert absolute["SQLITE_DBNAME"] == str(tmp_path / "l.db")
    assert persistence_env("sqlite:///:memory:")["SQLITE_DBNAME"] == ":memory:"
    assert persistence_env("sqlite:///payledger.sqlite3")["SQLITE_DBNAME"] == "payledger.sqlite3"


def test_persistence_env_postgresql() -> None:
    """[protocol: Store, then answer]: postgresql:// URLs map to the eventsourcing PostgreSQL settings,
    percent-decoded."""
    env = persistence_env("postgresql://ledger:p%40ss@db.internal:6543/ledger_db?schema=s1&connect_timeout=3")
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]) == (
        "db.internal",
        "6543",
        "ledger_db",
    )
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == ("ledger", "p@ss")
    assert (env["POSTGRES_SCHEMA"], env["POSTGRES_CONNECT_TIMEOUT"]) == ("s1", "3")
    defaults = persistence_env("postgres://localhost/ledger")
    assert defaults["POSTGRES_PORT"] == "5432" and defaults["POSTGRES_USER"] == "postgres"
    assert defaults["POSTGRES_PASSWORD"] == "" and defaults["POSTGRES_HOST"] == "localhost"
    assert "POSTGRES_SCHEMA" not in defaults


BAD_URLS = ["mysql://u:pw@db/ledger", "sqlite://", "sqlite:///", "postgresql://u:pw@db/", "/var/lib/l.db"]
# urlsplit and SplitResult.port raise ValueError for these:
BAD_URLS += ["postgresql://u:pw@db:notaport/ledger", "postgresql://u:pw@db:99999/ledger"]
BAD_URLS += ["postgresql://u:pw@[::1/ledger"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_persistence_env_rejects_with_configuration_error(url: str) -> None:
    """[protocol: Store, then answer]: every bad LEDGER_DATABASE_URL is a ConfigurationError naming it (never
    a ValueError)."""
    with pytest.raises(ConfigurationError) as exc:
        persistence_env(url)
    assert exc.value.setting == "LEDGER_DATABASE_URL"
    assert ":pw@" not in str(exc.value)


def test_webhook_settings_default_and_from_the_environment(env: dict[str, str]) -> None:
    """The outbound webhooks' dispatcher reads the same Settings as everything else."""
    defaults = Settings.load(env)
    assert (defaults.webhook_retry_schedule, defaults.webhook_timeout, defaults.webhook_disable_after) == (
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        10.0,
        5 * 24 * 3600.0,
    )
    env |= {
        "LEDGER_WEBHOOK_RETRY_SCHEDULE": " 1, 2.5,60 ",
        "LEDGER_WEBHOOK_TIMEOUT": "2.5",
        "LEDGER_WEBHOOK_DISABLE_AFTER": "3600",
    }
    settings = Settings.load(env)
    assert (settings.webhook_retry_schedule, settings.webhook_timeout, settings.webhook_disable_after) == (
        (1.0, 2.5, 60.0),
        2.5,
        3600.0,
    )


def test_webhook_and_reconcile_settings_from_the_toml_file(two_merchants: Path) -> None:
    """Schedules as a TOML array of seconds or as the environment's comma-separated text."""
    text = two_merchants.read_text(encoding="utf-8")
    head = toml_table(
        {
            "webhook_retry_schedule": [1, 30, 600],
            "LEDGER_WEBHOOK_TIMEOUT": 3,
            "webhook_disable_after": "7200",
            "reconcile_schedule": "2,4",
        }
    )
    two_merchants.write_text(head + text, encoding="utf-8")
    settings = Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert (settings.webhook_retry_schedule, settings.webhook_timeout, settings.webhook_disable_after) == (
        (1.0, 30.0, 600.0),
        3.0,
        7200.0,
    )
    assert settings.reconcile_schedule == (2.0, 4.0)
    # The environment wins over the file, as for every other setting.
    from_env = Settings.load({"LEDGER_CONFIG": str(two_merchants), "LEDGER_WEBHOOK_TIMEOUT": "4"})
    assert from_env.webhook_timeout == 4.0


@pytest.mark.parametrize("schedule", ["[]", '["1", "2"]', "[1, true]", "[[1]]"])
def test_toml_schedule_must_be_seconds(two_merchants: Path, schedule: str) -> None:
    text = two_merchants.read_text(encoding="utf-8")
    two_merchants.write_text(f"webhook_retry_schedule = {schedule}\n" + text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({"LEDGER_CONFIG": str(two_merchants)})
    assert exc.value.setting == "LEDGER_CONFIG: webhook_retry_schedule"
