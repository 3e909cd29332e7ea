"""Hostile review of the results pipeline: runs that must not enter a number (diverged, curves
with holes), numbers that must not be pooled (oscillation windows, compile on/off, torch
versions), malformed records, stale output files, and the claims' mdd of the rank test."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from adarem.results import CLAIMS_FILE, load_runs, write_report
from adarem.results.claims import evaluate_claims, load_claims
from adarem.results.tables import error_table, oscillation_table, speed_table
from tests.conftest import REPO
from tests.results.test_tables import _retag, make_run


def _edit_record(d, **top):
    record = json.loads((d / "run.json").read_text())
    record.update(top)
    (d / "run.json").write_text(json.dumps(record))


def _lines(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def _write_lines(d, lines):
    (d / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _osc(d, flips, effs, window=10, every=10):
    """Replace a run's oscillation lines by these (every 10 steps), with their path window."""
    lines = [r for r in _lines(d) if r["type"] != "oscillation"]
    lines += [{"type": "oscillation", "step": every * (i + 1), "flip_fraction": f, "path_efficiency": e,
               "path_window": window} for i, (f, e) in enumerate(zip(flips, effs))]
    _write_lines(d, lines)


def _by_claim(rs):
    return evaluate_claims(rs, load_claims(CLAIMS_FILE)).set_index("claim")


# ---- 1. a diverged run's partial history -----------------------------------------------------

def test_a_diverged_run_enters_no_oscillation_number_nor_train_loss(tmp_path):
    """sgd_plain seed 2 diverged at step 11: its oscillation lines (the blow-up) and its one
    window of train loss were averaged with the finished runs' and flipped the oscillation claims;
    train loss @100 % was read off its last window, at step 11 of a 30-step budget."""
    root = tmp_path / "runs"
    for s in range(3):
        _osc(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.1 * s]),
             [0.20 + 0.01 * s] * 2, [0.60 + 0.01 * s] * 2)
    for s in range(2):
        _osc(make_run(root, f"plain{s}", "sgd_plain", s, [30.0, 15.0, 9.0 + 0.1 * s]),
             [0.30 + 0.01 * s] * 2, [0.40 + 0.01 * s] * 2)
    div = make_run(root, "plain_div", "sgd_plain", 2, [30.0], status="diverged")
    lines = [r for r in _lines(div) if r["type"] != "iter" or r["step"] <= 11]
    for r in lines:
        if r["type"] == "iter":
            r["train_loss_window"] = 1e4  # the blow-up
    _write_lines(div, lines)
    _osc(div, [0.95], [0.01])
    _edit_record(div, diverged_at_step=11)
    rs = load_runs(root)

    osc = oscillation_table(rs).set_index("optimizer")
    assert osc.loc["sgd_plain", "n"] == 2
    assert osc.loc["sgd_plain", "update sign-flip fraction"] == "30.50 ± 0.71 %"
    assert osc.loc["sgd_plain", "path efficiency"] == "40.50 ± 0.71 %"
    verdicts = _by_claim(rs)
    for claim in ("oscillates_less_than_sgd_plain", "straighter_path_than_sgd_plain"):
        v = verdicts.loc[claim]
        assert v.n_baseline == 2 and v.verdict == "Supported", v
    speed = speed_table(rs).set_index("optimizer")
    assert speed.loc["sgd_plain", "diverged"] == 1
    for frac in (10, 25, 50, 100):  # the finished runs' windows only, never the diverged run's
        assert "e+" not in speed.loc["sgd_plain", f"train loss @{frac}%"]
        assert not speed.loc["sgd_plain", f"train loss @{frac}%"].startswith("100")
    assert speed.loc["sgd_plain", "train loss @100%"] == "0.29 ± 0.00 (2 of 3)"  # the diverged run has none
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert "(diverged) 1 run of sgd_plain" in text and "seed 2 at step 11" in text
    assert "left out of train loss @x %" in text and "the oscillation claims" in text


