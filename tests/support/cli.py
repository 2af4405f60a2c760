"""`payledger` as a user runs it: a subprocess, with no WECHATPAY_/LEDGER_ setting of the caller's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["CLI", "clean_env", "payledger"]

CLI = [sys.executable, "-m", "cli.main"]


def clean_env() -> dict[str, str]:
    """This process's environment without any setting the ledger reads."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("WECHATPAY_", "LEDGER_"))}


def payledger(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env or clean_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
