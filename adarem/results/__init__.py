"""From run records to the answer: tables, claims verdicts and plots (scripts/make_tables.py)."""

from pathlib import Path

from adarem.results.records import RunSet, load_runs
from adarem.results.report import write_report

# The paper's claims as comparisons (package data: an installed adarem-tables has them too)
CLAIMS_FILE = Path(__file__).with_name("claims.yaml")

__all__ = ["CLAIMS_FILE", "RunSet", "load_runs", "write_report"]