def test_a_non_finite_oscillation_value_takes_the_run_out_of_the_oscillation_numbers(tmp_path):
    """A NaN flip fraction in every line of one seed dropped that seed without a word (n 2 of 3),
    and a NaN in one line of another was skipped by the mean, which then described part of the
    run: both are flagged and left out, as a non-finite val error is."""
    root = tmp_path / "runs"
    for s in range(3):
        _osc(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.1 * s]),
             [0.20 + 0.01 * s] * 2, [0.60 + 0.01 * s] * 2)
        d = make_run(root, f"plain{s}", "sgd_plain", s, [30.0, 15.0, 9.0 + 0.1 * s])
        flips = {0: [math.nan, math.nan], 1: [0.31, math.nan]}.get(s, [0.32, 0.32])
        _osc(d, flips, [0.40 + 0.01 * s] * 2)
    rs = load_runs(root)
    assert oscillation_table(rs).set_index("optimizer").loc["sgd_plain", "n"] == 1
    v = _by_claim(rs).loc["oscillates_less_than_sgd_plain"]
    assert v.n_baseline == 1 and v.verdict.startswith("Insufficient data"), v
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    for s, n in ((0, 2), (1, 1)):
        assert f"plain{s} | {n} oscillation line(s) with a non-finite flip_fraction or path_efficiency" in text


# ---- 2. oscillation windows ------------------------------------------------------------------

def test_path_efficiency_over_different_windows_is_never_pooled_nor_compared(tmp_path):
    """Path efficiency over a 200-step window is lower than over 10 steps by definition: sgd_plain
    measured over 200 steps looked far less straight than AdaRem over 10 (Supported), and runs of
    one configuration over two windows were averaged into one cell."""
    root = tmp_path / "runs"
    for s in range(3):
        _osc(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.1 * s]),
             [0.20 + 0.01 * s] * 2, [0.60 + 0.01 * s] * 2)
        _osc(make_run(root, f"plain{s}", "sgd_plain", s, [30.0, 15.0, 9.0 + 0.1 * s]),
             [0.30 + 0.01 * s] * 2, [0.10 + 0.01 * s] * 2, window=200)
        mixed = make_run(root, f"adarem_m{s}", "adarem_m", s, [30.0, 15.0, 8.0 + 0.1 * s])
        _osc(mixed, [0.10] * 2, [0.70] * 2, window=10 if s else 50)
    # a record written before path_window was logged: the window is trainer.oscillation_every's
    old = make_run(root, "sgd0", "sgd", 0, [30.0, 15.0, 9.0], trainer={"oscillation_every": 50})
    _osc(old, [0.1] * 2, [0.7] * 2)
    _write_lines(old, [{k: v for k, v in r.items() if k != "path_window"} for r in _lines(old)])
    rs = load_runs(root)
    osc = oscillation_table(rs).set_index("optimizer")
    assert osc.loc["adarem_m", "path efficiency"] == "mixed windows (see flags)"
    assert osc.loc["adarem", "path efficiency"] == "61.00 ± 1.00 % (window 10)"
    assert osc.loc["sgd_plain", "path efficiency"] == "11.00 ± 1.00 % (window 200)"
    verdicts = _by_claim(rs)
    assert verdicts.loc["straighter_path_than_sgd_plain", "verdict"] == "Not comparable (oscillation windows differ)"
    assert verdicts.loc["momentum_variant_straighter_path_than_sgd", "verdict"] == \
        "Not comparable (oscillation windows differ)"
    # the sign flips compare two consecutive updates, whatever the window: still tested
    assert verdicts.loc["oscillates_less_than_sgd_plain", "verdict"] == "Supported"
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert "path efficiency measured over different windows (10 steps: 2 run(s), 50 steps: 1 run(s))" in text
    assert "optimizers' path efficiency measured over different windows" in text and "sgd_plain: 200 steps" in text
    assert dict(zip(rs.runs.run_dir.str.split("/").str[-1], rs.runs.osc_window))["sgd0"] == "50"


# ---- 3. and 5. curves with holes -------------------------------------------------------------

def _speed_runs(root, n_sgd=3, n_adarem=3):
    for s in range(n_sgd):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
    return [make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.1 * s]) for s in range(n_adarem)]


