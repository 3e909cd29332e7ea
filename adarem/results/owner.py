"""Whose report a folder holds: compare.py writes ``comparison.json`` (its setting key, command and
optimizers) with its report, and make_tables.py's report removes it (adarem.results.report's
OWNED_FILES). Standard library only: compare.py reads it before its first trial, where the
tables' modules (pandas, matplotlib, scipy) are not needed yet."""

from __future__ import annotations

import json
from pathlib import Path

REPORT_OWNER = "comparison.json"


def read_owner(folder: Path) -> dict | None:
    """The owner record of the report in ``folder``; None where there is none, or it is unreadable."""
    try:
        owner = json.loads((Path(folder) / REPORT_OWNER).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None
