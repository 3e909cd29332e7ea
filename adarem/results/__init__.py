"""From run records to the answer: tables, claims verdicts and plots (scripts/make_tables.py)."""

from adarem.results.records import RunSet, load_runs
from adarem.results.report import write_report

__all__ = ["RunSet", "load_runs", "write_report"]
