"""Settings, read once at start-up from the environment and an optional TOML file.

One merchant comes from ``WECHATPAY_*`` variables; several from ``[[merchants]]`` tables in
the file named by ``LEDGER_CONFIG`` (same keys, with or without the ``WECHATPAY_`` prefix, any
case). Every problem is a `ConfigurationError` naming the setting, raised here and not at
the first callback. Secrets are masked in every ``repr``.

Every setting of the service lives here, in one frozen `Settings`: the HTTP service, the
reconciler, the outbound webhooks' dispatcher and the projectors all read the same object,
built by `Settings.load` and handed to `api.bootstrap.bootstrap`. Each default is written once,
as the field's default; `load` reads it from there.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ledger.endpoint_urls import BROKER_SCHEMES, url_problem
from ledger.errors import ConfigurationError
from ledger.store.backends import persistence_env
from ledger.store.cipher import SETTING as ENCRYPTION_KEYS_SETTING
from ledger.store.cipher import parse_keys
from ledger.wechatpay.client import DEFAULT_BASE_URL as DEFAULT_API_BASE_URL
from ledger.wechatpay.keys import PUBLIC_KEY_ID_PREFIX, KeyStore
from ledger.wechatpay.v2 import check_v2_key

__all__ = [
    "DEFAULT_API_BASE_URL",
    "RECONCILE_EXPIRY",
    "RECONCILE_SCHEDULE",
    "WEBHOOK_RETRY_SCHEDULE",
    "EndpointSettings",
    "MerchantSettings",
    "Secret",
    "Settings",
]

DEFAULT_DATABASE_URL = "sqlite:///payledger.sqlite3"
_N = TypeVar("_N", int, float)
DAY = 24 * 3600

_MERCHANT_KEYS = {
    "WECHATPAY_MCHID",
    "WECHATPAY_APPID",
    "WECHATPAY_APIV3_KEY",
    "WECHATPAY_MERCHANT_SERIAL_NO",
    "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE",
    "WECHATPAY_PUBLIC_KEY_ID",
    "WECHATPAY_PUBLIC_KEY_FILE",
    "WECHATPAY_PLATFORM_CERT_DIR",
    "WECHATPAY_API_BASE_URL",
    "WECHATPAY_MODE",
    "WECHATPAY_SUB_MCHIDS",
    "WECHATPAY_V2_KEY",
}
_LEDGER_KEYS = {
    "LEDGER_DATABASE_URL",
    "LEDGER_SHARD",
    "LEDGER_ADMIN_TOKEN",
    "LEDGER_MAX_BODY_BYTES",
    "LEDGER_WORKER_THREADS",
    "LEDGER_LOG_LEVEL",
    "LEDGER_RECONCILE_SCHEDULE",
    "LEDGER_RECONCILE_EXPIRY",
    "LEDGER_RECONCILE_QPS",
    "LEDGER_CERT_REFRESH_INTERVAL",
    "LEDGER_LOG_FORMAT",
    "LEDGER_READY_MAX_LAG",
    "LEDGER_BODY_READ_TIMEOUT",
    "LEDGER_WEBHOOK_RETRY_SCHEDULE",
    "LEDGER_WEBHOOK_TIMEOUT",
    "LEDGER_WEBHOOK_DISABLE_AFTER",
    "LEDGER_PUBLIC_URL",
    "LEDGER_CLOSE_AFTER",
}
# Seconds between reconciliation queries: a few seconds, then minutes, then hours; the last repeats.
RECONCILE_SCHEDULE = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
# Seconds after registration when an order still unpaid stops being queried.
RECONCILE_EXPIRY = 7 * DAY
# Seconds before each retry of an outbound webhook (Standard Webhooks' suggestion, about 3 days in all).
WEBHOOK_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
_MCHID = re.compile(r"[0-9]{6,32}")
_APPID = re.compile(r"w[xw][0-9A-Za-z]{16}")
_HEX_SERIAL = re.compile(r"[0-9A-Fa-f]{1,64}")
_PUBLIC_KEY_ID = re.compile(re.escape(PUBLIC_KEY_ID_PREFIX) + r"[0-9A-Za-z_]{1,64}")


@dataclass(frozen=True)
class Secret:
    """A value that never shows in a repr, a str or a log line."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class MerchantSettings:
    mchid: str
    apiv3_key: Secret
    keys: KeyStore = field(repr=False, compare=False)
    appid: str | None = None
    merchant_serial_no: str | None = None
    merchant_private_key: RSAPrivateKey | None = field(default=None, repr=False, compare=False)
    public_key_id: str | None = None
    platform_cert_dir: Path | None = None
    api_base_url: str = DEFAULT_API_BASE_URL
    mode: str = "direct"  # "partner": `mchid` is a service provider's sp_mchid, every key is the provider's
    sub_mchids: frozenset[str] | None = None  # partner mode: the sub-merchants served (None: not listed)
    v2_key: Secret | None = None  # the APIv2 key, for legacy XML notifications
    # The store of this merchant's events, views and workers ([[merchants]] `database_url`); None: the
    # ledger's (LEDGER_DATABASE_URL). Merchants on different stores are shards (`Settings.shards`).
    database_url: Secret | None = field(default=None, compare=False)

    @property
    def partner(self) -> bool:
        return self.mode == "partner"

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], where: str = "") -> MerchantSettings:
        """Build from ``WECHATPAY_*`` keys; `where` prefixes setting names in errors."""

        def name(key: str) -> str:
            return f"{where}{key}"

        def get(key: str) -> str | None:
            value = values.get(key)
            if value is None:
                return None
            value = str(value).strip()
            return value or None

        mchid = get("WECHATPAY_MCHID")
        if mchid is None:
            raise ConfigurationError(name("WECHATPAY_MCHID"), "is required")
        if not _MCHID.fullmatch(mchid):
            raise ConfigurationError(name("WECHATPAY_MCHID"), "must be the merchant's numeric id")

        appid = get("WECHATPAY_APPID")
        if appid is not None and not _APPID.fullmatch(appid):
            raise ConfigurationError(
                name("WECHATPAY_APPID"), "must look like wx (or ww) followed by 16 letters or digits"
            )

        apiv3 = get("WECHATPAY_APIV3_KEY")
        if apiv3 is None:
            raise ConfigurationError(name("WECHATPAY_APIV3_KEY"), "is required")
        if len(apiv3.encode()) != 32:
            raise ConfigurationError(name("WECHATPAY_APIV3_KEY"), "must be exactly 32 bytes")

        def both_or_neither(first: str, second: str, problem: str) -> tuple[str | None, str | None]:
            a, b = get(first), get(second)
            if (a is None) != (b is None):
                raise ConfigurationError(name(second if b is None else first), problem)
            return a, b

        serial_no, key_file = both_or_neither(
            "WECHATPAY_MERCHANT_SERIAL_NO",
            "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE",
            "is required with the other merchant key setting",
        )
        if serial_no is not None and not _HEX_SERIAL.fullmatch(serial_no):
            raise ConfigurationError(
                name("WECHATPAY_MERCHANT_SERIAL_NO"), "must be the hex serial of the merchant API certificate"
            )
        private_key = None
        if key_file is not None:
            private_key = _load_private_key(Path(key_file), name("WECHATPAY_MERCHANT_PRIVATE_KEY_FILE"))

        public_key_id, public_key_file = both_or_neither(
            "WECHATPAY_PUBLIC_KEY_ID",
            "WECHATPAY_PUBLIC_KEY_FILE",
            "is required in public-key mode (set both or neither)",
        )
        if public_key_id is not None and not _PUBLIC_KEY_ID.fullmatch(public_key_id):
            raise ConfigurationError(name("WECHATPAY_PUBLIC_KEY_ID"), f"must start with {PUBLIC_KEY_ID_PREFIX}")
        cert_dir = get("WECHATPAY_PLATFORM_CERT_DIR")
        if public_key_id is None and cert_dir is None:
            raise ConfigurationError(
                name("WECHATPAY_PUBLIC_KEY_ID"),
                "no verification key: set WECHATPAY_PUBLIC_KEY_ID and WECHATPAY_PUBLIC_KEY_FILE, "
                "or WECHATPAY_PLATFORM_CERT_DIR, or both",
            )
        keys = KeyStore.load(
            public_key_id=public_key_id,
            public_key_file=Path(public_key_file) if public_key_file else None,
            platform_cert_dir=Path(cert_dir) if cert_dir else None,
            setting_prefix=f"{where}WECHATPAY_",
        )

        base_url = get("WECHATPAY_API_BASE_URL") or DEFAULT_API_BASE_URL
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigurationError(name("WECHATPAY_API_BASE_URL"), "must be an http(s) URL")

        mode = (get("WECHATPAY_MODE") or "direct").lower()
        if mode not in {"direct", "partner"}:
            raise ConfigurationError(name("WECHATPAY_MODE"), "must be direct or partner")
        sub_mchids = None
        listed = get("WECHATPAY_SUB_MCHIDS")
        if listed is not None:
            if mode != "partner":
                raise ConfigurationError(name("WECHATPAY_SUB_MCHIDS"), "is for WECHATPAY_MODE=partner only")
            sub_mchids = frozenset(part.strip() for part in listed.split(",") if part.strip())
            if not sub_mchids or not all(_MCHID.fullmatch(sub) for sub in sub_mchids):
                raise ConfigurationError(name("WECHATPAY_SUB_MCHIDS"), "must be comma-separated numeric merchant ids")
        v2_key = get("WECHATPAY_V2_KEY")
        if v2_key is not None:
            check_v2_key(v2_key, name("WECHATPAY_V2_KEY"))

        return cls(
            mchid=mchid,
            mode=mode,
            sub_mchids=sub_mchids,
            v2_key=Secret(v2_key) if v2_key is not None else None,
            apiv3_key=Secret(apiv3),
            keys=keys,
            appid=appid,
            merchant_serial_no=serial_no.upper() if serial_no else None,
            merchant_private_key=private_key,
            public_key_id=public_key_id,
            platform_cert_dir=Path(cert_dir) if cert_dir else None,
            api_base_url=base_url.rstrip("/"),
        )


