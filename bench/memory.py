"""What the benches share: the process's resident memory, read from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["rss_mb"]


def rss_mb() -> float:
    """This process's resident set size in MB (0.0 where /proc is not there)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return 0.0
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
