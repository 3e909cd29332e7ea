"""A hostile review of make_tables on a comparison's runs folder: the lr search's holdout runs and
the finals of one data root are one dataset, and the search's runs never pass for test results;
the newest comparison is taken over every runs folder read; the claims' "none detectable" follows
Holm's step-down; no claim shows a mean of inf; the minimum error over evaluations is named as what
it is (selected on the test split)."""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest

from adarem.results import load_runs, write_report
from adarem.results.claims import evaluate_claims
from adarem.results.comparisons import write_manifest
from adarem.results.tables import error_table, oscillation_table, speed_table
from tests.results.test_tables import make_run

HOLDOUT_SPLIT = {"eval_on": "holdout", "train_samples": 900, "val_samples": 100}
VAL_SPLIT = {"eval_on": "val", "train_samples": 1000, "val_samples": 500}


def _identity(d, root, split, eval_on):
    """Give a hand-made record the data identity train.py writes: root and classes, and the split
    it read (eval_on, sizes, contents)."""
    record = json.loads((d / "run.json").read_text())
    record["config"]["data"]["eval_on"] = eval_on
    record["data_identity"] = {"name": "toy", "root": root, "num_classes": 10, "classes_sha1": "c0ffee",
                               **split, "train_images": split["train_samples"], "val_images": split["val_samples"],
                               "train_sha1": f"{root}-{eval_on}-train", "val_sha1": f"{root}-{eval_on}-val"}
    (d / "run.json").write_text(json.dumps(record))
    return d


def _comparison(root, data_root="/data/toy", prefix=""):
    """An lr search on the holdout split (2 lrs x 2 seeds per optimizer) and its finals (3 seeds)."""
    for opt, base in (("sgd", 10.0), ("adarem", 8.0)):
        for lr in (0.1, 0.3):
            for s in (100, 101):
                d = make_run(root / "select" / opt, f"{prefix}lr{lr}_s{s}", opt, s, [40.0, 20.0, 6.0 + lr], lr=lr,
                             osc=[0.9, 0.9])
                _identity(d, data_root, HOLDOUT_SPLIT, "holdout")
        for s in range(3):
            d = make_run(root / "final" / opt, f"{prefix}s{s}", opt, s, [40.0, 20.0, base + 0.1 * s], osc=[0.2, 0.3])
            _identity(d, data_root, VAL_SPLIT, "val")


# ---- 1. holdout runs: one dataset with the finals, never test results ---------------------------

def test_the_search_and_the_finals_of_one_data_root_are_one_dataset(tmp_path):
    """The search's runs record another split (eval_on, sizes, contents) of the same data: the
    folder was tabulated as two datasets, toy@<hash> (the search) beside toy@<hash> (the finals)."""
    _comparison(tmp_path / "runs")
    rs = load_runs(tmp_path / "runs")
    assert not rs.problems
    assert set(rs.runs.dataset) == {"toy"}, set(rs.runs.dataset)
    assert set(rs.runs.eval_on) == {"val", "holdout"}
    claims = evaluate_claims(rs, {"claims": [{"id": "err", "text": "t", "metric": "final_top1", "subject": "adarem",
                                              "baseline": "sgd", "better": "lower"}]})
    (row,) = claims.itertuples()
    assert row.dataset == "toy" and (row.n_subject, row.n_baseline) == (3, 3)  # the finals only


def test_a_search_on_the_tree_before_it_grew_is_not_the_finals_dataset(tmp_path):
    """Search runs of one root with other training-split sizes (the tree before it grew) took the
    finals' plain name, beside the search on today's tree, in rows only the hidden config_id told
    apart (helper-56): a search run is the finals' dataset only where its train + holdout images are
    the finals' training images (up to the per-epoch counts' dropped last batches)."""
    root = tmp_path / "runs"
    _comparison(root)  # search: 900 + 100 images; finals: 1000
    for s in (100, 101):
        d = make_run(root / "select" / "sgd", f"old_lr0.1_s{s}", "sgd", s, [40.0, 20.0, 12.0], lr=0.1)
        _identity(d, "/data/toy", {"eval_on": "holdout", "train_samples": 450, "val_samples": 50}, "holdout")
    for s in (100, 101):  # per-epoch counts of today's tree: a dropped last batch of 32 is missing
        d = make_run(root / "select" / "sgd", f"drop_lr0.3_s{s}", "sgd", s, [40.0, 20.0, 7.0], lr=0.3)
        _identity(d, "/data/toy", {"eval_on": "holdout", "train_samples": 868, "val_samples": 100}, "holdout")
    rs = load_runs(root)
    dropped = rs.runs[rs.runs.run_dir.str.contains("drop_lr")]
    assert set(dropped.dataset) == set(rs.runs[rs.runs.eval_on == "val"].dataset)
    old = rs.runs[rs.runs.run_dir.str.contains("old_lr")]
    assert len(old) == 2 and old.dataset.nunique() == 1 and old.dataset.iloc[0].startswith("toy@")
    today = rs.runs[~rs.runs.run_dir.str.contains("old_lr")]
    assert today.dataset.nunique() == 1 and today.dataset.iloc[0].startswith("toy@")
    assert old.dataset.iloc[0] != today.dataset.iloc[0]
    finals = rs.runs[rs.runs.eval_on == "val"]
    assert set(finals.dataset) == set(today[today.eval_on == "holdout"].dataset)


