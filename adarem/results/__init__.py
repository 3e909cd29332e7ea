"""From run records to the answer: tables, claims verdicts and plots (scripts/make_tables.py)."""

from pathlib import Path

# The paper's claims as comparisons (package data: an installed adarem-tables has them too)
CLAIMS_FILE = Path(__file__).with_name("claims.yaml")

__all__ = ["CLAIMS_FILE", "RunSet", "load_runs", "write_report"]


def __getattr__(name: str):
    """RunSet, load_runs and write_report on first use: importing a light submodule of this package
    (adarem.results.owner, before compare.py's first trial) does not import pandas, matplotlib
    and scipy with the tables' modules."""
    if name in ("RunSet", "load_runs"):
        from adarem.results import records

        return getattr(records, name)
    if name == "write_report":
        from adarem.results.report import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