def test_a_run_with_lost_metrics_lines_is_flagged_and_out_of_the_curve_metrics(tmp_path):
    """metrics_lines_lost > 0: the lost lines were evaluations, so the run reached the target
    "later" (step 30 instead of 10): steps to target, its claim and the AUC used a curve with holes."""
    root = tmp_path / "runs"
    adarem = _speed_runs(root)
    for d in adarem[:1]:  # seed 0 lost its first evaluation (11 <= target 11.1 at step 10)
        lines = [r for r in _lines(d) if not (r["type"] == "epoch" and r["epoch"] == 0)]
        lines.insert(0, {"type": "epoch", "epoch": 0, "step": 10, "train_loss": 1.0, "val_top1_err": 11.0,
                         "val_top5_err": 1.0, "wall_time_s": 2.0, "images_per_s": 100.0})
        _write_lines(d, lines)
    for d in adarem[1:]:  # seeds 1 and 2: that evaluation lost after a crash
        _write_lines(d, [r for r in _lines(d) if not (r["type"] == "epoch" and r["epoch"] == 0)]
                     + [{"type": "epoch", "epoch": 0, "step": 10, "train_loss": 1.0, "val_top1_err": None,
                         "wall_time_s": 2.0, "images_per_s": 100.0}])
        _edit_record(d, metrics_lines_lost=1)
    rs = load_runs(root)
    speed = speed_table(rs).set_index("optimizer")
    assert speed.loc["adarem", "steps to SGD+1"] == "10 (1/1 reached; 2 left out, see flags)"
    assert speed.loc["adarem", "train loss @100%"] == "0.29 (1 of 3)"
    assert speed.loc["adarem", "val-err AUC"].endswith("(1 of 3)")
    err = error_table(rs).set_index("optimizer")
    assert err.loc["adarem", "final top-1 err"] == "8.10 ± 0.10"  # run.json's final errors stand
    assert err.loc["adarem", "min top-1 err over evals (test-selected)"] == "8.00 (1 of 3)"
    v = _by_claim(rs).loc["lower_error_than_sgd"]
    assert v.n_subject == 3  # final error: every run
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert text.count("1 metrics.jsonl line(s) missing (run.json metrics_lines_lost") == 2
    assert "left out of best error, steps and seconds to target" in text


def test_a_nan_val_error_is_no_evaluation_and_flags_the_run(tmp_path):
    """NaN first in a run's evaluations made min() return NaN (the run's best dropped from the
    mean under n=3), NaN later was skipped; the AUC averaged fewer evaluations, silently."""
    root = tmp_path / "runs"
    adarem = _speed_runs(root)
    lines = _lines(adarem[0])
    lines.insert(0, {"type": "eval", "epoch": 0, "step": 5, "epoch_frac": 0.5, "val_top1_err": math.nan})
    _write_lines(adarem[0], lines)
    lines = _lines(adarem[1])
    lines.append({"type": "eval", "epoch": 0, "step": 5, "epoch_frac": 0.5, "val_top1_err": math.nan})
    _write_lines(adarem[1], lines)
    rs = load_runs(root)
    err = error_table(rs).set_index("optimizer")
    assert err.loc["adarem", "min top-1 err over evals (test-selected)"] == "8.20 (1 of 3)"  # one run, whatever NaN's position
    assert rs.evals.val_top1_err.notna().all()
    speed = speed_table(rs).set_index("optimizer")
    assert speed.loc["adarem", "val-err AUC"] == "17.73 (1 of 3)"
    assert speed.loc["adarem", "steps to SGD+1"] == "30 (1/1 reached; 2 left out, see flags)"
    v = _by_claim(rs).loc["lower_error_than_sgd"]
    assert v.n_subject == 3
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert text.count("1 evaluation(s) with a non-finite val error (metrics.jsonl line") == 2


# ---- 4. stale outputs ------------------------------------------------------------------------

def test_a_rerun_into_the_same_out_leaves_no_file_of_the_previous_runs(tmp_path):
    """make_tables A --out X, then make_tables B --out X: X/claims.csv kept A's verdicts, and A's
    oscillation tables and plots stayed beside a tables.md without them. Files the tool does not
    write (README.md, selection.csv and plots/selection_lr.png of compare.py, a user's notes) stay."""
    a, b = tmp_path / "a", tmp_path / "b"
    for s in range(2):
        make_run(a, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + s], osc=[0.4, 0.5])
        make_run(a, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + s], osc=[0.2, 0.3])
        _retag(make_run(b, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + s]), **{"data.name": "other"})
    out = tmp_path / "X"
    (out / "plots").mkdir(parents=True)
    keep = {"README.md": "mine", "selection.csv": "compare's", "notes.txt": "mine", "plots/selection_lr.png": "png"}
    for name, text in keep.items():
        (out / name).write_text(text)

    def tables(runs, *extra):
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(runs), "--out", str(out),
                              *extra], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]

    tables(a)
    assert (out / "oscillation.csv").is_file() and (out / "claims.csv").is_file()
    assert (out / "plots" / "curves_toy_net.png").is_file() and (out / "plots" / "oscillation_toy_net.png").is_file()
    tables(b)
    for gone in ("oscillation.csv", "oscillation.tex", "plots/curves_toy_net.png", "plots/oscillation_toy_net.png"):
        assert not (out / gone).exists(), gone
    assert (out / "plots" / "curves_other_net.png").is_file()
    claims = (out / "claims.csv").read_text()
    assert "toy" not in claims and "other" in claims  # B's verdicts only
    tables(b, "--claims", "")
    assert not (out / "claims.csv").exists()  # no claims evaluated: no claims file
    for name, text in keep.items():
        assert (out / name).read_text() == text, name


