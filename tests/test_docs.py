"""The manual stays true: every command, option, setting, endpoint, link and protocol citation in
README.md and docs/ names something that exists, and the reference pages name all of it.

The pages are prose for people; these checks read only their tables, headings, links and
command lines, so the prose can change freely while the facts cannot drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

from api.openapi import openapi_document
from cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "deploy" / "README.md", *DOCS.glob("*.md")])
PACKAGES = ("ledger", "api", "projections", "cli")
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


# -- reading markdown -----------------------------------------------------------------------------


def prose(text: str) -> str:
    """The text with fenced code blocks blanked out (their lines kept, so nothing joins up)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m[0].count("\n"), text, flags=re.S | re.M)


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path.read_text()), re.M):
        base = anchor = slug(heading)
        n = 0
        while anchor in found:
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def sections(text: str, level: int) -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading of the same or a higher level."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in prose(text).splitlines():
        heading = re.match(r"(#{1,6}) (.+)$", line)
        if heading and len(heading[1]) <= level:
            current = found.setdefault(heading[2].strip(), []) if len(heading[1]) == level else None
        elif current is not None:
            current.append(line)
    return {heading: "\n".join(lines) for heading, lines in found.items()}


def table_keys(text: str) -> set[str]:
    """The first word of the first cell of every table row that starts with inline code."""
    return {match.split()[0] for match in re.findall(r"^\| `([^`]+)`", text, re.M)}


# -- the command line -----------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def commands(parser: argparse.ArgumentParser, prefix: str = "payledger") -> Iterator[tuple[str, set[str]]]:
    """("payledger endpoints add", {"URL", "--secret", "--events"}) for every (sub)command."""
    for name, sub in subcommands(parser).items():
        path = f"{prefix} {name}"
        arguments = set()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            long = [o for o in action.option_strings if o.startswith("--")]
            arguments.add(long[0] if long else (action.metavar or action.dest).upper())
        yield path, arguments
        yield from commands(sub, path)


def test_docs_cli_describes_every_command_and_option_of_the_parser_and_nothing_else() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = {**sections(text, 2), **sections(text, 3)}
    documented = {heading: body for heading, body in documented.items() if heading.startswith("payledger ")}
    parsed = dict(commands(build_parser()))
    assert sorted(documented) == sorted(parsed), "docs/cli.md needs one heading per command, named as it is typed"
    for command, arguments in parsed.items():
        body = documented[command]
        if subcommands_of(command):
            body = body.split("\n### ", 1)[0]
        assert table_keys(body) == arguments, f"docs/cli.md, {command}: the table must list exactly its arguments"


def subcommands_of(command: str) -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for word in command.split()[1:]:
        parser = subcommands(parser)[word]
    return subcommands(parser)


def command_lines(text: str) -> Iterator[str]:
    """Every `payledger ...` run in a shell block, as typed (a `.venv/bin/` prefix dropped)."""
    for block in fenced(text, "sh"):
        for line in block.splitlines():
            for part in re.split(r"&&|;|\|", line):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith("payledger "):
                    yield part


def test_every_command_line_in_the_docs_is_accepted_by_the_parser() -> None:
    seen = 0
    for page in PAGES:
        for line in command_lines(page.read_text()):
            argv = [word for word in shlex.split(line, comments=True) if word != "&"]
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit:
                raise AssertionError(f"{page.relative_to(ROOT)}: payledger rejects `{line}`") from None
            seen += 1
    assert seen >= 8


def test_every_command_named_in_the_prose_exists() -> None:
    known = {name: set(subcommands(sub)) for name, sub in subcommands(build_parser()).items()}
    seen = 0
    for page in PAGES:
        for span in re.findall(r"`([^`]+)`", prose(page.read_text())):
            code = " ".join(span.split())
            for match in re.finditer(r"(?<![\w/.-])payledger[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?", code):
                command, action = match[1], match[2]
                where = f"{page.relative_to(ROOT)}: `{code}`"
                assert command in known, f"{where} names no payledger command"
                if known[command] and action is not None:
                    assert action in known[command], f"{where} names no `payledger {command}` action"
                seen += 1
    assert seen >= 30