def test_two_data_roots_sharing_a_name_are_still_two_datasets_with_their_searches(tmp_path):
    _comparison(tmp_path / "runs", "/data/a", "a_")
    _comparison(tmp_path / "runs", "/data/b", "b_")
    rs = load_runs(tmp_path / "runs")
    labels = set(rs.runs.dataset)
    assert len(labels) == 2 and all(d.startswith("toy@") for d in labels), labels
    # each search is labelled as the finals it chose for: one dataset per data root
    for label, g in rs.runs.groupby("dataset"):
        assert set(g.eval_on) == {"val", "holdout"}, label
        assert g.run_dir.str.contains("/a_").all() or g.run_dir.str.contains("/b_").all(), label


def test_holdout_runs_are_kept_out_of_the_tables_of_test_results(tmp_path):
    _comparison(tmp_path / "runs")
    rs = load_runs(tmp_path / "runs")
    for table in (error_table(rs), speed_table(rs), oscillation_table(rs)):
        assert set(table.eval_on) == {"val"}, table
    text = write_report(rs, tmp_path / "out", None, "test")
    test_section = text.split("## Test error")[1].split("\n## ")[0]
    assert "holdout" not in test_section.split("|", 1)[1]  # no holdout row (the note before the table names them)
    # the search's runs have their own table, named as what they are
    holdout = pd.read_csv(tmp_path / "out" / "holdout_error.csv")
    assert set(holdout.eval_on) == {"holdout"} and len(holdout) == 4 and set(holdout.n) == {2}
    assert "final holdout top-1 err" in holdout.columns
    assert "## Selection trials of the lr search: holdout error" in text and "not test results" in text
    # a later report on runs without a search removes the holdout table
    only_finals = load_runs(tmp_path / "runs" / "final")
    write_report(only_finals, tmp_path / "out", None, "test")
    assert not (tmp_path / "out" / "holdout_error.csv").exists()


# ---- 2. the newest comparison over every runs folder read ---------------------------------------

def _folder(root, lr, base, command, seeds=(3, 3)):
    runs = [make_run(root / "final" / opt, f"lr{lr}_s{s}", opt, s, [40.0, 20.0, b + 0.1 * s], lr=lr)
            for (opt, b), n in zip((("sgd", base), ("adarem", base - 1)), seeds) for s in range(n)]
    return write_manifest(root, command, {}, [], {}, runs)


def test_the_parent_of_two_comparisons_folders_never_pairs_their_selections(tmp_path):
    """make_tables on the parent of two comparisons' folders: each optimizer comes from the newest
    comparison of either, so the claims never pair SGD as A chose it (5 seeds) with AdaRem as B chose
    it (5 seeds), which a manifest deciding about its own folder only did (helper-56); the reason
    names the manifest that decided."""
    _folder(tmp_path / "A", 0.1, 10.0, "compare A", seeds=(5, 3))
    time.sleep(0.01)
    _folder(tmp_path / "B", 0.3, 9.0, "compare B", seeds=(3, 5))
    rs = load_runs(tmp_path)
    assert set(rs.runs.lr) == {0.3} and len(rs.runs) == 8, rs.problems
    excluded = [p for p in rs.problems if "not a final run" in p["problem"]]
    assert len(excluded) == 8 and all("compare B" in p["problem"] and "/B/comparisons/" in p["problem"]
                                      and "among the runs read" in p["problem"] for p in excluded)


def test_copies_of_a_folder_with_the_same_manifest_time_are_said_to_be_tied(tmp_path):
    """Two copies whose manifests carry the same 'finished' time: the later path is used, and the
    report says that the choice was by path."""
    _folder(tmp_path / "A", 0.1, 10.0, "compare A")
    _folder(tmp_path / "B", 0.3, 9.0, "compare B")
    (ma,), (mb,) = (list((tmp_path / x / "comparisons").glob("*.json")) for x in "AB")
    record = json.loads(mb.read_text())
    record["finished"] = json.loads(ma.read_text())["finished"]
    mb.write_text(json.dumps(record))
    rs = load_runs(tmp_path)
    assert set(rs.runs.lr) == {0.3} and len(rs.runs) == 6
    (tie,) = [p for p in rs.problems if "finished at the same time" in p["problem"]]
    assert "/B/comparisons/" in tie["run_dir"] and "/A/comparisons/" in tie["problem"]