# ---- 6. the mdd of the rank test -------------------------------------------------------------

def test_no_mdd_is_claimed_for_a_rank_test_that_cannot_reject(tmp_path):
    """4 seeds a side: the exact rank test's smallest p is 1/70 = 0.014, above alpha/m = 0.05/5, so
    no outcome is Supported; the t-based mdd named a finite difference "these seeds could detect"."""
    root = tmp_path / "runs"
    for s in range(4):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"adam{s}", "adam", s, [40.0, 12.0 if s % 2 else 20.0, 10.5 + 0.1 * s])
        make_run(root, f"adarem{s}", "adarem", s, [40.0, 11.0 if s % 2 else 20.0, 10.5 + 0.1 * s])
        make_run(root, f"adamw{s}", "adamw", s, [40.0, 20.0, 10.5 + 0.1 * s])
    rs = load_runs(root)  # 5 claims tested: alpha / m = 0.01
    v = _by_claim(rs).loc["faster_than_adam"]
    assert v.verdict == "Inconclusive" and v.mdd == math.inf
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    (line,) = [ln for ln in text.split("### Steps-to-target")[0].splitlines() if ln.startswith("| faster_than_adam ")]  # not the other targets' rows
    assert "none detectable" in line
    from adarem.results.claims import rank_test_min_p

    assert rank_test_min_p(4, 4) == pytest.approx(1 / 70) and rank_test_min_p(5, 5) == pytest.approx(1 / 252)
    # a Welch-tested claim keeps its t-based mdd
    assert math.isfinite(_by_claim(rs).loc["lower_error_than_adam", "mdd"]) or \
        _by_claim(rs).loc["lower_error_than_adam", "verdict"] != "Inconclusive"


# ---- 7. versions, compile, optimizer paths ---------------------------------------------------

def _report_with_adarems_timing_unpooled(root, tmp_path) -> str:
    """The runs under ``root`` (3 SGD and 3 AdaRem seeds, the AdaRem ones timed in two ways) as one
    row per optimizer whose steps pool and whose AdaRem seconds and images/s do not; the report."""
    rs = load_runs(root)
    assert rs.runs.config_id.nunique() == 2  # one row each: errors and steps pool
    speed = speed_table(rs).set_index("optimizer")
    assert speed.loc["adarem", "s to SGD+1"] == speed.loc["adarem", "images/s"] == \
        "mixed training setup (see flags)"
    assert speed.loc["adarem", "steps to SGD+1"] == "30 (3/3 reached)"
    assert speed.loc["sgd", "s to SGD+1"].startswith("6 (3/3")
    return write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")


def test_torch_versions_compile_and_optimizer_paths_are_flagged_and_seconds_not_pooled(tmp_path):
    """Two AdaRem seeds trained compiled (their seconds include compilation), on another optimizer
    path and another torch: pooled with the others without a word, seconds averaged."""
    root = tmp_path / "runs"
    for s in range(3):
        _edit_record(make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0]),
                     versions={"torch": "2.14.1"}, optimizer_impl="fused")
        d = make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0], trainer={"compile": s == 2})
        _edit_record(d, versions={"torch": "2.15.0" if s == 2 else "2.14.1"},
                     optimizer_impl="foreach" if s == 2 else "fused")
    text = _report_with_adarems_timing_unpooled(root, tmp_path)
    assert "runs trained with 2 torch versions (torch 2.14.1, 5 runs: adarem, sgd; torch 2.15.0, 1 run: adarem)" in text
    assert "1 trained with trainer.compile=true, 2 without" in text
    assert "pooled across optimizer paths (run.json's optimizer_impl: foreach 1, fused 2)" in text
    assert "optimizers trained with and without trainer.compile (compiled: adarem 1 of 3" in text


