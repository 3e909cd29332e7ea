"""The committed Fashion-MNIST study (results/fashion_mnist/): its tables come from its committed run
records, and it meets the protocol it states (issue 17's "done when")."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO

STUDY = REPO / "results" / "fashion_mnist"
OPTIMIZERS = {"sgd", "sgd_plain", "adam", "adamw", "adarem", "adarem_m", "adarem_horizon", "adarem_nodecay"}


def test_make_tables_regenerates_the_committed_claims_and_tables_exactly(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(STUDY / "runs" / "final"),
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("claims.csv", "test_error.csv", "speed.csv", "oscillation.csv"):
        assert (tmp_path / name).read_bytes() == (STUDY / name).read_bytes(), name


def test_the_committed_study_meets_its_protocol():
    sel = pd.read_csv(STUDY / "selection.csv")
    assert set(sel.optimizer) == OPTIMIZERS
    select, final = sel[sel.stage == "select"], sel[sel.stage == "final"]
    for opt in sorted(OPTIMIZERS):
        mine, fin = select[select.optimizer == opt], final[final.optimizer == opt]
        assert fin.seed.nunique() >= 5 and (fin.status == "finished").all(), opt
        assert not set(fin.seed) & set(mine.seed), opt  # final seeds disjoint from the selection seeds
        assert mine.seed.nunique() >= 2, opt
        (lr,) = set(mine[mine.chosen].lr)
        assert set(fin.lr) == {lr}, opt
        assert mine.lr.min() < lr < mine.lr.max(), f"{opt}: chosen lr {lr} on the edge of {sorted(set(mine.lr))}"
    # the committed records are the ones the selection names: every run has its record
    for run_dir in sel.run_dir:
        assert (REPO / run_dir / "run.json").is_file(), run_dir


def test_the_grid_check_chose_the_same_learning_rates_from_committed_records():
    """README "Does the verdict depend on the width of the lr grid?": the relaunch at lr_span=1
    tried every lr of the study and more, chose the same lr for every optimizer, and each of its
    trials has its record in runs/ or grid_check/runs/."""
    narrow, wide = pd.read_csv(STUDY / "selection.csv"), pd.read_csv(STUDY / "grid_check" / "selection.csv")
    for opt in sorted(OPTIMIZERS):
        a = narrow[(narrow.optimizer == opt) & (narrow.stage == "select")]
        b = wide[(wide.optimizer == opt) & (wide.stage == "select")]
        assert set(a.lr) < set(b.lr), opt
        assert set(a[a.chosen].lr) == set(b[b.chosen].lr), opt
    for run_dir in wide.run_dir:
        rel = run_dir.split("/runs/", 1)[1]
        assert (STUDY / "runs" / rel / "run.json").is_file() or (STUDY / "grid_check" / "runs" / rel / "run.json").is_file(), rel
