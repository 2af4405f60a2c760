"""The fixed values every test agrees on: the merchant, its app, where PostgreSQL and the vectors are.

Kept apart from conftest.py, which holds fixtures only: a test module imports these, never conftest.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["APPID", "MCHID", "POSTGRES_URL", "ROOT", "VECTORS_PATH"]

ROOT = Path(__file__).resolve().parents[2]
"""The repository."""

POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
MCHID = "1900000109"
APPID = "wxd678efh567hg6787"

VECTORS_PATH = ROOT.parent / "shared" / "vectors" / "wechatpay-vectors.json"
"""The published WeChat Pay test vectors ([protocol: Test vectors]), kept beside the repository."""
