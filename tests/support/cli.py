"""`payledger` as a user runs it: a subprocess, with no WECHATPAY_/LEDGER_ setting of the caller's."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CLI", "clean_env", "following", "payledger"]

CLI = [sys.executable, "-m", "cli.main"]


# What makes rich take a pipe for a terminal (tests that want one set it themselves).
_TERMINAL = ("FORCE_COLOR", "TTY_COMPATIBLE")


def clean_env() -> dict[str, str]:
    """This process's environment without any setting the ledger reads, its output piped as a pipe."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("WECHATPAY_", "LEDGER_")) and k not in _TERMINAL}


def payledger(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env or clean_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def following(*args: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`payledger *args` running in the background, and the lines it prints as they come; stopped on exit
    (SIGTERM, then SIGKILL if it lingers) unless it has stopped already."""
    process = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)
        stdout.close()
