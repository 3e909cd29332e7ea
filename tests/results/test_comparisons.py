"""Two compare.py comparisons in one runs folder: make_tables reports the newest one's finals,
never one optimizer's runs as one search chose them beside another's as another search did."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from adarem.results import CLAIMS_FILE, load_runs
from adarem.results.claims import evaluate_claims, load_claims
from adarem.results.comparisons import write_manifest
from adarem.results.export import export_runs
from tests.conftest import REPO
from tests.results.test_tables import make_run


def finals(root, opt, lr, seeds, base):
    return [make_run(root / "final" / opt, f"lr{lr}_s{s}", opt, s, [40.0, 20.0, base + 0.1 * s], lr=lr)
            for s in seeds]


def test_the_newest_comparison_that_ran_an_optimizer_gives_its_runs(tmp_path):
    """Comparison A (5 seeds) chose SGD lr 0.1 and AdaRem lr 1; comparison B, launched later with
    another grid and 3 seeds, chose SGD lr 0.3 and AdaRem lr 3. Selected by seed count, as before,
    the folder's tables were A's for both; AdaRem beat SGD there (8 vs 10) but loses in B (12 vs 9),
    the comparison the user ran last and compare.py printed."""
    root = tmp_path / "runs"
    a = finals(root, "sgd", 0.1, range(5), 10.0) + finals(root, "adarem", 1.0, range(5), 8.0)
    write_manifest(root, "compare A", {"lr_grid": ""}, [], {}, a)
    b = finals(root, "sgd", 0.3, range(3), 9.0) + finals(root, "adarem", 3.0, range(3), 12.0)
    write_manifest(root, "compare B", {"lr_grid": "0.3"}, [], {}, b)

    rs = load_runs(root / "final")
    assert sorted(zip(rs.runs.optimizer, rs.runs.lr)) == sorted([("sgd", 0.3)] * 3 + [("adarem", 3.0)] * 3)
    excluded = [p for p in rs.problems if "not a final run of the newest comparison" in p["problem"]]
    assert len(excluded) == 10 and all("compare B" in p["problem"] for p in excluded)
    claims = evaluate_claims(rs, load_claims(CLAIMS_FILE))
    row = claims[(claims.subject == "adarem") & (claims.baseline == "sgd") & (claims.metric == "final_top1")].iloc[0]
    assert (row.subject_mean, row.baseline_mean) == (pytest.approx(12.1), pytest.approx(9.1))
    assert row.verdict == "Contradicted"

    # a third comparison of AdaRem alone: SGD keeps B's runs, AdaRem takes C's, and the report says so
    c = finals(root, "adarem", 2.0, range(3), 7.0)
    write_manifest(root, "compare C", {"optimizers": "adarem"}, [], {}, c)
    rs = load_runs(root / "final")
    assert sorted(set(zip(rs.runs.optimizer, rs.runs.lr))) == [("adarem", 2.0), ("sgd", 0.3)]
    (note,) = [p["problem"] for p in rs.problems if "several comparisons" in p["problem"]]
    assert "adarem from" in note and "(compare C)" in note and "sgd from" in note and "(compare B)" in note

    # an exported copy of the folder tabulates the same runs (the manifests travel with it)
    copy = tmp_path / "copy"
    export_runs(root, copy)
    assert sorted(load_runs(copy / "final").runs.run_dir.map(lambda d: d.split("/final/")[1])) == \
        sorted(rs.runs.run_dir.map(lambda d: d.split("/final/")[1]))
    # ...and a copy of final/ alone, which would lose them, is refused in one line
    with pytest.raises(ValueError, match="export the comparison's whole runs folder"):
        export_runs(root / "final", tmp_path / "final_only")
    assert not (tmp_path / "final_only").exists()


def test_runs_no_manifest_can_list_are_untouched_and_a_bad_manifest_is_listed(tmp_path):
    root = tmp_path / "runs"
    finals(root, "sgd", 0.1, range(2), 10.0)
    plain = load_runs(root / "final")
    assert len(plain.runs) == 2 and not plain.problems  # no manifests: as before
    (root / "comparisons").mkdir()
    (root / "comparisons" / "1.json").write_text("{not json")
    rs = load_runs(root / "final")
    assert len(rs.runs) == 2
    (problem,) = rs.problems
    assert problem["run_dir"].endswith("1.json") and "comparison manifest unreadable" in problem["problem"]


@pytest.mark.slow
def test_make_tables_on_a_folder_of_two_comparisons_reports_the_newest(tmp_path, env):
    """Real compare.py runs: 2 final seeds over one grid, then 1 over another (another lr), in one
    runs folder. make_tables on runs/final gives the second's tables. One optimizer keeps it short:
    the pairing of two optimizers across comparisons is the hand-made test's above."""
    def compare(*args):
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "optimizers=sgd",
                              "select_seeds=1", f"runs={tmp_path / 'runs'}", "data=digits", "trainer.epochs=1",
                              "trainer.log_every=1000", *args],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]

    compare("seeds=2", "lr_grid=1", f"out={tmp_path / 'first'}")
    compare("seeds=1", "lr_grid=0.3", f"out={tmp_path / 'second'}")
    manifests = sorted((tmp_path / "runs" / "comparisons").glob("*.json"))
    assert len(manifests) == 2 and json.loads(manifests[1].read_text())["options"]["lr_grid"] == [0.3]
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(tmp_path / "runs" / "final"),
                          "--out", str(tmp_path / "folder")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "folder" / "test_error.csv")))
    assert rows == list(csv.DictReader(open(tmp_path / "second" / "test_error.csv")))
    assert {r["n"] for r in rows} == {"1"}  # by seed count the first comparison's 2 seeds were taken
    assert (tmp_path / "folder" / "claims.csv").read_text() == (tmp_path / "second" / "claims.csv").read_text()


