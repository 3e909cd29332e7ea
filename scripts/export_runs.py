"""Compact copies of run records (run.json + metrics.jsonl, no checkpoints) for committing a study
under results/ (adarem/results/export.py).

    python scripts/export_runs.py runs/compare/fashion_mnist results/fashion_mnist/runs
"""

from __future__ import annotations

import sys

from adarem.results.export import main

if __name__ == "__main__":
    sys.exit(main())
