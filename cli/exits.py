"""Exit codes, said at the foot of every command's `--help` (and in docs/cli.md, tested to agree).

Every command shares the last two: `main.run` turns an error into 1 (the command failed, its
reason on stderr) or 2 (the command line or the configuration is wrong).
"""

from __future__ import annotations

__all__ = ["FAILED", "OK", "USAGE", "exit_codes"]

OK = (0, "done")
FAILED = (1, "the command failed (the reason on stderr)")
USAGE = (2, "the command line or the configuration is wrong (named on stderr)")


def exit_codes(*codes: tuple[int, str], note: str | None = None) -> str:
    """The epilog of a command's help: each exit code and what it means (`USAGE` unless given), then `note`."""
    listed = dict(codes)
    listed.setdefault(*USAGE)
    lines = ["exit codes:", *(f"  {code}  {meaning}" for code, meaning in sorted(listed.items()))]
    return "\n".join([*lines, note] if note else lines)