def _load_private_key(path: Path, setting: str) -> RSAPrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigurationError(setting, f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigurationError(setting, f"{path} is not an RSA private key")
    return key


def _raw(values: Mapping[str, str], key: str) -> str | None:
    raw = values.get(key)
    return None if raw is None or str(raw).strip() == "" else str(raw).strip()


def _number_setting(values: Mapping[str, str], key: str, default: _N, low: _N, high: _N) -> _N:
    """An integer or a number of seconds (whichever type the default has), within its bounds."""
    raw = _raw(values, key)
    if raw is None:
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(key, "must be an integer" if kind is int else "must be a number of seconds") from None
    if not low <= value <= high:
        bounds = f"{low} and {high}" if kind is int else f"{low:g} and {high:g} seconds"
        raise ConfigurationError(key, f"must be between {bounds}")
    return value


def _schedule_setting(values: Mapping[str, str], key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated seconds (a TOML array of numbers is accepted too); the last step repeats."""
    raw = _raw(values, key)
    if raw is None:
        return default
    try:
        steps = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ConfigurationError(key, "must be comma-separated seconds") from None
    if not steps or any(not 0 < step <= 7 * DAY for step in steps):
        raise ConfigurationError(key, "each step must be between 0 and 604800 seconds")
    return steps


def _normalise_keys(table: Mapping[str, Any], prefix: str, allowed: set[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in table.items():
        upper = key.upper()
        full = upper if upper.startswith(prefix) else prefix + upper
        if full not in allowed:
            raise ConfigurationError(f"{where}{key}", "is not a known setting")
        if isinstance(value, list) and full.endswith("_SCHEDULE") and value:
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
                raise ConfigurationError(f"{where}{key}", "must be an array of seconds")
            value = ",".join(str(x) for x in value)
        if isinstance(value, (dict, list)):
            raise ConfigurationError(f"{where}{key}", "must be a string or number")
        out[full] = str(value)
    return out


_ENDPOINT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True)
class EndpointSettings:
    """A business system that receives outbound notifications, configured in the file."""

    id: str
    url: str = field(repr=False)  # a broker's URL may hold its password
    secrets: tuple[Secret, ...] = field(repr=False)
    events: tuple[str, ...] | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> EndpointSettings:
        unknown = set(table) - {"id", "url", "secret", "secrets", "events"}
        if unknown:
            raise ConfigurationError(f"{where}{sorted(unknown)[0]}", "is not a known endpoint setting")
        endpoint_id = str(table.get("id", ""))
        if not _ENDPOINT_ID.fullmatch(endpoint_id):
            raise ConfigurationError(f"{where}id", "is required: 1-64 letters, digits, '_', '-', '.'")
        url = str(table.get("url", ""))
        problem = url_problem(url)
        if problem is not None:  # never quoting the URL: it may hold a broker's password
            raise ConfigurationError(f"{where}url", problem)
        secrets = table.get("secrets", [table["secret"]] if "secret" in table else [])
        broker = urlsplit(url).scheme.lower() in BROKER_SCHEMES  # a broker's messages are not signed
        if not isinstance(secrets, list) or not (secrets or broker) or not all(isinstance(x, str) for x in secrets):
            raise ConfigurationError(f"{where}secret", "is required: whsec_<base64 key> (or a list, secrets)")
        for secret in secrets:
            if not _WHSEC.fullmatch(secret):
                raise ConfigurationError(f"{where}secret", "must look like whsec_<base64 key>")
        events = table.get("events")
        if events is not None and (not isinstance(events, list) or not all(isinstance(e, str) for e in events)):
            raise ConfigurationError(f"{where}events", "must be a list of event types")
        return cls(endpoint_id, url, tuple(Secret(x) for x in secrets), tuple(events) if events else None)


@dataclass(frozen=True)
class Settings:
    database_url: Secret
    merchants: tuple[MerchantSettings, ...]
    admin_token: Secret | None = None
    max_body_bytes: int = 64 * 1024
    worker_threads: int = 16
    log_level: str = "INFO"
    reconcile_schedule: tuple[float, ...] = RECONCILE_SCHEDULE
    reconcile_expiry: int = RECONCILE_EXPIRY
    reconcile_qps: int = 10
    cert_refresh_interval: int = 3600
    endpoints: tuple[EndpointSettings, ...] = ()
    encryption_keys: tuple[Secret, ...] = field(default=(), repr=False)
    # None: text when stderr is a terminal, JSON otherwise (see ledger.logs).
    log_format: str | None = None
    ready_max_lag: int = 10_000
    # Seconds a client may take to send a notification body (a slow-loris holds a worker otherwise).
    body_read_timeout: int = 10
    # Outbound webhooks: seconds before each retry, per request, and failing before an endpoint is disabled.
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    webhook_timeout: float = 10.0
    webhook_disable_after: float = 5 * DAY
    # Where WeChat Pay reaches this service (https://host[:port][/prefix]): refunds asked through the
    # ledger name `<public_url>/wechatpay/notify/<mchid>` as their notify_url. None: none is named, and
    # WeChat notifies the merchant's configured refund URL (or none; a refund query decides it then).
    public_url: str | None = None
    # Seconds after registration when the reconciler closes an order still unpaid (NOTPAY) after a last
    # query, so that a payer can no longer pay it late; None (the default): never.
    close_after: int | None = None
    # A sharded ledger (merchants on several stores): the mchid whose store the commands that act on
    # one store (verify --all, rebuild, the workers when set) use; None: every store, or the first
    # merchant's for a command that acts on one.
    shard: str | None = None

    def shards(self) -> tuple[Settings, ...]:
        """The ledger split by store: one Settings per database, with the merchants whose events it
        holds (the first merchant's store first). A ledger on one store is its own only shard."""
        groups: dict[str, list[MerchantSettings]] = {}
        for merchant in self.merchants:
            url = merchant.database_url.value if merchant.database_url is not None else self.database_url.value
            groups.setdefault(url, []).append(merchant)
        if len(groups) <= 1:
            return (self,)
        return tuple(replace(self, database_url=Secret(url), merchants=tuple(m)) for url, m in groups.items())

    def shard_of(self, mchid: str | None) -> Settings:
        """The shard that holds merchant `mchid` (an unknown or no mchid: the first merchant's)."""
        shards = self.shards()
        return next((s for s in shards if s.merchant(mchid or "") is not None), shards[0])

    def notify_url(self, mchid: str) -> str | None:
        """The notify_url a refund of merchant `mchid` names (see `public_url`)."""
        return None if self.public_url is None else f"{self.public_url}/wechatpay/notify/{mchid}"

    @property
    def default_merchant(self) -> MerchantSettings | None:
        return self.merchants[0] if self.merchants else None

    def merchant(self, mchid: str) -> MerchantSettings | None:
        for merchant in self.merchants:
            if merchant.mchid == mchid:
                return merchant
        return None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, *, require_merchant: bool = True) -> Settings:
        env = dict(os.environ if environ is None else environ)
        top: dict[str, str] = {}
        merchants: list[MerchantSettings] = []
        endpoints: list[EndpointSettings] = []
        config_path = env.get("LEDGER_CONFIG", "").strip()
        if config_path:
            top, merchants, endpoints = _read_config_file(Path(config_path))
        top.update({k: v for k, v in env.items() if k in _LEDGER_KEYS})
        if env.get("WECHATPAY_MCHID", "").strip():
            merchant = MerchantSettings.from_mapping({k: v for k, v in env.items() if k in _MERCHANT_KEYS})
            merchants = [m for m in merchants if m.mchid != merchant.mchid]
            merchants.insert(0, merchant)
        if require_merchant and not merchants:
            raise ConfigurationError(
                "WECHATPAY_MCHID", "no merchant configured (set WECHATPAY_* variables or LEDGER_CONFIG)"
            )
        seen: set[str] = set()
        for merchant in merchants:
            if merchant.mchid in seen:
                raise ConfigurationError("WECHATPAY_MCHID", f"merchant {merchant.mchid} configured twice")
            seen.add(merchant.mchid)

        database_url = top.get("LEDGER_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
        persistence_env(database_url)  # validates the URL
        token = top.get("LEDGER_ADMIN_TOKEN", "").strip()
        if token and len(token) < 16:
            raise ConfigurationError("LEDGER_ADMIN_TOKEN", "must be at least 16 characters")
        level = top.get("LEDGER_LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigurationError("LEDGER_LOG_LEVEL", "must be DEBUG, INFO, WARNING or ERROR")
        log_format = top.get("LEDGER_LOG_FORMAT", "").strip().lower() or None
        if log_format not in {None, "json", "text"}:
            raise ConfigurationError("LEDGER_LOG_FORMAT", "must be json or text")
        shard = top.get("LEDGER_SHARD", "").strip() or None
        if shard is not None and shard not in seen:
            raise ConfigurationError("LEDGER_SHARD", "must be the mchid of a configured merchant")
        return cls(
            shard=shard,
            public_url=_public_url(top.get("LEDGER_PUBLIC_URL", "")),
            close_after=_number_setting(top, "LEDGER_CLOSE_AFTER", 0, 60, 400 * DAY) or None,
            database_url=Secret(database_url),
            merchants=tuple(merchants),
            admin_token=Secret(token) if token else None,
            log_level=level,
            endpoints=tuple(endpoints),
            encryption_keys=_encryption_keys(env),
            log_format=log_format,
            **_numbers(top),
            reconcile_schedule=_schedule_setting(top, "LEDGER_RECONCILE_SCHEDULE", RECONCILE_SCHEDULE),
            webhook_retry_schedule=_schedule_setting(top, "LEDGER_WEBHOOK_RETRY_SCHEDULE", WEBHOOK_RETRY_SCHEDULE),
        )


def _public_url(value: str) -> str | None:
    """LEDGER_PUBLIC_URL: an https URL (http only for 127.0.0.1 / localhost, for tests and the sandbox)."""
    value = value.strip().rstrip("/")
    if not value:
        return None
    parts = urlsplit(value)
    local = parts.hostname in {"127.0.0.1", "localhost"}
    if parts.scheme not in ({"https", "http"} if local else {"https"}) or not parts.netloc:
        raise ConfigurationError("LEDGER_PUBLIC_URL", "must be an https URL (WeChat Pay notifies only https)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError("LEDGER_PUBLIC_URL", "must have no query, fragment or credentials")
    return value


# Numeric settings: field -> (setting, lowest, highest); the default is the field's.
_INTS: dict[str, tuple[str, int, int]] = {
    "max_body_bytes": ("LEDGER_MAX_BODY_BYTES", 1024, 16 * 1024 * 1024),
    "worker_threads": ("LEDGER_WORKER_THREADS", 1, 256),
    "reconcile_expiry": ("LEDGER_RECONCILE_EXPIRY", 60, 400 * DAY),
    "reconcile_qps": ("LEDGER_RECONCILE_QPS", 1, 1000),
    "cert_refresh_interval": ("LEDGER_CERT_REFRESH_INTERVAL", 60, 7 * DAY),
    "ready_max_lag": ("LEDGER_READY_MAX_LAG", 0, 10**12),
    "body_read_timeout": ("LEDGER_BODY_READ_TIMEOUT", 1, 60),
}
_FLOATS: dict[str, tuple[str, float, float]] = {
    "webhook_timeout": ("LEDGER_WEBHOOK_TIMEOUT", 0.1, 300.0),
    "webhook_disable_after": ("LEDGER_WEBHOOK_DISABLE_AFTER", 60.0, 400.0 * DAY),
}


def _numbers(top: Mapping[str, str]) -> dict[str, Any]:
    ints = {name: _number_setting(top, key, _default(name), low, high) for name, (key, low, high) in _INTS.items()}
    floats = {name: _number_setting(top, key, _default(name), low, high) for name, (key, low, high) in _FLOATS.items()}
    return ints | floats


def _default(name: str) -> Any:
    [default] = [f.default for f in fields(Settings) if f.name == name]
    assert default is not MISSING
    return default


def _encryption_keys(env: Mapping[str, str]) -> tuple[Secret, ...]:
    """Validated here so a bad key stops start-up; environment only, because the event store's
    cipher reads the same variable from the process environment in every process."""
    raw = env.get(ENCRYPTION_KEYS_SETTING, "")
    parse_keys(raw)
    return tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())


def _read_config_file(path: Path) -> tuple[dict[str, str], list[MerchantSettings], list[EndpointSettings]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError("LEDGER_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError("LEDGER_CONFIG", f"{path} is not valid TOML: {exc}") from None
    endpoint_tables = data.pop("endpoints", [])
    if not isinstance(endpoint_tables, list) or not all(isinstance(t, dict) for t in endpoint_tables):
        raise ConfigurationError("LEDGER_CONFIG", "endpoints must be an array of tables ([[endpoints]])")
    endpoints = [
        EndpointSettings.from_table(t, f"LEDGER_CONFIG endpoints[{i}].") for i, t in enumerate(endpoint_tables)
    ]
    if len({e.id for e in endpoints}) != len(endpoints):
        raise ConfigurationError("LEDGER_CONFIG", "two endpoints have the same id")
    tables = data.pop("merchants", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigurationError("LEDGER_CONFIG", "merchants must be an array of tables ([[merchants]])")
    top = _normalise_keys(data, "LEDGER_", _LEDGER_KEYS, "LEDGER_CONFIG: ")
    merchants = [_merchant_table(t, f"LEDGER_CONFIG merchants[{i}].") for i, t in enumerate(tables)]
    return top, merchants, endpoints


def _merchant_table(table: Mapping[str, Any], where: str) -> MerchantSettings:
    """A [[merchants]] table: the WECHATPAY_* settings, and the merchant's own store (`database_url`)."""
    fields_ = dict(table)
    url = fields_.pop("database_url", None)
    merchant = MerchantSettings.from_mapping(_normalise_keys(fields_, "WECHATPAY_", _MERCHANT_KEYS, where), where=where)
    if url is None:
        return merchant
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{where}database_url", "must be a database URL")
    try:
        persistence_env(url.strip())
    except ConfigurationError:
        raise ConfigurationError(f"{where}database_url", "is not a sqlite:/// or postgresql:// URL") from None
    return replace(merchant, database_url=Secret(url.strip()))