def test_failed_finals_of_the_newest_comparison_do_not_bring_back_older_ones(tmp_path):
    """B's SGD finals all failed: SGD has no runs in B, and A's SGD (another grid's choice) must not
    stand in for them beside B's AdaRem."""
    root = tmp_path / "runs"
    a = finals(root, "sgd", 0.1, range(3), 10.0) + finals(root, "adarem", 1.0, range(3), 8.0)
    write_manifest(root, "compare A", {}, [], {}, a)
    b = [make_run(root / "final" / "sgd", f"lr0.3_s{s}", "sgd", s, [40.0], status="failed", lr=0.3) for s in range(3)]
    b += finals(root, "adarem", 3.0, range(3), 12.0)
    write_manifest(root, "compare B", {}, [], {}, b)
    rs = load_runs(root / "final")
    assert sorted(set(zip(rs.runs.optimizer, rs.runs.lr))) == [("adarem", 3.0)]


def test_hand_made_runs_beside_a_comparison_folder_are_untouched(tmp_path):
    runs = tmp_path / "runs"
    cmp_root = runs / "compare" / "toy"
    write_manifest(cmp_root, "compare A", {}, [], {}, finals(cmp_root, "sgd", 0.1, range(2), 10.0))
    for s in range(5):  # train.py runs of another sgd configuration, outside any compare.py folder
        make_run(runs / "toy" / "net" / "sgd", f"s{s}", "sgd", s, [40.0, 20.0, 9.0], lr=0.3)
    rs = load_runs(runs)
    assert sorted(zip(rs.runs.lr, rs.runs.seed)) == [(0.1, 0), (0.1, 1)] + [(0.3, s) for s in range(5)]
    assert not [p for p in rs.problems if "newest comparison" in p["problem"]]


def test_a_manifest_missing_a_field_is_listed_not_a_crash(tmp_path):
    root = tmp_path / "runs"
    finals(root, "sgd", 0.1, range(2), 10.0)
    (root / "comparisons").mkdir()
    (root / "comparisons" / "1.json").write_text(json.dumps({"finished": "2026", "finals": "final/sgd"}))
    rs = load_runs(root / "final")
    assert len(rs.runs) == 2 and "comparison manifest unreadable" in rs.problems[0]["problem"]


def test_a_final_folder_reached_through_a_symlink_keeps_its_manifests(tmp_path):
    disk, root = tmp_path / "bigdisk", tmp_path / "runs"
    disk.mkdir()
    root.mkdir()
    (root / "final").symlink_to(disk, target_is_directory=True)
    write_manifest(root, "compare A", {}, [], {}, finals(root, "sgd", 0.1, range(3), 10.0))
    write_manifest(root, "compare B", {}, [], {}, finals(root, "sgd", 0.3, range(2), 9.0))
    for folder in (root / "final", root):
        assert sorted(set(load_runs(folder).runs.lr)) == [0.3], folder


def test_a_runs_folder_under_a_folder_named_wandb_is_read(tmp_path):
    finals(tmp_path / "results" / "wandb" / "runs", "sgd", 0.1, range(2), 10.0)
    assert len(load_runs(tmp_path / "results" / "wandb" / "runs").runs) == 2