def test_seconds_are_not_pooled_across_oscillation_tracker_settings(tmp_path):
    """The tracker works inside every step of its windows (13 % of a resnet18 CPU step in
    results/bench/throughput.csv); trainer.oscillation_every is not part of the configuration's
    identity, so runs with it on and off shared a row and their seconds were averaged, and an
    optimizer timed without it was compared in seconds with one timed with it."""
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0], trainer={"oscillation_every": 0})
        make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0], trainer={"oscillation_every": 10 if s else 0})
    text = _report_with_adarems_timing_unpooled(root, tmp_path)
    assert "trained with the oscillation tracker at different intervals (trainer.oscillation_every: off: 1 run, " \
           "every 10: 2 runs)" in text
    assert "optimizers trained with the oscillation tracker at different intervals (adarem: off: 1 run, every 10: " \
           "2 runs; sgd: off: 3 runs)" in text


def test_seconds_measured_under_varying_load_are_flagged(tmp_path):
    """Seeds of one configuration at 2,259 to 3,359 images/s (the committed study's finals, launched
    optimizer by optimizer on a shared machine): the seconds columns then rank the launch order, and
    nothing said so. Within 10 % is a dedicated machine's noise and is not flagged."""
    for name, rates in (("steady", {"sgd": [100, 104, 98], "adarem": [101, 99, 103]}),
                        ("loaded", {"sgd": [100, 150, 98], "adarem": [101, 99, 103]})):
        root = tmp_path / name
        for opt, per_seed in rates.items():
            for s, rate in enumerate(per_seed):
                d = make_run(root, f"{opt}{s}", opt, s, [30.0, 15.0, 8.0 + s])
                _write_lines(d, [{**r, "images_per_s": float(rate)} if r["type"] == "epoch" else r for r in _lines(d)])
        text = write_report(load_runs(root), tmp_path / f"out_{name}", CLAIMS_FILE, "test")
        flagged = "images/s varied between the seeds of one configuration by up to" in text
        assert flagged == (name == "loaded"), name
    assert "by up to 1.53x (sgd: 98 to 150)" in text and "compare steps, not seconds" in text

def test_a_missing_seed_is_no_different_tracker_interval(tmp_path):
    """Every run at one interval, one side a seed short: the intervals were compared as strings with
    their run counts ("every 10: 3 runs" vs "every 10: 2 runs") and flagged as different."""
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0], trainer={"oscillation_every": 10})
        if s < 2:
            make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0], trainer={"oscillation_every": 10})
    text = write_report(load_runs(root), tmp_path / "out", CLAIMS_FILE, "test")
    assert "tracker at different intervals" not in text


# ---- 8. malformed records --------------------------------------------------------------------

@pytest.mark.parametrize("case, reason", [
    ("iter_without_step", "metrics.jsonl line 4 (iter): step missing: excluded"),
    ("osc_without_flip", "(oscillation): flip_fraction missing: excluded"),
    ("lr_string", 'run.json: config optimizer.lr is "0.1", not a number: excluded'),
    ("epochs_string", 'run.json: config trainer.epochs is "3", not an integer: excluded'),
    ("val_err_string", "(epoch): val_top1_err is \"9\", not a number: excluded"),
])
def test_a_malformed_record_is_excluded_with_its_reason_not_a_traceback(tmp_path, case, reason):
    root = tmp_path / "runs"
    for s in range(2):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + s], osc=[0.4, 0.5])
        make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + s], osc=[0.2, 0.3])
    bad = make_run(root, "bad", "adarem", 7, [30.0, 15.0, 8.0], osc=[0.2, 0.3])
    lines = _lines(bad)
    if case == "iter_without_step":
        del lines[3]["step"]
    elif case == "osc_without_flip":
        del next(r for r in lines if r["type"] == "oscillation")["flip_fraction"]
    elif case == "val_err_string":
        lines[0]["val_top1_err"] = "9"
    elif case == "lr_string":
        _retag(bad, **{"optimizer.lr": "0.1"})
    elif case == "epochs_string":
        _retag(bad, **{"trainer.epochs": "3"})
    _write_lines(bad, lines)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(root), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    md = (out / "tables.md").read_text()
    (row,) = [line for line in md.splitlines() if "/bad " in line or "/bad|" in line.replace(" ", "")]
    assert reason in row, row
    assert error_table(load_runs(root)).set_index("optimizer").loc["adarem", "n"] == 2