# -- settings -------------------------------------------------------------------------------------


def documented_settings() -> set[str]:
    section = sections((DOCS / "configuration.md").read_text(), 2)["Settings"]
    names: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1]))
    return names


def settings_in_the_code() -> set[str]:
    """Every string constant in the package code that is a whole LEDGER_* or WECHATPAY_* name."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if re.fullmatch(r"(LEDGER|WECHATPAY)_[A-Z0-9_]+", node.value):
                        found.add(node.value)
    return found


def test_the_settings_table_lists_exactly_the_settings_the_code_reads() -> None:
    documented, read = documented_settings(), settings_in_the_code()
    assert {"LEDGER_DATABASE_URL", "WECHATPAY_MCHID"} <= read
    assert sorted(read - documented) == [], "read by the code but missing from docs/configuration.md"
    assert sorted(documented - read) == [], "in docs/configuration.md but read nowhere"


# -- the HTTP API ---------------------------------------------------------------------------------


def test_docs_http_api_lists_every_operation_of_openapi_json_and_no_other() -> None:
    table = sections((DOCS / "http-api.md").read_text(), 2)["Endpoints"]
    rows = re.findall(r"^\| `([A-Z]+) (/[^`?\[ ]*)", table, re.M)
    documented = {(path, method.lower()) for method, path in rows if not path.startswith("/ui")}
    described = {
        (path, method)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == described


# -- links and the protocol notes -----------------------------------------------------------------


def links(page: Path) -> Iterator[tuple[Path, str]]:
    """(target file, anchor) for every relative link of a page."""
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        yield (page.parent / file).resolve() if file else page, anchor


def test_every_link_between_the_pages_resolves() -> None:
    for page in PAGES:
        for target, anchor in links(page):
            where = f"{page.relative_to(ROOT)} -> {target.relative_to(ROOT)}#{anchor}"
            assert target.exists(), where
            if anchor:
                assert target.suffix == ".md" and anchor in anchors(target), where


def protocol_headings() -> set[str]:
    """The section names of the project's protocol notes (what "[protocol: ...]" cites)."""
    text = (DOCS / "wechatpay-protocol.md").read_text()
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith(("## ", "### "))}


def protocol_citations() -> list[tuple[str, str]]:
    """(file, section) for every "[protocol: A; B … C]" in the package code, the tests and the benches."""
    found: list[tuple[str, str]] = []
    for folder in (*PACKAGES, "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "test_docs.py":
                continue  # its own docstrings show the form
            text = " ".join(path.read_text().split())  # a citation may wrap onto the next line
            for names in re.findall(r"\[protocol: ([^\]]+)\]", text):
                for name in re.split(r"; | … ", names):
                    found.append((str(path.relative_to(ROOT)), name.removeprefix("# ").strip()))
    return found


def test_every_protocol_citation_names_a_section_of_the_protocol_notes() -> None:
    headings = protocol_headings()
    cited = protocol_citations()
    assert len(cited) > 100  # the code cites the protocol throughout
    assert [(path, name) for path, name in cited if name not in headings] == []


def test_no_citation_by_section_number_is_left() -> None:
    """Numbers pointed into a document outside the repository; names point into docs/."""
    numbered = [
        str(path.relative_to(ROOT))
        for folder in (*PACKAGES, "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "test_docs.py" and re.search("\u00a7" + r"\d", path.read_text())
    ]
    assert numbered == []


def test_every_reference_to_a_docs_anchor_in_the_code_resolves() -> None:
    for folder in (*PACKAGES, "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for page, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", path.read_text()):
                assert anchor in anchors(DOCS / page), f"{path.relative_to(ROOT)}: docs/{page}#{anchor}"
