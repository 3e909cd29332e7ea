"""Regenerate the comparison tables, claims verdicts and plots from logged runs (adarem/cli/tables.py;
installed as ``adarem-tables``).

    python scripts/make_tables.py runs/compare/digits --out results/digits
    python scripts/make_tables.py --wandb my-entity/adarem --out results/imagenet   # via the wandb API

Reads every run record (run.json + metrics.jsonl) under RUNS_DIR. Incomplete, crashed and duplicate
runs, and finished ones that disagree with their metrics.jsonl, are listed in their own section and
kept out of the means (a torn metrics line is listed, its run kept). Writes tables.md
(README-ready), *.tex (booktabs), *.csv, claims.csv and plots/*.png into --out.
"""

from __future__ import annotations

from adarem.cli.tables import run

if __name__ == "__main__":
    run(prog="python scripts/make_tables.py")