# ---- a run resumed on another setup; epochs without a logged rate ----------------------------

def test_a_run_resumed_on_other_code_or_threads_is_flagged(tmp_path):
    """run.json's mixed_provenance (written by train.py when a resume's commit, versions,
    threads or device differ from the run's start) reaches the report as a flag naming the run
    and what differed; a record without the key, or with an empty list, is not flagged."""
    root = tmp_path / "runs"
    for s in range(2):
        make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, 9.0])
    mixed = make_run(root, "adarem0", "adarem", 0, [30.0, 15.0, 8.0])
    _edit_record(mixed, mixed_provenance=["git.commit", "hardware.torch_threads"])
    _edit_record(make_run(root, "adarem1", "adarem", 1, [30.0, 15.0, 8.5]), mixed_provenance=[])
    out = tmp_path / "out"
    write_report(load_runs(root), out, claims_path=None, command="make_tables")
    flagged = [line for line in (out / "tables.md").read_text().splitlines() if "run.json segments" in line]
    assert len(flagged) == 1, flagged
    assert "adarem0" in flagged[0] and "other git.commit, hardware.torch_threads than" in flagged[0]
    _edit_record(mixed, mixed_provenance=["unrecorded"])  # continued from a checkpoint of an older version
    write_report(load_runs(root), out, claims_path=None, command="make_tables")
    assert "continued from a checkpoint that records no code, versions or hardware" in (out / "tables.md").read_text()


def test_an_epoch_line_without_a_rate_is_not_an_epoch_at_zero_images_per_s(tmp_path):
    """images/s is the mean over the epochs that logged one: an epoch line without
    images_per_s used to count as 0 and pulled the mean down by a third here."""
    root = tmp_path / "runs"
    d = make_run(root, "sgd0", "sgd", 0, [30.0, 15.0, 9.0])
    lines = _lines(d)
    del next(r for r in lines if r["type"] == "epoch")["images_per_s"]
    _write_lines(d, lines)
    assert load_runs(root).runs.set_index("run_dir").images_per_s.iloc[0] == pytest.approx(100.0)


def test_images_per_s_is_all_images_over_all_training_time(tmp_path):
    """A slow first epoch (worker start-up, compilation) is part of a run's throughput: 400 images
    in 4 s, then 300 in 1 s twice, is 1000 images in 6 s (166.7/s). The plain mean of the epochs'
    rates, which the tables used to show, said 233.3/s."""
    root = tmp_path / "runs"
    d = make_run(root, "sgd0", "sgd", 0, [30.0, 15.0, 9.0])
    lines = _lines(d)
    for r, (rate, seconds) in zip([r for r in lines if r["type"] == "epoch"], [(100.0, 4.0), (300.0, 1.0), (300.0, 1.0)]):
        r.update(images_per_s=rate, epoch_time_s=seconds)
    _write_lines(d, lines)
    assert load_runs(root).runs.images_per_s.iloc[0] == pytest.approx(1000 / 6)


def test_a_report_that_fails_midway_leaves_its_output_folder_as_it_was(tmp_path, monkeypatch):
    """A report is written aside and moved in once complete: a plot that raises (here a full
    disk) used to leave new CSVs and claims beside the previous tables.md and selection.csv."""
    import adarem.results.report as report

    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, 9.0 + 0.1 * s])
        make_run(root, f"adarem{s}", "adarem", s, [30.0, 14.0, 8.0 + 0.1 * s])
    out = tmp_path / "out"
    out.mkdir()
    before = {"tables.md": "old tables", "selection.csv": "old selection", "claims.csv": "old claims",
              "notes.txt": "the user's"}
    for name, text in before.items():
        (out / name).write_text(text)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_curves", full_disk)
    with pytest.raises(OSError):
        write_report(load_runs(root), out, CLAIMS_FILE, "make_tables")
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "runs"]  # no staging folder left

    monkeypatch.undo()
    write_report(load_runs(root), out, CLAIMS_FILE, "make_tables")
    assert (out / "test_error.csv").is_file() and (out / "tables.md").read_text() != "old tables"
    assert (out / "notes.txt").read_text() == "the user's"


