"""`/openapi.json` describes the app exactly, and the app keeps every promise it makes (schemathesis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from starlette.routing import Route

from api.app import create_app
from api.openapi import OPENAPI_PATH, openapi_document
from ledger.settings import Settings
from ledger.wechatpay.sandbox.server import Sandbox
from tests.support.servers import running

TOKEN = "t0ken-for-the-tests-only-0123456789"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "trace"}


def app_operations(app: Any) -> set[tuple[str, str]]:
    """(path, method) for every route the app serves, HEAD aside (Starlette adds it to every GET)."""
    found = set()
    for route in app.routes:
        if getattr(route, "path", "").startswith("/ui"):
            continue  # HTML pages for people, not part of the JSON API
        assert isinstance(route, Route), f"{route!r}: describe mounts and websockets too"
        for method in route.methods or ():
            if method != "HEAD":
                found.add((route.path, method.lower()))
    return found


def described_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


@pytest.fixture
def sandbox_env(tmp_path: Path, sqlite_url: str) -> Iterator[dict[str, str]]:
    """Settings for a ledger whose WeChat Pay is a local sandbox: queries never leave loopback."""
    sandbox = Sandbox(seed=3)
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        yield {**env, "LEDGER_DATABASE_URL": sqlite_url, "LEDGER_ADMIN_TOKEN": TOKEN}


def test_the_description_is_valid_openapi_3_1() -> None:
    schemathesis.openapi.from_dict(openapi_document()).validate()  # against the OpenAPI 3.1 metaschema
    broken = openapi_document()
    broken["paths"]["/healthz"]["get"]["responses"] = {"ok": {}}
    with pytest.raises(Exception, match="ok"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_route_is_described_and_every_description_is_a_route(sandbox_env: dict[str, str]) -> None:
    app = create_app(Settings.load(sandbox_env), background=False)
    assert app_operations(app) == described_operations(openapi_document())


def test_openapi_json_is_served_without_the_token_and_names_the_bearer_scheme(sandbox_env: dict[str, str]) -> None:
    with running(create_app(Settings.load(sandbox_env), background=False)) as url:
        response = httpx.get(url + OPENAPI_PATH)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["adminToken"] == {"type": "http", "scheme": "bearer"}
    open_ops = {
        (path, method)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if op.get("security") == []
    }
    assert open_ops == {
        ("/wechatpay/notify", "post"),
        ("/wechatpay/notify/{mchid}", "post"),
        ("/wechatpay/v2/notify", "post"),
        ("/wechatpay/v2/notify/{mchid}", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        (OPENAPI_PATH, "get"),
    }
    for path, method in described_operations(document) - open_ops:
        assert "401" in document["paths"][path][method]["responses"], (path, method)


@pytest.fixture
def app(sandbox_env: dict[str, str]) -> Any:
    return create_app(Settings.load(sandbox_env), background=False)


# Loaded from the module, not from the app's answer, so that each operation is a test of its own
# (schemathesis' fixture-based loader does not work with pytest 9); the test above shows both agree.
schema = schemathesis.openapi.from_dict(
    openapi_document(),
    config=SchemathesisConfig.from_dict(
        {
            "base-url": "http://testserver",
            # Unknown query parameters are ignored by design (documented), not errors.
            "generation": {"allow-extra-parameters": False},
            "checks": {
                # "Schema-valid" mchids are still refused unless configured, a runtime fact the
                # description cannot state as a schema; every other check runs.
                "positive_data_acceptance": {"enabled": False},
            },
            "operations": [
                {
                    # The sandbox WeChat Pay answers ORDER_NOT_EXIST for generated orders: 502, as described.
                    "include-operation-id": "queryOrder",
                    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502"]}},
                },
                {
                    # The sandbox refuses a bill_date it finds absurd (PARAM_ERROR): a failed run, 502 as described.
                    "include-operation-id": "reconcileBill",
                    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502"]}},
                },
            ],
        }
    ),
)


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_app_keeps_the_promises_of_its_description(app: Any, case: Any) -> None:
    # The module's schema and this operation, pointed at this test's app (in-process ASGI).
    case.operation.schema.app = case.operation.app = app
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
