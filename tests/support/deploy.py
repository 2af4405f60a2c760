"""Reading deploy/nginx.conf: the proxy's limits are checked against the app's (test_deploy, test_http_limits)."""

from __future__ import annotations

import re

from tests.support.constants import ROOT

__all__ = ["DEPLOY", "nginx_block", "nginx_conf", "nginx_seconds"]

DEPLOY = ROOT / "deploy"


def _strip_comment(line: str) -> str:
    """`line` up to a `#` that starts a comment (not one inside quotes or a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote is not None:
            if char == quote and not (quote == '"' and line[i - 1] == "\\"):
                quote = None
        elif char in "\"'" and (i == 0 or line[i - 1] in " [{,:-"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def nginx_conf() -> str:
    """deploy/nginx.conf without its comments."""
    return "\n".join(_strip_comment(line) for line in (DEPLOY / "nginx.conf").read_text().splitlines())


def nginx_block(conf: str, header: str) -> str:
    match = re.search(re.escape(header) + r"\s*\{([^{}]*)\}", conf)
    assert match, f"nginx.conf has no `{header} {{ ... }}` block"
    return match[1]


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, f"unreadable nginx time {value!r}"
    return int(match[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[match[2]]