def test_the_plots_leave_out_what_the_tables_leave_out(tmp_path, monkeypatch):
    """The curve and oscillation plots drew a diverged run's train loss and oscillation, runs with
    holes in their curves, and path efficiency averaged over runs of different windows, all of
    which the tables leave out or keep apart."""
    import adarem.results.plots as plots

    root = tmp_path / "runs"
    for s in range(3):
        _osc(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.1 * s]), [0.2] * 2, [0.6] * 2)
    div = make_run(root, "adarem_div", "adarem", 3, [30.0], status="diverged")
    _osc(div, [0.95], [0.01])
    gap = make_run(root, "adarem_gap", "adarem", 4, [30.0, 15.0, 8.0])
    _osc(gap, [0.2] * 2, [0.6] * 2)
    _edit_record(gap, metrics_lines_lost=2)
    _osc(make_run(root, "adarem_nan", "adarem", 5, [30.0, 15.0, 8.0]), [math.nan, 0.2], [0.6] * 2)  # flagged
    for s in range(2):  # sgd: its two runs measured path efficiency over different windows
        _osc(make_run(root, f"sgd{s}", "sgd", s, [30.0, 15.0, 9.0]), [0.3] * 2, [0.4] * 2, window=10 * (s + 1))
        # adarem_m: its two runs recorded every 10 and every 20 steps: at step 20 the mean would
        # be over both runs, at 10 over one (the tables leave both cells out)
        _osc(make_run(root, f"adarem_m{s}", "adarem_m", s, [30.0, 15.0, 9.0]), [0.1] * 2, [0.7] * 2,
             window=10, every=10 * (s + 1))
    drawn = []
    real = plots.mean_ci

    def spy(frame, x, y, level=0.95):
        drawn.append((y, set(frame.run_dir)))
        return real(frame, x, y, level)

    monkeypatch.setattr(plots, "mean_ci", spy)
    plots.plot_curves(load_runs(root), tmp_path / "plots")
    runs_of = lambda y: set().union(*(dirs for what, dirs in drawn if what == y))  # noqa: E731
    assert not any("adarem_gap" in d for y, dirs in drawn for d in dirs)
    assert not any("adarem_div" in d for y in ("train_loss_window", "path_efficiency", "flip_fraction")
                   for d in runs_of(y))
    assert any("adarem_div" in d for d in runs_of("val_top1_err"))  # drawn up to where it stopped
    assert not any("adarem_nan" in d for y in ("path_efficiency", "flip_fraction") for d in runs_of(y))
    assert not any("sgd" in d for d in runs_of("path_efficiency"))  # two windows: not averaged
    assert any("sgd" in d for d in runs_of("flip_fraction"))
    assert not any("adarem_m" in d for y in ("path_efficiency", "flip_fraction") for d in runs_of(y))


def test_a_curve_past_a_divergence_is_dashed_and_says_so():
    """The mean val-error curve went on over the survivors after a seed diverged, under a label
    counting every seed, and ended at their error (helper-83). Past the last step every run reached,
    it is now dashed, without a band, and the label says so."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from adarem.results import plots

    frame = pd.DataFrame({"run_dir": ["a", "b", "a", "b", "a"], "step": [10, 10, 20, 20, 30],
                          "val_top1_err": [50.0, 60.0, 40.0, 30.0, 10.0]})  # b stopped after step 20
    fig, ax = plt.subplots()
    plots._band(ax, plots.mean_ci(frame, "step", "val_top1_err"), "step", "adarem (n=2, 1 diverged)", n_runs=2)
    solid, dashed = ax.get_lines()
    assert list(solid.get_xdata()) == [10, 20] and list(solid.get_ydata()) == [55.0, 35.0]
    assert dashed.get_linestyle() == "--" and list(dashed.get_xdata()) == [20, 30]
    assert list(dashed.get_ydata()) == [35.0, 10.0] and "dashed: fewer runs" in solid.get_label()
    plt.close(fig)
    fig, ax = plt.subplots()  # every run to the end: one solid line, the label as given
    plots._band(ax, plots.mean_ci(frame[frame.step < 30], "step", "val_top1_err"), "step", "sgd", n_runs=2)
    assert [line.get_label() for line in ax.get_lines()] == ["sgd"]
    plt.close(fig)


def test_seconds_are_not_pooled_across_layouts_workers_or_determinism_and_the_spread_is_not_blamed_on_load(tmp_path):
    """helper-87: two AdaRem seeds without channels_last (1.51x slower on the study's net) pooled
    into one images/s with the others, nothing said the layout differed, and the only flag blamed
    the machine's load. channels_last, deterministic, data.num_workers and data.cache_samples are
    not part of a run's identity but are of its speed."""
    root = tmp_path / "runs"
    for s in range(3):
        d = make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0], trainer={"channels_last": True})
        _write_lines(d, [{**r, "images_per_s": 150.0} if r["type"] == "epoch" else r for r in _lines(d)])
        d = make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0], trainer={"channels_last": s != 2})
        _write_lines(d, [{**r, "images_per_s": 150.0 if s != 2 else 100.0} if r["type"] == "epoch" else r
                         for r in _lines(d)])
    text = _report_with_adarems_timing_unpooled(root, tmp_path)
    assert "trained with trainer.channels_last true in 2, false in 1: their seconds and images/s are not pooled" in text
    assert "optimizers trained with different trainer.channels_last (adarem: true in 2, false in 1; sgd: true in 3)" \
        in text
    assert "its runs were set up or timed differently (see the other flags), or the machine's load varied" in text
    # data.num_workers too (a record's data section)
    root2 = tmp_path / "runs2"
    for s in range(3):
        make_run(root2, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0])
        d = make_run(root2, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0])
        record = json.loads((d / "run.json").read_text())
        record["config"]["data"]["num_workers"] = 0 if s == 0 else 4
        (d / "run.json").write_text(json.dumps(record))
    (tmp_path / "b").mkdir()
    assert "trained with data.num_workers 4 in 2, 0 in 1" in _report_with_adarems_timing_unpooled(root2, tmp_path / "b")


