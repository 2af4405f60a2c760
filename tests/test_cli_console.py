"""`payledger` explains itself: help on every command and option, exit codes in `--help` and in
docs/cli.md, `--version`, `--json` documents with the keys docs/cli.md lists, tables plain when
piped, and progress bars (rate, ETA) on stderr only when it is a terminal.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_parser, main
from cli.output import Column, progress, table
from ledger.audit.integrity import Break
from ledger.bill_matching import Discrepancy, DiscrepancyKind
from ledger.store.cipher import SETTING
from projections.bills.reports import BillReport
from projections.reconcile.reconciler import Change
from tests.support.audit_world import NO, audit_world
from tests.support.cli import CLI, clean_env, payledger

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(("endpoints", "add"), its parser) for `payledger` itself and every (sub)command under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def section(title: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


# -- help, exit codes, version --------------------------------------------------------------------------


def test_every_command_and_option_has_a_help_text() -> None:
    missing = []
    for path, parser in commands(build_parser()):
        where = " ".join(("payledger", *path))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{where} {choice.dest}" for choice in action._choices_actions if not choice.help]
            if not action.help:
                missing.append(f"{where} {action.option_strings or action.dest}")
    assert missing == []


def test_help_on_every_command_lists_its_options_and_ends_with_its_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen = 0
    for path, parser in commands(build_parser()):
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {' '.join(('payledger', *path))}")
        for action in parser._actions:
            if action.help != argparse.SUPPRESS:
                assert all(option in out for option in action.option_strings), (path, action.option_strings)
        if path and is_leaf(parser):
            codes = out[out.index("\nexit codes:\n") :]
            assert re.search(r"^  0  \S", codes, re.M) and re.search(r"^  2  \S", codes, re.M), path
            seen += 1
    assert seen >= 20


def epilog_codes(parser: argparse.ArgumentParser) -> dict[str, str]:
    assert parser.epilog and parser.epilog.startswith("exit codes:\n")
    return dict(re.findall(r"^  (\d)  (.+)$", parser.epilog, re.M))


def test_docs_exit_code_table_says_what_each_commands_help_says() -> None:
    abbreviations = {
        "*failed*": "the command failed (the reason on stderr)",
        "*usage*": "the command line or the configuration is wrong (named on stderr)",
    }
    documented = {}
    for row in re.findall(r"^\| `payledger ([^`]+)` \| (.+) \|$", section("Exit codes"), re.M):
        cells = [cell.strip() for cell in row[1].split(" | ")]
        documented[row[0]] = {
            str(code): abbreviations.get(cell, cell) for code, cell in enumerate(cells) if cell != "—"
        }
    leaves = {" ".join(path): epilog_codes(p) for path, p in commands(build_parser()) if path and is_leaf(p)}
    assert documented == leaves


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"payledger {version('wechatpay-ledger')}\n"
    ran = payledger("--version")
    assert (ran.returncode, ran.stdout.strip()) == (0, f"payledger {version('wechatpay-ledger')}")


# -- tables and progress bars -----------------------------------------------------------------------------


ROWS = [
    ("ep_1", "enabled", "https://shop.example/[bold]hook", 1),
    ("ep_22", "disabled", "http://茶叶.example/\x1b[2J", 12),
]
COLUMNS: list[str | Column] = ["id", Column("state", styles={"disabled": "red"}), "url", Column("secrets", "right")]


def test_a_table_piped_is_plain_text_in_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    table(ROWS, COLUMNS, terminal=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines == [
        "id     state     url                              secrets",
        "ep_1   enabled   https://shop.example/[bold]hook        1",
        "ep_22  disabled  http://茶叶.example/\\x1b[2J           12",  # 汉字 take two cells
    ]


def test_a_table_on_a_terminal_is_drawn_by_rich_with_colour(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    table(ROWS, COLUMNS, terminal=True)
    out = capsys.readouterr().out
    assert "\x1b[1m" in out and "\x1b[31mdisabled" in out  # bold headers, the state in colour
    assert "[bold]" in out and "\\x1b[2J" in out  # a value's brackets are text; its control characters escaped
    assert "─" in out


def test_progress_is_shown_with_rate_and_eta_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    for terminal in (False, True):
        with progress(1000, "checking", unit="events", terminal=terminal) as bar:
            for done in range(0, 1001, 250):
                bar.update(done)
        err = capsys.readouterr().err
        if not terminal:
            assert err == "" and not bar.shown
        else:
            assert "checking" in err and "1000/1000" in err and "events/s" in err and "ETA" in err


# -- the commands' JSON, and their progress bars --------------------------------------------------------------


def documented_shapes() -> dict[str, tuple[bool, set[str], dict[str, set[str]]]]:
    """'verify --json' -> (a list?, its keys, {nested list name: its items' keys}) from docs/cli.md."""
    shapes = {}
    for command, prints in re.findall(r"^\| `payledger ([^`]+)` \| (.+) \|$", section("JSON output"), re.M):
        top = re.match(r"(a list of )?`\{([^}]*)\}`", prints)
        assert top, command
        nested = re.findall(r"`(\w+)` items: `\{([^}]*)\}`", prints)
        shapes[command] = (
            bool(top[1]),
            set(re.findall(r'"(\w+)"', top[2])),
            {name: set(re.findall(r'"(\w+)"', keys)) for name, keys in nested},
        )
    return shapes


def check_shape(document: Any, shape: tuple[bool, set[str], dict[str, set[str]]], seen: set[str]) -> None:
    is_list, keys, nested = shape
    items = document if is_list else [document]
    assert isinstance(items, list) and items and all(isinstance(item, dict) for item in items)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key in nested and isinstance(inner, list):
                    for item in inner:
                        assert set(item) == nested[key], key
                        seen.add(key)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    for item in items:
        assert set(item) == keys
        walk(item)


def a_terminal(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FORCE_COLOR": "1"}


def test_json_documents_have_the_documented_keys_and_long_work_shows_progress_only_on_a_terminal(
    tmp_path: Path, database_url: str
) -> None:
    shapes = documented_shapes()
    seen: set[str] = set()
    key = base64.b64encode(os.urandom(32)).decode()
    with audit_world(tmp_path, database_url, **{SETTING: key}) as w:
        env = {**clean_env(), **w.env}
        for command, argv in (
            ("history --json", ["history", NO, "--json"]),
            ("verify --json", ["verify", NO, "--json"]),
            ("verify --json", ["verify", "--all", "--json"]),
            ("rebuild --json", ["rebuild", "--json"]),
            ("rebuild notifications_view --json", ["rebuild", "notifications_view", "--json"]),
            ("rebuild activity_view --json", ["rebuild", "activity_view", "--json"]),
            ("reencrypt --json", ["reencrypt", "--json"]),
            ("certificates --json", ["certificates", "--json"]),
            ("reconcile --json", ["reconcile", "--json"]),
            ("endpoints list --json", ["endpoints", "list", "--json"]),
            ("deliveries list --json", ["deliveries", "list", "--json"]),
            ("dispatch --once --json", ["dispatch", "--once", "--json"]),
            ("endpoints add --json", ["endpoints", "add", "https://shop.example/hook", "--json"]),
        ):
            ran = payledger(*argv, env=env)
            assert ran.returncode == 0, (command, ran.stderr)
            assert ran.stderr == "", "no progress bar, no noise, when stderr is not a terminal"
            check_shape(json.loads(ran.stdout), shapes[command], seen)

        # On a terminal: the bar with its rate and ETA on stderr, the JSON on stdout as clean as before.
        for argv, label, unit in (
            (["verify", "--all", "--json"], "verifying the log", "events/s"),
            (["rebuild", "--json"], "rebuilding orders_view", "events/s"),
            (["reencrypt", "--json"], "re-encrypting", "states/s"),
        ):
            ran = payledger(*argv, env=a_terminal(env))
            assert ran.returncode == 0, ran.stderr
            assert label in ran.stderr and unit in ran.stderr and "ETA" in ran.stderr, ran.stderr
            assert json.loads(ran.stdout)
        text = payledger("verify", "--all", env=env)
        assert (text.returncode, text.stderr) == (0, "") and text.stdout.startswith("verified "), text.stdout
    assert seen >= {"events", "outbound", "messages", "certificates", "attempts"}
    # What this world never has (no break, nothing left to reconcile, no bill): the documented keys
    # are the records' own.
    assert shapes["verify --json"][2]["breaks"] == {f.name for f in fields(Break)}
    assert shapes["reconcile --json"][2]["changes"] == {f.name for f in fields(Change)}
    _, bill_keys, bill_nested = shapes["bills reconcile --json"]
    report = BillReport("1900000109", dt.date(2026, 11, 30), "empty", dt.datetime.now(dt.UTC))
    assert bill_keys == set(report.to_json())
    assert bill_nested["discrepancies"] == set(Discrepancy(DiscrepancyKind.AMOUNT_MISMATCH, "O", "T").to_json())


def test_tables_of_the_commands_are_plain_when_piped_and_drawn_on_a_terminal(tmp_path: Path, sqlite_url: str) -> None:
    env = {**clean_env(), "LEDGER_DATABASE_URL": sqlite_url}
    added = payledger("endpoints", "add", "https://shop.example/茶", "--events", "PaymentSucceeded", env=env)
    assert added.returncode == 0, added.stderr
    endpoint = added.stdout.split()[1]
    payledger("endpoints", "disable", endpoint, env=env)
    piped = payledger("endpoints", "list", env=env)
    header, row = piped.stdout.splitlines()
    assert header.split() == ["id", "state", "events", "url", "secrets", "disabled", "because"]
    assert row.split() == [
        endpoint,
        "disabled",
        "PaymentSucceeded",
        "https://shop.example/茶",
        "1",
        "disabled",
        "by",
        "operator",
    ]
    assert header.index("state") == row.index("disabled") and "\x1b" not in piped.stdout
    drawn = payledger("endpoints", "list", env={**a_terminal(env), "COLUMNS": "60"})
    assert "\x1b[" in drawn.stdout and endpoint in drawn.stdout, "an id is never folded, however narrow"
    empty = payledger("deliveries", "list", env=env)
    assert empty.stdout.split() == ["webhook", "id", "endpoint", "type", "order", "state", "attempts"]

    password = "correct horse battery staple\n"
    added = subprocess.run(
        [*CLI, "operators", "add", "mei", "--role", "viewer"], env=env, input=password, text=True, capture_output=True
    )
    assert added.returncode == 0
    operators = payledger("operators", "list", env=env)
    assert [line.split() for line in operators.stdout.splitlines()] == [
        ["name", "role", "state"],
        ["mei", "viewer", "enabled"],
    ]
    check_shape(
        json.loads(payledger("operators", "list", "--json", env=env).stdout),
        documented_shapes()["operators list --json"],
        set(),
    )
