"""The package layers, enforced: every import in the package code (at module top or inside a
function) is checked against the rules that docs/architecture.md draws.

    cli/          the command line, the demo, dev mode: may import everything below
    api/          the HTTP app: ledger/ and projections/
    projections/  everything derived from the log: ledger/ only
    ledger/       domain, application, storage, the WeChat Pay protocol: nothing above

And in tests/: no module imports a test module or conftest (shared helpers are in tests/support).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ledger", "projections", "api", "cli")
SANDBOX = "ledger.wechatpay.sandbox"
DRIVERS = ("psycopg", "psycopg_pool", "sqlite3", "eventsourcing.postgres", "eventsourcing.sqlite")
# The aggregates: orders and inboxes (with what an order asks of WeChat), daily bills.
DOMAIN = ("ledger.domain", "ledger.order_requests", "ledger.order_actions", "ledger.statements", "ledger.journal")
DOMAIN_IMPORTS = (
    "ledger.hashchain",
    "ledger.evidence",
    "ledger.identity",
    "ledger.anomalies",
    "ledger.order_requests",
    "ledger.order_actions",
    "ledger.errors",
)
DOMAIN_RULE = f"the domain imports only {', '.join(DOMAIN_IMPORTS[:-1])} and {DOMAIN_IMPORTS[-1]} of ours"
DRIVER_RULE = "only ledger/store/ knows the database drivers and the library's backends"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, wherever it stands."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(module: str, imported: str) -> str | None:
    """Why `module` may not import `imported`, or None when it may."""
    top = imported.split(".")[0]
    if _within(module, "ledger") and top in ("api", "projections", "cli"):
        return "ledger/ imports nothing above it"
    if _within(module, "projections") and top in ("api", "cli"):
        return "projections/ imports ledger/ only"
    if _within(module, "api") and top == "cli":
        return "api/ does not import the command line"
    if _within(imported, SANDBOX) and not (_within(module, "cli") or _within(module, SANDBOX)):
        return "the sandbox is imported only by cli/, tests and benches"
    if _within(module, "ledger.wechatpay") and not _within(module, SANDBOX):
        if top == "ledger" and not (_within(imported, "ledger.wechatpay") or _within(imported, "ledger.errors")):
            return "the protocol package imports only ledger.errors and itself"
        if top == "starlette":
            return "the protocol package knows no web framework"
    # ledger.errors and ledger.evidence import nothing of ours, so the domain can raise the tree's own
    # errors and take the evidence the protocol layer builds.
    if module in ("ledger.errors", "ledger.evidence") and top in PACKAGES:
        return "the error tree and the evidence import nothing of ours"
    if module == "ledger.identity" and top in PACKAGES and not _within(imported, "ledger.evidence"):
        return "the identities import only ledger.evidence of ours"
    if module in DOMAIN and top == "ledger":
        if not any(_within(imported, allowed) for allowed in DOMAIN_IMPORTS):
            return DOMAIN_RULE
    if any(_within(imported, driver) for driver in DRIVERS) and not _within(module, "ledger.store"):
        return DRIVER_RULE
    return None


def package_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def broken_imports() -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}: {why}"
        for path in package_files()
        for line, name in imports(path)
        if (why := violations(_module(path), name)) is not None
    ]


def test_every_import_in_the_package_code_respects_the_layers() -> None:
    assert [b for b in broken_imports() if not b.endswith(DRIVER_RULE)] == []


def test_only_the_store_imports_database_drivers() -> None:
    assert [b for b in broken_imports() if b.endswith(DRIVER_RULE)] == []


@pytest.mark.parametrize(
    ("module", "imported", "rule"),
    [
        ("ledger.application", "api.app", "ledger/ imports nothing above it"),
        ("ledger.application", "projections.webhooks.outbox", "ledger/ imports nothing above it"),
        ("projections.timeline", "api.responses", "projections/ imports ledger/ only"),
        ("api.app", "cli.main", "api/ does not import the command line"),
        ("api.app", "ledger.wechatpay.sandbox.signer", "the sandbox is imported only by cli/, tests and benches"),
        ("ledger.wechatpay.client", "ledger.domain", "the protocol package imports only ledger.errors and itself"),
        ("ledger.wechatpay.notification", "starlette.requests", "the protocol package knows no web framework"),
        ("ledger.domain", "ledger.settings", DOMAIN_RULE),
        ("ledger.statements", "ledger.domain", DOMAIN_RULE),
        ("ledger.statements", "ledger.bill_evidence", DOMAIN_RULE),
        ("ledger.errors", "ledger.settings", "the error tree and the evidence import nothing of ours"),
        ("ledger.evidence", "ledger.hashchain", "the error tree and the evidence import nothing of ours"),
        ("ledger.identity", "ledger.domain", "the identities import only ledger.evidence of ours"),
        ("projections.read_model.view", "psycopg.sql", DRIVER_RULE),
    ],
)
def test_the_rules_catch_what_they_forbid(module: str, imported: str, rule: str) -> None:
    assert violations(module, imported) == rule


def test_what_the_rules_allow() -> None:
    allowed = [
        ("cli.main", "api.app"),
        ("cli.dev", "ledger.wechatpay.sandbox.signer"),
        ("api.orders", "projections.timeline"),
        ("projections.webhooks.outbox", "ledger.store.sql"),
        ("ledger.wechatpay.sandbox.api", "starlette.applications"),
        ("ledger.domain", "ledger.hashchain"),
        ("ledger.domain", "ledger.errors"),
        ("ledger.domain", "ledger.evidence"),
        ("ledger.domain", "ledger.identity"),
        ("ledger.identity", "ledger.evidence"),
        ("ledger.statements", "ledger.hashchain"),
        ("ledger.statements", "ledger.errors"),
        ("ledger.store.postgres", "psycopg"),
    ]
    assert [pair for pair in allowed if violations(*pair) is not None] == []


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from api.app import create_app\n")
    assert imports(source) == [(1, "os"), (4, "api.app"), (4, "api.app.create_app")]


def _imports_resolved(path: Path, module: str) -> list[tuple[int, str]]:
    """`imports`, plus relative imports resolved against `module` (tests/ is a package)."""
    found = imports(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _test_module_imports(path: Path, module: str) -> list[str]:
    """Imports of a test module or of conftest: helpers belong in tests/support, fixtures in conftest."""
    found = []
    for line, name in sorted(_imports_resolved(path, module)):
        first = name.removeprefix("tests.").split(".")[0]
        if first.startswith("test_") or first == "conftest":
            found.append(f"{path.name}:{line} imports {name}")
    return found


def test_no_test_module_imports_another_or_the_conftest(tmp_path: Path) -> None:
    """What tests share is in tests/support (helpers) and tests/conftest.py (fixtures, used by
    name and never imported), so a test module can be read, moved or deleted on its own."""
    assert [
        problem
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for problem in _test_module_imports(path, _module(path))
    ] == []
    source = tmp_path / "test_m.py"
    source.write_text(
        "from tests.test_metrics import service\nfrom .test_cli import payledger\nfrom . import test_deploy\n"
        "from tests.conftest import MCHID\nimport conftest\nfrom tests.support.fakes import FakeClock\n"
        "from tests.support import servers\nimport test_x_helpers\n"
    )
    assert _test_module_imports(source, "tests.test_m") == [
        "test_m.py:1 imports tests.test_metrics",
        "test_m.py:1 imports tests.test_metrics.service",
        "test_m.py:2 imports tests.test_cli",
        "test_m.py:2 imports tests.test_cli.payledger",
        "test_m.py:3 imports tests.test_deploy",
        "test_m.py:4 imports tests.conftest",
        "test_m.py:4 imports tests.conftest.MCHID",
        "test_m.py:5 imports conftest",
        "test_m.py:8 imports test_x_helpers",
    ]