def test_two_cpu_models_are_not_pooled_and_an_unrecorded_one_is_no_other_model(tmp_path):
    """Two CPU hosts at one thread each gave one platform string (helper-87); the model is recorded
    now, and compared only where recorded: a record from before it is no other platform
    (helper-89: reused older trials made every time cell "mixed hardware")."""
    import torch

    from adarem.run.record import hardware
    assert hardware(torch.device("cpu"))["cpu_model"]

    def build(root, models):
        for s, m in enumerate(models):
            make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0])
            d = make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0])
            hw = {"device": "cpu", "torch_threads": 1, **({"cpu_model": m} if m else {})}
            _edit_record(d, hardware=hw)
        return load_runs(root)

    two = speed_table(build(tmp_path / "two", ["AMD EPYC 9654", "Intel Xeon 8480", "AMD EPYC 9654"])).set_index("optimizer")
    assert two.loc["adarem", "images/s"] == "mixed hardware (see flags)"
    text = write_report(build(tmp_path / "two_b", ["AMD EPYC 9654", "Intel Xeon 8480", None]), tmp_path / "o", CLAIMS_FILE, "t")
    assert "timed on 2 CPU models (AMD EPYC 9654; Intel Xeon 8480)" in text
    one = speed_table(build(tmp_path / "one", ["AMD EPYC 9654", None, "AMD EPYC 9654"])).set_index("optimizer")
    assert one.loc["adarem", "images/s"] not in ("mixed hardware (see flags)", "mixed training setup (see flags)")


def test_a_resumed_run_is_mixed_only_across_two_recorded_cpu_models():
    from adarem.run.record import _provenance_differences

    old = {"hardware": {"device": "cpu", "torch_threads": 1}}
    new = {"hardware": {"device": "cpu", "torch_threads": 1, "cpu_model": "AMD EPYC 9654"}}
    other = {"hardware": {"device": "cpu", "torch_threads": 1, "cpu_model": "Intel Xeon 8480"}}
    assert "hardware.cpu_model" not in _provenance_differences(old, new)
    assert "hardware.cpu_model" in _provenance_differences(new, other)


def test_train_loss_columns_over_different_logging_windows_are_flagged(tmp_path):
    """train loss @x % averages the logging windows (trainer.log_every steps) that end in a span of
    the budget; log_every is not part of a run's identity, so optimizers logged over other windows
    shared a setting with no word."""
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0], trainer={"log_every": 1})
        make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0], trainer={"log_every": 5})
    text = write_report(load_runs(root), tmp_path / "out", CLAIMS_FILE, "test")
    assert "runs logged their loss every different numbers of steps (trainer.log_every: adarem: 5; sgd: 1)" in text
    same = tmp_path / "same"
    for s in range(3):
        make_run(same, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0], trainer={"log_every": 5})
        make_run(same, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0], trainer={"log_every": 5})
    assert "trainer.log_every:" not in write_report(load_runs(same), tmp_path / "out2", CLAIMS_FILE, "test")