# ---- 3. "none detectable" under Holm's step-down ------------------------------------------------

def _steps_family(root, n_final_claims):
    """4 seeds a side; AdaRem far below SGD, Adam and AdamW in final error (p ~ 1e-7: a spread of
    0.1 against gaps of 3-5 points; with no spread at all the claims are rank-tested, 1/70 at best),
    and reaching the target at the same step as Adam (steps to target: Inconclusive)."""
    for s in range(4):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"adam{s}", "adam", s, [40.0, 20.0, 8.0 + 0.1 * s])
        make_run(root, f"adamw{s}", "adamw", s, [40.0, 20.0, 9.0 + 0.1 * s])
        make_run(root, f"adarem{s}", "adarem", s, [40.0, 20.0, 5.0 + 0.1 * s])
    claims = [{"id": f"lower_{b}", "text": "t", "metric": "final_top1", "subject": "adarem", "baseline": b,
               "better": "lower"} for b in ("sgd", "adam", "adamw")[:n_final_claims]]
    claims.append({"id": "faster", "text": "t", "metric": "steps_to_target", "subject": "adarem", "baseline": "adam",
                   "better": "lower"})
    return {"claims": claims}


def test_none_detectable_follows_holms_step_down(tmp_path):
    """4 claims, 4 seeds a side: the rank test's smallest p, 1/70 = 0.014, is above alpha/4 = 0.0125,
    so the claim was 'none detectable'; but the three others are rejected first (p = 0), so Holm
    tests it at alpha/1 and a clear ranking would be Supported."""
    spec = _steps_family(tmp_path / "runs", 3)
    v = evaluate_claims(load_runs(tmp_path / "runs"), spec).set_index("claim")
    assert (v.loc[[f"lower_{b}" for b in ("sgd", "adam", "adamw")], "verdict"] == "Supported").all()
    assert v.loc["faster", "verdict"] == "Inconclusive"
    assert not v.loc["faster", "mdd"] == math.inf  # some ranking of these seeds would be Supported
    # where the others are not rejected, it is tested at alpha/4: no ranking can clear it
    from adarem.results.claims import holm, rank_test_can_support, rank_test_min_p

    assert rank_test_can_support(4, 4, [0.0, 0.0, 0.0], 0.05)
    assert not rank_test_can_support(4, 4, [0.5, 0.5, 0.5], 0.05)
    assert holm([0.0, 0.0, 0.0, rank_test_min_p(4, 4)])[-1] < 0.05  # what the statement claims


def test_the_claims_text_states_holms_thresholds(tmp_path):
    from adarem.results import claims

    assert "no outcome can be Supported" not in claims.__doc__
    assert "α/(m − k + 1)" in claims.STATISTICS_TEXT


# ---- 4. no mean of inf ----------------------------------------------------------------------------

def test_a_side_that_never_got_there_shows_how_many_not_a_mean_of_inf(tmp_path):
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"adarem{s}", "adarem", s, [40.0, 20.0, 30.0 if s == 0 else 9.0])  # seed 0 never gets there
    spec = tmp_path / "claims.yaml"
    spec.write_text("claims:\n  - {id: faster, text: t, metric: steps_to_target, subject: adarem, baseline: adam,"
                    " better: lower}\n")
    text = write_report(load_runs(root), tmp_path / "out", spec, "test")
    row = pd.read_csv(tmp_path / "out" / "claims.csv").iloc[0]
    assert row.verdict == "Insufficient data" and row.reached_subject == 2 and row.n_subject == 3
    assert not row.subject_mean == math.inf
    (line,) = [ln for ln in text.split("### Steps-to-target")[0].splitlines() if ln.startswith("| faster ")]  # not the other targets' rows
    assert "inf" not in line and "adarem (—, 3; 1 not reached)" in line, line  # no mean of the 2 that got there


# ---- 5. the minimum over evaluations is test-selected --------------------------------------------

def test_the_minimum_over_evaluations_is_named_as_test_selected(tmp_path):
    root = tmp_path / "runs"
    for s in range(2):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 5.0, 10.0])
    rs = load_runs(root)
    err = error_table(rs)
    assert "best top-1 err" not in err.columns and "best top-5 err" not in err.columns
    (col,) = [c for c in err.columns if "top-1" in c and "final" not in c]
    assert "test-selected" in col and err[col].iloc[0] == "5.00 ± 0.00"
    text = write_report(rs, tmp_path / "out", None, "test")
    section = text.split("## Test error")[1].split("\n## ")[0]
    assert "optimistic" in section and "not a result" in section
