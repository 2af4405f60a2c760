"""Debian's Chromium driven by Playwright, for the browser tests: skipped without them unless `CI` is set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMIUM", "playwright"]

CHROMIUM = Path("/usr/bin/chromium")


def playwright() -> Any:
    """`sync_playwright`, or the test skipped (failed when `CI` is set) without Playwright or Chromium."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed"
    if problem is None and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {problem}")
        pytest.skip(problem)
    return sync_playwright
