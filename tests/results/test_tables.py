"""The tables tool on small hand-made run records with known answers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from adarem.optim.adarem import cpu_kernel_error
from adarem.results import CLAIMS_FILE, load_runs, write_report
from adarem.results.claims import evaluate_claims, load_claims
from adarem.results.tables import speed_table, error_table
from tests.conftest import REPO


def make_run(root, name, optimizer, seed, curve, status="finished", lr=0.1, truncate=False, osc=None,
             write_run_json=True, start="2026-01-01T00:00:00", trainer=None):
    """A run record whose val top-1 error per epoch is ``curve`` (train loss = err / 10)."""
    d = root / name
    d.mkdir(parents=True)
    config = {"data": {"name": "toy", "eval_on": "val"}, "model": {"name": "net"},
              "optimizer": {"name": optimizer.split("_")[0], "variant": optimizer, "lr": lr, "weight_decay": 0.0},
              "trainer": {"epochs": 3, "batch_size": 32, **(trainer or {})}, "seed": seed}
    lines = []
    for e, err in enumerate(curve):
        lines.append({"type": "epoch", "epoch": e, "step": 10 * (e + 1), "train_loss": err / 10,
                      "val_top1_err": err, "val_top5_err": err / 2, "val_loss": err / 20,
                      "wall_time_s": 2.0 * (e + 1), "images_per_s": 100.0})
    for step in range(1, 10 * len(curve) + 1):  # a loss line every step, window mean = step / 100
        lines.append({"type": "iter", "epoch": (step - 1) // 10, "step": step, "loss": 9.0,
                      "train_loss_window": step / 100, "train_loss_window_steps": 1})
    for step, frac in enumerate(osc or [], 1):
        lines.append({"type": "oscillation", "step": step * 10, "flip_fraction": frac, "per_layer": {}})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if truncate:
        text += '{"type": "epoch", "epoch": 99, "trai'  # a write cut short
    (d / "metrics.jsonl").write_text(text)
    if write_run_json:
        final = {"val_top1_err": curve[-1]} if status == "finished" else {}
        (d / "run.json").write_text(json.dumps({"status": status, "config": config, "final": final,
                                                "start_time": start, "steps_per_epoch": 10}))
    return d


@pytest.fixture()
def records(tmp_path):
    root = tmp_path / "runs"
    for s, last in enumerate([10.0, 12.0, 11.0]):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, last], osc=[0.4, 0.5])
    for s, last in enumerate([8.0, 9.0, 7.0]):
        make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, last], osc=[0.2, 0.3])
    make_run(root, "adam0", "adam", 0, [50.0, 30.0, 20.0])
    make_run(root, "adam1", "adam", 1, [50.0, 30.0, 22.0])
    make_run(root, "adam_div", "adam", 2, [50.0], status="diverged")
    make_run(root, "adam_dup", "adam", 0, [1.0, 1.0, 1.0], start="2026-02-01T00:00:00")  # duplicate of adam0
    make_run(root, "still_running", "adamw", 0, [60.0], status="running")
    make_run(root, "no_record", "adamw", 1, [60.0], write_run_json=False)
    return root


def test_known_answers(records):
    rs = load_runs(records)
    assert sorted(rs.runs.run_dir.map(lambda p: p.split("/")[-1])) == sorted(
        ["sgd0", "sgd1", "sgd2", "adarem0", "adarem1", "adarem2", "adam0", "adam1", "adam_div"])
    problems = {p["run_dir"].split("/")[-1]: p["problem"] for p in rs.problems}
    assert "duplicate of" in problems["adam_dup"] and problems["adam_dup"].endswith(
        "(same config and seed): excluded, the first started being kept; to report this one instead, move the other away")
    assert "incomplete (status running)" in problems["still_running"]
    assert "no run.json" in problems["no_record"]

    err = error_table(rs).set_index("optimizer")
    assert err.loc["sgd", "final top-1 err"] == "11.00 ± 1.00"
    assert err.loc["sgd", "min top-1 err over evals (test-selected)"] == "11.00 ± 1.00"
    assert err.loc["adarem", "final top-1 err"] == "8.00 ± 1.00"
    assert err.loc["adam", "n"] == 3 and err.loc["adam", "diverged"] == 1
    # the duplicate's 1.0 is not mixed in; the diverged run has no final error: a mean of 2 of 3
    assert err.loc["adam", "final top-1 err"] == "21.00 ± 1.41 (2 of 3)"

    speed = speed_table(rs).set_index("optimizer")
    # SGD's median final error is 11: targets 12 and 16. AdaRem: 15 at step 20 reaches 16, and
    # 12 at step 30; SGD reaches 16 and 12 at step 30; Adam never reaches 12 (nor does a diverged run)
    assert speed.loc["adarem", "steps to SGD+5"] == "20 (3/3 reached)"
    assert speed.loc["adarem", "steps to SGD+1"] == "30 (3/3 reached)"
    assert speed.loc["adarem", "s to SGD+5"] == "4 (3/3 reached)"
    assert speed.loc["adam", "steps to SGD+1"] == "not reached (0/3)"
    assert speed.loc["adam", "steps to SGD+5"] == "not reached (0/3)"
    assert speed.loc["adarem", "speed-up vs sgd [95 % CI]"] == "1.00 [1.00, 1.00]"
    assert speed.loc["adarem", "speed-up vs adam [95 % CI]"] == "∞ [∞, ∞]"
    assert speed.loc["adam", "speed-up vs sgd [95 % CI]"] == "0.00 [0.00, 0.00]"
    # read at 10 % / 100 % of the 30-step budget: the windows ending in (0, 3] and (27, 30]
    assert speed.loc["sgd", "train loss @10%"] == "0.02 ± 0.00"
    assert speed.loc["sgd", "train loss @100%"] == "0.29 ± 0.00"
    assert speed.loc["adarem", "val-err AUC"] == "17.67 ± 0.33"


def test_a_curve_with_a_hole_is_left_out_of_every_curve_metric(tmp_path):
    """A torn metrics.jsonl line (which line it was is unknown: an evaluation, a loss line), an
    evaluation logged twice, a mid-epoch evaluation line deleted: the run's final error counts,
    nothing read off its curve does. A torn evaluation line used to move steps to target (the
    next evaluation's step was read instead), and a repeated one the AUC, without a flag."""
    import json

    root = tmp_path / "runs"
    every = {"evals_per_epoch": 2}
    for s, last in enumerate([10.0, 12.0, 11.0]):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, last], trainer=every)

    def evaluated_twice_an_epoch(d, keep):  # the mid-epoch lines ``keep`` of epochs 0, 1, 2
        lines = [json.dumps({"type": "eval", "epoch": e, "step": 10 * e + 5, "epoch_frac": e + 0.5,
                             "val_top1_err": 35.0, "val_loss": 1.0, "wall_time_s": 1.0}) + "\n" for e in range(3)]
        with open(d / "metrics.jsonl", "a") as f:
            f.write("".join(lines[i] for i in keep))

    for d in root.iterdir():
        evaluated_twice_an_epoch(d, [0, 1, 2])
    for name, seed, last, keep in [("adarem_torn", 0, 8.0, [0, 1, 2]), ("adarem_twice", 1, 9.0, [0, 1, 1, 2]),
                                   ("adarem_mid", 2, 7.0, [0, 1]), ("adarem_whole", 3, 8.0, [0, 1, 2])]:
        evaluated_twice_an_epoch(make_run(root, name, "adarem", seed, [30.0, 15.0, last], trainer=every), keep)
    with open(root / "adarem_torn" / "metrics.jsonl", "a") as f:
        f.write('{"type": "eval", "epoch": 2, "ste')  # a write cut short
    rs = load_runs(root)
    gap = rs.runs.set_index("run_dir").curve_gap
    assert gap[str(root / "adarem_torn")] == "1 metrics.jsonl line(s) unreadable (a torn write)"
    assert gap[str(root / "adarem_twice")] == ("evaluation(s) at step(s) 15 logged more than once; 4 mid-epoch "
                                               "evaluation line(s) for the 3 of 3 epochs at trainer.evals_per_epoch=2")
    assert gap[str(root / "adarem_mid")] == ("2 mid-epoch evaluation line(s) for the 3 of 3 epochs at "
                                             "trainer.evals_per_epoch=2")
    assert (gap[[str(root / f"sgd{s}") for s in range(3)] + [str(root / "adarem_whole")]] == "").all()
    problems = {p["run_dir"].split("/")[-1]: p["problem"] for p in rs.problems}
    assert "line 37 is not valid JSON" in problems["adarem_torn"]  # 3 epochs, 30 steps, 3 evaluations
    err = error_table(rs).set_index("optimizer")
    assert err.loc["adarem", "n"] == 4 and err.loc["adarem", "final top-1 err"] == "8.00 ± 0.82"  # every final
    # the one whole curve: mid-epoch evaluations at 35 %, the epochs' at 30, 15, 8
    assert err.loc["adarem", "min top-1 err over evals (test-selected)"] == "8.00 (1 of 4)"
    speed = speed_table(rs).set_index("optimizer")
    assert speed.loc["adarem", "steps to SGD+5"] == "20 (1/1 reached; 3 left out, see flags)"


def test_runs_in_other_arithmetic_are_another_setting(tmp_path):
    """trainer.amp=auto is bf16 autocast on a GPU and fp32 on the CPU, and a CUDA run's fp32
    matmuls are TF32: a GPU run and a CPU run of one config used to share a row and a claim (only
    the seconds were flagged). They are two settings now, labelled by the arithmetic."""
    import json

    root = tmp_path / "runs"

    def on(d, device, tf32, amp=None):
        record = json.loads((d / "run.json").read_text())
        record.update(hardware={"device": device}, tf32=tf32)
        if amp:
            record["config"]["trainer"]["amp"] = amp
        (d / "run.json").write_text(json.dumps(record))

    for s, last in enumerate([10.0, 12.0, 11.0]):
        on(make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, last]), "cpu", False)
        on(make_run(root, f"adarem_cpu{s}", "adarem", s, [30.0, 15.0, last - 2]), "cpu", False)
        on(make_run(root, f"adarem_gpu{s}", "adarem", s, [30.0, 15.0, last - 3]), "cuda:0", True)
    rs = load_runs(root)
    labels = rs.runs.set_index("run_dir").dataset
    assert labels[str(root / "sgd0")] == labels[str(root / "adarem_cpu0")]  # auto on the CPU: fp32, both
    assert labels[str(root / "adarem_gpu0")] != labels[str(root / "adarem_cpu0")]
    assert "trainer.amp=bf16" in labels[str(root / "adarem_gpu0")] and "tf32 matmuls=true" in labels[str(root / "adarem_gpu0")]
    err = error_table(rs)
    assert sorted(err.groupby("dataset").optimizer.apply(sorted).map(tuple)) == [("adarem",), ("adarem", "sgd")]

    # the same arithmetic spelled two ways (auto on the CPU, none written out) is one setting
    other = tmp_path / "other"
    for s, last in enumerate([10.0, 12.0, 11.0]):
        on(make_run(other, f"sgd{s}", "sgd", s, [40.0, 20.0, last]), "cpu", False, amp="none")
        on(make_run(other, f"adarem{s}", "adarem", s, [30.0, 15.0, last - 2]), "cpu", False)
    assert load_runs(other).runs.dataset.nunique() == 1


def test_diverged_runs_never_reach_and_other_protocols_are_not_compared(tmp_path):
    root = tmp_path / "runs"
    for s, last in enumerate([10.0, 12.0, 11.0]):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, last])
    for s in range(3):  # passed both targets at step 10, then diverged: no model was delivered
        make_run(root, f"adarem{s}", "adarem", s, [11.0, 11.0], status="diverged")
    for s in range(3):  # the same curve as SGD's, evaluated four times per epoch
        make_run(root, f"adam{s}", "adam", s, [40.0, 20.0, 11.0], trainer={"evals_per_epoch": 4})
    speed = speed_table(load_runs(root)).set_index("optimizer")
    assert speed.loc["adarem", "steps to SGD+1"] == "not reached (0/3)"
    assert speed.loc["adarem", "speed-up vs sgd [95 % CI]"] == "0.00 [0.00, 0.00]"
    assert speed.loc["adam", "speed-up vs sgd [95 % CI]"] == "— (evaluated differently)"
    assert speed.loc["adam", "evals_per_epoch"] == 4 and speed.loc["sgd", "evals_per_epoch"] == 1


def test_steps_to_target_and_speedup_ci():
    from adarem.results.tables import speedup_ci

    # median(100, 200, 300) / median(50, 100, never) = 200 / 100
    r, lo, hi = speedup_ci([100, 200, 300], [50, 100, math.inf])
    assert r == 2.0 and lo <= r <= hi
    # the interval by brute force over every resample of 3 x 3 seeds (27 x 27 equally likely pairs)
    import itertools
    import numpy as np
    ratios = [np.median(b) / np.median(s) for b in itertools.product([100, 200, 300], repeat=3)
              for s in itertools.product([50, 100, math.inf], repeat=3)]
    exact_lo, exact_hi = np.percentile(ratios, [2.5, 97.5])
    assert lo == pytest.approx(exact_lo, rel=0.35) and hi == pytest.approx(exact_hi, rel=0.35)
    assert speedup_ci([100, 200, 300], [50, 100, math.inf]) == (r, lo, hi)  # seeded
    assert speedup_ci([10, 10, 10], [20, 20, 20]) == (0.5, 0.5, 0.5)
    r, lo, hi = speedup_ci([30], [20])  # one seed a side: no interval, not a zero-width one
    assert r == 1.5 and math.isnan(lo) and math.isnan(hi)
    r, lo, hi = speedup_ci([math.inf] * 3, [math.inf] * 3)  # neither reaches: no ratio
    assert math.isnan(r) and math.isnan(lo) and math.isnan(hi)


def test_claims_verdicts(records):
    rs = load_runs(records)
    verdicts = evaluate_claims(rs, load_claims(CLAIMS_FILE)).set_index("claim")
    v = verdicts.loc["lower_error_than_adam"]
    # adarem 8 +- 1 (n=3) vs adam [20, 22, 100 (diverged)] (n=3): better, but adam's spread is wide; the
    # mean shown is of adam's measurements, the diverged run counted apart
    assert v.n_subject == 3 and v.n_baseline == 3 and v.baseline_mean == pytest.approx(21.0)
    assert v.unmeasured_baseline == 1
    # rank-tested (a placeholder): no mean difference; 3 seeds a side cannot clear Holm's level here
    assert v.verdict == "Inconclusive" and 0 < v.p <= v.p_holm < 1 and math.isnan(v["diff"]) and v.mdd == math.inf
    assert verdicts.loc["lower_error_than_adamw"].verdict == "Insufficient data"  # no complete adamw run
    # the oscillation claims compare like with like: no sgd_plain or adarem_m run here, so no verdict
    # (plain AdaRem's flips 0.25 vs SGD-momentum's 0.45 would measure momentum)
    for claim in ("oscillates_less_than_sgd_plain", "straighter_path_than_sgd_plain",
                  "momentum_variant_oscillates_less_than_sgd", "momentum_variant_straighter_path_than_sgd"):
        assert verdicts.loc[claim].verdict == "Insufficient data"
    sgd = verdicts.loc["lower_error_than_sgd"]
    # 8 +- 1 vs 11 +- 1, n = 3 each: p = 0.0107, x 3 tested claims (Holm) = 0.032
    assert sgd.verdict == "Supported" and sgd.p_holm == pytest.approx(3 * sgd.p) and sgd["diff"] == pytest.approx(-3)


def test_report_and_cli(records, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(records), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    md = (out / "tables.md").read_text()
    assert "## Excluded or flagged runs" in md and "duplicate of" in md
    for name in ("test_error.csv", "test_error.tex", "speed.csv", "claims.csv", "oscillation.csv"):
        assert (out / name).exists()
    assert "\\toprule" in (out / "test_error.tex").read_text()
    assert list((out / "plots").glob("*.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(empty), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no complete run" in res.stderr
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_write_report_handles_only_problems(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "r", "sgd", 0, [10.0], status="preempted")
    rs = load_runs(root)
    assert rs.runs.empty and len(rs.problems) == 1
    text = write_report(rs, tmp_path / "o", None, "test")
    assert "incomplete (status preempted)" in text


@pytest.mark.slow
def test_compare_cli_runs_end_to_end(tmp_path, env):
    """scripts/compare.py's default path (digits, the six optimizers the claims compare), shortened
    to 1 epoch, one lr, one selection seed and one final seed so that it fits the test budget."""
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "seeds=1", "select_seeds=1",
                          "lr_grid=1", f"runs={tmp_path / 'runs'}", f"out={tmp_path / 'out'}", "data=digits",
                          "trainer.epochs=1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "## Provenance" in md and "## Hyperparameter selection" in md and "## Claims of the paper" in md
    for opt in ("sgd", "sgd_plain", "adam", "adamw", "adarem", "adarem_m"):
        assert f"| {opt} " in md
    for ablation in ("adarem_horizon", "adarem_nodecay"):  # opt-in (optimizers=...)
        assert f"| {ablation} " not in md
    # a single-point grid is not a search: the report says so instead of calling it interior
    assert md.count("not searched") == 6
    assert len(list((tmp_path / "runs" / "final").rglob("run.json"))) == 6
    # the speed section: steps to target with reached counts, the speed-ups, the protocol stated
    assert "speed-up vs sgd [95 % CI]" in md and "reached)" in md
    assert "recomputed on 8 training batches" in md and "Evaluations: 4 per epoch" in md
    # the path each optimizer stepped with, from run.json (auto on the CPU: every optimizer's fused
    # kernel; AdaRem's foreach where its kernel cannot be built)
    adarem_path = "fused" if cpu_kernel_error() is None else "foreach"
    assert f"Optimizer paths (run.json's optimizer_impl): adam fused; adamw fused; adarem {adarem_path}" in md
    for png in ("selection_lr.png", "curves_digits_small_cnn.png", "oscillation_digits_small_cnn.png"):
        assert (tmp_path / "out" / "plots" / png).stat().st_size > 10_000, png
    final = next((tmp_path / "runs" / "final").rglob("metrics.jsonl"))
    evals = [json.loads(line) for line in final.read_text().splitlines() if '"eval"' in line]
    assert len(evals) == 3  # 4 evaluations in the epoch: 3 inside it, the last at its end


def test_records_from_before_a_key_existed_pool_with_new_ones():
    from adarem.results.records import config_id

    old = {"optimizer": {"name": "adarem", "lr": 0.1}, "trainer": {"epochs": 3}, "seed": 0}
    new = {"optimizer": {"name": "adarem", "lr": 0.1, "decay_horizon": 0.0},
           "trainer": {"epochs": 3, "evals_per_epoch": 1, "bn_recalibrate": 0}, "seed": 1}
    assert config_id(old) == config_id(new)
    assert config_id(old) != config_id({**new, "trainer": {"epochs": 3, "evals_per_epoch": 4}})


def test_two_datasets_sharing_a_name_are_two_settings_in_claims_and_targets(tmp_path):
    """Two data roots under one data.name: the claims never compare a run on one with a run on the
    other, and the SGD target of one never measures the other (hostile review of issue 10)."""
    from adarem.results.tables import sgd_targets

    root = tmp_path / "runs"
    for s in range(3):
        for name, opt, last, ident in ((f"sgd_a{s}", "sgd", 10.0 + s, "A"), (f"adarem_b{s}", "adarem", 5.0 + s, "B")):
            d = make_run(root, name, opt, s, [40.0, 20.0, last])
            record = json.loads((d / "run.json").read_text())
            record["data_identity"] = {"root": f"/data/{ident}", "train_samples": 100 if ident == "A" else 90}
            (d / "run.json").write_text(json.dumps(record))
    rs = load_runs(root)
    assert rs.runs.dataset.nunique() == 2 and all(rs.runs.dataset.str.startswith("toy@"))
    claims = evaluate_claims(rs, load_claims(CLAIMS_FILE))
    vs_sgd = claims[(claims.subject == "adarem") & (claims.baseline == "sgd")]
    assert not vs_sgd.empty
    assert (vs_sgd.n_subject * vs_sgd.n_baseline == 0).all(), vs_sgd  # never adarem on B against sgd on A
    assert set(vs_sgd.verdict) == {"Insufficient data"}
    targets = sgd_targets(rs, (1.0,))
    assert len(targets) == 1  # only the setting that has SGD runs gets a target


def test_finished_runs_that_disagree_with_their_record_are_kept_out(tmp_path):
    """run.json's final is what train.py reported: a finished record without a finite final error,
    or with a metrics.jsonl that lacks epochs or ends on another error, is listed and excluded."""
    root = tmp_path / "runs"
    make_run(root, "good", "sgd", 0, [40.0, 20.0, 10.0])
    no_final = make_run(root, "no_final", "sgd", 1, [40.0, 20.0, 10.0])
    record = json.loads((no_final / "run.json").read_text())
    record["final"] = {"val_top1_err": None}
    (no_final / "run.json").write_text(json.dumps(record))
    make_run(root, "short", "sgd", 2, [40.0, 20.0])  # 2 epoch lines for trainer.epochs=3
    other = make_run(root, "other_final", "sgd", 3, [40.0, 20.0, 10.0])
    record = json.loads((other / "run.json").read_text())
    record["final"] = {"val_top1_err": 5.0}  # not the last evaluated error
    (other / "run.json").write_text(json.dumps(record))
    nan_loss = make_run(root, "nan_loss", "sgd", 4, [40.0, 20.0, 10.0])  # blown up after the last step,
    record = json.loads((nan_loss / "run.json").read_text())  # as a version before 26b6a62 recorded it
    record["final"] = {**record["final"], "val_loss": float("nan")}
    (nan_loss / "run.json").write_text(json.dumps(record))
    rs = load_runs(root)
    assert list(rs.runs.run_dir.str.split("/").str[-1]) == ["good"]
    problems = {p["run_dir"].split("/")[-1]: p["problem"] for p in rs.problems}
    assert "records no finite final error" in problems["no_final"]
    assert "final validation loss is nan" in problems["nan_loss"]
    assert "metrics.jsonl disagrees with run.json" in problems["short"]
    assert "metrics.jsonl disagrees with run.json" in problems["other_final"]


def test_two_comparisons_of_one_dataset_and_model_are_never_paired(tmp_path):
    """Two comparisons of toy x net, one of 3 epochs and one of 6, in one tree. Each optimizer's
    selected configuration is the one with the most seeds: SGD's is in the 3-epoch comparison and
    AdaRem's in the 6-epoch one. Pooled by dataset x model, the claims would compare AdaRem trained
    6 epochs (error 6) with SGD trained 3 (error 10) and find AdaRem better; it is worse in both."""
    from adarem.results.tables import sgd_targets

    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"a_sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"b_adarem{s}", "adarem", s, [40.0, 30.0, 20.0, 10.0, 8.0, 6.0 + 0.1 * s],
                 trainer={"epochs": 6})
    for s in range(2):
        make_run(root, f"a_adarem{s}", "adarem", s, [40.0, 20.0, 12.0 + 0.1 * s])
        make_run(root, f"b_sgd{s}", "sgd", s, [40.0, 30.0, 20.0, 10.0, 6.0, 5.0 + 0.1 * s], trainer={"epochs": 6})
    rs = load_runs(root)
    assert not rs.problems
    assert set(rs.runs.dataset) == {"toy (trainer.epochs=3)", "toy (trainer.epochs=6)"}
    for label, epochs in (("toy (trainer.epochs=3)", 3), ("toy (trainer.epochs=6)", 6)):
        assert set(rs.runs[rs.runs.dataset == label].epochs) == {epochs}
    claims = evaluate_claims(rs, load_claims(CLAIMS_FILE))
    row = claims[(claims.subject == "adarem") & (claims.baseline == "sgd") & (claims.metric == "final_top1")]
    by_setting = dict(zip(row.dataset, zip(row.subject_mean, row.baseline_mean)))
    assert by_setting["toy (trainer.epochs=3)"] == pytest.approx((12.05, 10.1))
    assert by_setting["toy (trainer.epochs=6)"] == pytest.approx((6.1, 5.05))
    assert set(row.verdict) == {"Contradicted"}  # pooled by dataset x model it was "Supported"
    assert sgd_targets(rs, (1.0,)) == {("toy (trainer.epochs=3)", "net"): [pytest.approx(11.1)],
                                       ("toy (trainer.epochs=6)", "net"): [pytest.approx(6.05)]}


def test_search_runs_on_the_holdout_stay_in_their_comparison(tmp_path):
    """The lr search's holdout runs differ from the final runs only in data.eval_on (and the seed,
    lr): one setting, no relabelling."""
    root = tmp_path / "runs"
    for s in range(2):
        make_run(root, f"final_sgd{s}", "sgd", s, [40.0, 20.0, 10.0])
        d = make_run(root, f"search_sgd{s}", "sgd", 1000 + s, [40.0, 20.0, 11.0], lr=0.3)
        record = json.loads((d / "run.json").read_text())
        record["config"]["data"]["eval_on"] = "holdout"
        (d / "run.json").write_text(json.dumps(record))
    rs = load_runs(root)
    assert set(rs.runs.dataset) == {"toy"} and set(rs.runs.eval_on) == {"val", "holdout"}


def _retag(d, **config_changes):
    """Change keys of a hand-made record's config: {"optimizer.eps": 1e-6} and the like."""
    record = json.loads((d / "run.json").read_text())
    for dotted, value in config_changes.items():
        node = record["config"]
        *path, key = dotted.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[key] = value
    (d / "run.json").write_text(json.dumps(record))


def test_an_optimizer_key_set_for_every_optimizer_is_part_of_the_setting(tmp_path):
    """no_weight_decay_on_bias_and_norm=false for a whole comparison (hostile review): AdaRem is
    worse than SGD in each comparison, and pooled by dataset x model (AdaRem of B, SGD of A) the
    claim was Supported."""
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"a_sgd{s}", "sgd", s, [40.0, 20.0, 10.2 + 0.1 * (s - 1)])
        _retag(make_run(root, f"b_adarem{s}", "adarem", s, [40.0, 20.0, 9.2 + 0.1 * (s - 1)]),
               **{"optimizer.no_weight_decay_on_bias_and_norm": False})
    for s in range(2):
        make_run(root, f"a_adarem{s}", "adarem", s, [40.0, 20.0, 11.3 + 0.1 * s])
        _retag(make_run(root, f"b_sgd{s}", "sgd", s, [40.0, 20.0, 8.2 + 0.1 * s]),
               **{"optimizer.no_weight_decay_on_bias_and_norm": False})
    rs = load_runs(root)
    assert set(rs.runs.dataset) == {"toy (optimizer.no_weight_decay_on_bias_and_norm=false)",
                                    "toy (optimizer.no_weight_decay_on_bias_and_norm=unset)"}
    claims = evaluate_claims(rs, load_claims(CLAIMS_FILE))
    row = claims[(claims.subject == "adarem") & (claims.baseline == "sgd") & (claims.metric == "final_top1")]
    assert len(row) == 2 and not (row.verdict == "Supported").any(), row


def test_the_presets_own_keys_are_what_a_comparison_varies():
    """Every key an optimizer preset sets is one the setting leaves to the optimizer; no other
    optimizer key is (a new preset key must be added to OPTIMIZER_OWN, or it splits comparisons)."""
    import yaml

    from adarem.results.records import OPTIMIZER_OWN

    set_by_presets = {f"optimizer.{k}" for f in (REPO / "configs" / "optimizer").glob("*.yaml")
                      for k in (yaml.safe_load(f.read_text()) or {})}
    assert set_by_presets == set(OPTIMIZER_OWN)


def test_a_tie_on_seeds_is_not_broken_by_the_test_error_and_is_listed(tmp_path):
    """Two configurations of AdaRem with as many seeds (two searches in one runs folder): the
    selection must not take the lower test error (that selects the lr on the test split); it takes
    the most recently started, and the report lists the tie."""
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"old{s}", "adarem", s, [40.0, 20.0, 9.0 + 0.1 * s], lr=0.03)  # lower test error
        make_run(root, f"new{s}", "adarem", s, [40.0, 20.0, 11.0 + 0.1 * s], lr=0.3, start="2026-03-01T00:00:00")
    rs = load_runs(root)
    from adarem.results.tables import selected_groups

    sel = selected_groups(rs.runs)
    assert set(sel[sel.optimizer == "adarem"].lr) == {0.3}
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert "2 configurations with 3 seeds each" in text and "(lr 0.3, wd 0, 3 seeds)" in text and "not lr 0.03" in text


def test_a_preset_run_with_its_own_keys_changed_is_another_optimizer(tmp_path):
    """optimizer=sgd optimizer.momentum=0 is not the SGD-momentum the claims compare with: with
    more seeds than the real SGD-momentum runs it used to be selected as "sgd", silently."""
    def run(name, variant, seed, err, **opt):
        d = make_run(tmp_path / "runs", name, variant, seed, [40.0, 20.0, err], lr=opt.pop("lr", 0.1))
        record = json.loads((d / "run.json").read_text())
        record["config"]["optimizer"].update(opt)
        (d / "run.json").write_text(json.dumps(record))

    for s in range(2):
        run(f"sgdm{s}", "sgd", s, 9.0 + 0.1 * s, momentum=0.9)
        run(f"adarem{s}", "adarem", s, 12.0 + 0.1 * s, decay_horizon=0.0)
    for s in range(3):
        run(f"sgd0_{s}", "sgd", s, 19.0 + 0.1 * s, momentum=0.0)
        run(f"adarem_h{s}", "adarem", s, 8.0 + 0.1 * s, decay_horizon=0.5)
        run(f"sgd_lr{s}", "sgd", s, 11.0 + 0.1 * s, momentum=0.9, lr=0.3)
    rs = load_runs(tmp_path / "runs")
    # plain AdaRem (decay_horizon 0, as its preset) keeps its name: only the deviating runs are renamed
    assert set(rs.runs.optimizer) == {"sgd", "sgd (momentum=0)", "adarem", "adarem (decay_horizon=0.5)"}
    from adarem.results.tables import selected_groups, selection_notes

    sel = selected_groups(rs.runs)
    sgd = sel[sel.optimizer == "sgd"]
    assert set(sgd.lr) == {0.3} and len(sgd) == 3  # SGD-momentum: the lr with the most seeds, never momentum 0
    (note,) = [n["problem"] for n in selection_notes(rs.runs) if n["run_dir"].endswith(": sgd")]
    assert "use the one with the most seeds (lr 0.3, wd 0, 3 seeds), not lr 0.1, wd 0 (2 seeds)" in note


def test_labels_that_name_paths_make_plot_files_and_links_that_work(tmp_path):
    """A setting label may hold a path (two data roots): the plots' file names and the Markdown
    links to them must still work (hostile review: write_report crashed on the '/')."""
    root = tmp_path / "runs"
    for s in range(2):
        for tag, path in (("a", "/data/fmnist"), ("b", "/data/fmnist_v2")):
            for opt in ("sgd", "adarem"):
                _retag(make_run(root, f"{tag}_{opt}{s}", opt, s, [40.0, 20.0, 10.0 + s]), **{"data.root": path})
    rs = load_runs(root)
    assert set(rs.runs.dataset) == {"toy (data.root=/data/fmnist)", "toy (data.root=/data/fmnist_v2)"}
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    links = [line for line in text.splitlines() if line.startswith("![curves_")]
    assert len(links) == 2 and len(set(links)) == 2
    for line in links:
        target = line[line.index("](") + 2:-1]
        assert " " not in target and (tmp_path / "out" / target).is_file(), line


def test_runs_that_normalise_batchnorm_over_other_batches_never_pool(tmp_path):
    """One configuration on 1 rank and on 2 ranks without SyncBatchNorm: BatchNorm normalised over
    32 vs 16 images, two rows and two settings. With SyncBatchNorm (or no BatchNorm: bn_batch
    null), or in records from before bn_batch existed on 1 rank, the runs pool."""
    from adarem.results.records import split_bn_batch

    def record(world, sync=False, **extra):
        return {"world_size": world, "config": {"trainer": {"batch_size": 32, "sync_bn": sync}}, **extra}

    assert split_bn_batch(record(1)) is None and split_bn_batch(record(2)) == 16
    assert split_bn_batch(record(2, sync=True)) is None and split_bn_batch(record(2, bn_batch=None)) is None
    root = tmp_path / "runs"
    for s in range(2):
        for opt in ("sgd", "adarem"):
            make_run(root, f"one_{opt}{s}", opt, s, [40.0, 20.0, 10.0 + s])
            d = make_run(root, f"two_{opt}{s}", opt, s, [40.0, 20.0, 12.0 + s])
            rec = json.loads((d / "run.json").read_text())
            (d / "run.json").write_text(json.dumps({**rec, "world_size": 2, "bn_batch": 16}))
    rs = load_runs(root)
    assert not rs.problems  # not duplicates: two configurations
    assert set(rs.runs.dataset) == {"toy (bn_batch=global batch)", "toy (bn_batch=16)"}
    assert rs.runs.config_id.nunique() == 4


def test_a_missing_speed_up_interval_says_why(tmp_path):
    """Neither AdaRem nor Adam reaches SGD's target in any of 3 seeds each: the interval is missing
    because neither got there, not for want of seeds."""
    root = tmp_path / "runs"
    for s in range(3):
        make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        make_run(root, f"adam{s}", "adam", s, [50.0, 40.0, 30.0 + 0.1 * s])
        make_run(root, f"adarem{s}", "adarem", s, [50.0, 45.0, 35.0 + 0.1 * s])
    make_run(root, "adamw0", "adamw", 0, [50.0, 45.0, 9.0])
    df = speed_table(load_runs(root))
    adarem = df[df.optimizer == "adarem"].iloc[0]
    assert adarem["speed-up vs adam [95 % CI]"] == "— [neither reached]"
    assert adarem["speed-up vs adamw [95 % CI]"].endswith("[< 3 seeds]")  # one AdamW seed


def test_the_report_names_the_code_that_trained_the_runs(tmp_path):
    """A comparison relaunched after a code change reuses its finished runs: the report says which
    commits (and uncommitted changes) trained what, not only the commit it was made at."""
    root = tmp_path / "runs"
    for s, (commit, dirty) in enumerate([("aaaaaaaaaa11", False), ("aaaaaaaaaa11", False), ("bbbbbbbbbb22", True)]):
        d = make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0 + 0.1 * s])
        record = json.loads((d / "run.json").read_text())
        record["git"] = {"commit": commit, "dirty": dirty}
        (d / "run.json").write_text(json.dumps(record))
    text = write_report(load_runs(root), tmp_path / "out", CLAIMS_FILE, "test")
    assert "Trained at: commit aaaaaaaaaa (2 runs); commit bbbbbbbbbb with uncommitted changes (1 run)." in text
    assert "runs trained at 2 commits" in text and "1 run(s) trained with uncommitted changes" in text


def test_every_preset_sets_the_keys_its_optimizer_reads_and_spellings_do_not_split():
    """optimizer_label compares a run with its preset: each preset must set every key of
    OPTIMIZER_OWN its optimizer reads (adarem_horizon's decay is not read), and a record written
    before a key existed, or spelling a number differently, is still the preset."""
    from adarem.results.records import READS, optimizer_label, optimizer_presets

    presets = optimizer_presets()
    assert {"sgd", "sgd_plain", "adam", "adamw", "adarem", "adarem_m", "adarem_nodecay", "adarem_horizon"} <= set(presets)
    for variant, preset in presets.items():
        missing = set(READS[preset["name"]]) - set(preset) - ({"decay"} if preset.get("decay_horizon", 0) else set())
        assert not missing, (variant, missing)
        assert optimizer_label(dict(preset)) == variant
    old = {k: v for k, v in presets["adarem"].items() if k != "decay_horizon"}
    assert optimizer_label(old) == "adarem"
    assert optimizer_label({**presets["adam"], "betas": (0.9, 0.999), "momentum": 0}) == "adam"  # SGD's key: not read
    assert optimizer_label({**presets["sgd"], "momentum": 0.95}) == "sgd (momentum=0.95)"
    assert optimizer_label({**presets["sgd"], "momentum": 0.9500001}) == "sgd (momentum=0.9500001)"
    assert optimizer_label({**presets["adarem_horizon"], "decay": 0.5}) == "adarem_horizon"  # decay not read
    assert optimizer_label({**presets["adarem"], "decay_horizon": 1.0}) == "adarem (decay_horizon=1)"


def test_records_before_content_hashes_pool_with_new_ones_and_other_contents_never_do(tmp_path):
    """data_identity gained content keys (train_sha1 ...): a record without them pools with new
    records of the same data; records of one data root with two contents (classes swapped) are two
    datasets, and an old record beside both cannot be placed, so it is kept apart and listed."""
    base = {"name": "toy", "root": "/data/toy", "eval_on": "val", "train_samples": 96, "val_samples": 32,
            "num_classes": 10, "classes_sha1": "abc"}

    def run(root, name, seed, identity, err=10.0):
        d = make_run(root, name, "sgd", seed, [40.0, 20.0, err + 0.1 * seed])
        record = json.loads((d / "run.json").read_text())
        record["data_identity"] = identity
        (d / "run.json").write_text(json.dumps(record))

    a = {**base, "train_images": 100, "val_images": 32, "train_sha1": "aaa", "val_sha1": "vvv"}
    one = tmp_path / "one"
    run(one, "old0", 0, base)
    run(one, "new1", 1, a)
    rs = load_runs(one)
    assert rs.runs.config_id.nunique() == 1 and set(rs.runs.dataset) == {"toy"} and not rs.problems

    two = tmp_path / "two"
    run(two, "old0", 0, base)
    run(two, "a1", 1, a)
    run(two, "b2", 2, {**a, "train_sha1": "bbb"}, err=30.0)
    rs = load_runs(two)
    assert rs.runs.config_id.nunique() == 3 and rs.runs.dataset.nunique() == 3
    (problem,) = rs.problems
    assert problem["run_dir"].endswith("old0") and "kept apart from all of them" in problem["problem"]


def test_a_key_the_optimizer_never_reads_does_not_make_another_configuration(tmp_path):
    """optimizer=adam optimizer.momentum=0.5 trains exactly as Adam: its runs pool with Adam's
    (two identical-looking rows and a note naming neither difference were the alternative)."""
    root = tmp_path / "runs"
    for s in range(2):
        for name, momentum in (("a", 0.0), ("b", 0.5)):
            d = make_run(root, f"{name}{s}", "adam", s + (2 if name == "b" else 0), [40.0, 20.0, 10.0 + s])
            record = json.loads((d / "run.json").read_text())
            record["config"]["optimizer"]["momentum"] = momentum
            (d / "run.json").write_text(json.dumps(record))
    rs = load_runs(root)
    assert rs.runs.config_id.nunique() == 1 and set(rs.runs.optimizer) == {"adam"}
    assert len(error_table(rs)) == 1 and error_table(rs).n.tolist() == [4]


def test_seconds_and_images_per_second_are_never_pooled_across_platforms(tmp_path):
    """A model without BatchNorm trained on 1 and on 2 ranks pools for its errors and steps, but its
    seconds and images/s measure two machines: they were averaged into one row ("1300 ± 358
    images/s"), and the optimizers' seconds compared without a word when timed on different ones."""
    root = tmp_path / "runs"

    def platform(d, world, device="cpu", gpu=None):
        record = json.loads((d / "run.json").read_text())
        record.update(world_size=world, bn_batch=None,  # no BatchNorm: the errors pool
                      hardware={"device": device, "torch_threads": 1, **({"gpu": gpu} if gpu else {})})
        (d / "run.json").write_text(json.dumps(record))

    for s in range(3):
        platform(make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0]), 1)
        platform(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0]), 1 + (s == 2))
    rs = load_runs(root)
    speed = speed_table(rs).set_index("optimizer")
    assert speed.loc["sgd", "images/s"] != "mixed hardware (see flags)" and speed.loc["sgd", "s to SGD+1"].startswith("6")
    assert speed.loc["adarem", "images/s"] == speed.loc["adarem", "s to SGD+1"] == "mixed hardware (see flags)"
    assert speed.loc["adarem", "steps to SGD+1"].startswith("30")  # steps still pool
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert "timed on 2 platforms (1 x cpu/1 thread(s); 2 x cpu/1 thread(s))" in text
    assert "optimizers timed on different platforms (adarem: 1 x cpu/1 thread(s); 2 x cpu/1 thread(s), " \
           "sgd: 1 x cpu/1 thread(s)): compare steps, not seconds" in text

    same = tmp_path / "same"  # every run on one platform (the committed study's case): no flag
    for s in range(3):
        platform(make_run(same, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0]), 8, "cuda:0", "NVIDIA H200")
        platform(make_run(same, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0]), 8, "cuda:1", "NVIDIA H200")
    assert "platform" not in write_report(load_runs(same), tmp_path / "out2", CLAIMS_FILE, "test")


def test_records_of_one_folder_spelled_two_ways_pool(tmp_path):
    """Records written before data.root was normalised: /x/t2 and /x/t2/ are one folder."""
    root = tmp_path / "runs"
    for s, spelling in enumerate(["/data/t2", "/data/t2/", "/data//t2"]):
        d = make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0])
        record = json.loads((d / "run.json").read_text())
        record["config"]["data"]["root"] = spelling
        (d / "run.json").write_text(json.dumps(record))
    table = error_table(load_runs(root))
    assert len(table) == 1 and int(table.n.iloc[0]) == 3


def test_replaced_images_of_records_before_the_count_are_a_lower_bound(tmp_path):
    """A record written before run.json counted replaced images has only its epoch lines' count
    (rank 0's, cumulative): flagged as "at least", not read as none."""
    root = tmp_path / "runs"
    for s in range(2):
        d = make_run(root, f"sgd{s}", "sgd", s, [40.0, 20.0, 10.0])
        lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for line in lines:
            if line["type"] == "epoch":
                line["corrupt_skipped"] = 3 * (line["epoch"] + 1) * (s == 0)
        (d / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = write_report(load_runs(root), tmp_path / "out", CLAIMS_FILE, "test")
    assert "trained with at least 9 replacement(s) for unreadable training images" in text


def test_runs_inside_a_staging_folder_are_not_read(tmp_path):
    """An export or download killed midway (or still being written) leaves copies of run records in
    a hidden `.<dest>.staging-XXXXXXXX` folder; a table over the parent folder read them as runs of
    their own (the copy, sorted first, kept and the original listed as its duplicate)."""
    root = tmp_path / "runs"
    make_run(root, "sgd0", "sgd", 0, [40.0, 20.0, 10.0])
    make_run(root / ".export.staging-abcd1234" / "content", "sgd0", "sgd", 0, [40.0, 20.0, 10.0])
    make_run(root / ".export.staging-old" / "content", "sgd1", "sgd", 1, [40.0, 20.0, 10.0])  # not a staging name
    rs = load_runs(root)
    assert sorted(Path(d).relative_to(root).as_posix() for d in rs.runs.run_dir) == \
        [".export.staging-old/content/sgd1", "sgd0"]
    assert not [p for p in rs.problems if "duplicate" in p["problem"]]


def test_setting_labels_name_their_keys_and_add_the_id_only_where_the_keys_shown_do_not_tell_them_apart():
    from adarem.results.records import MAX_LABEL_KEYS, setting_labels

    two = {"a": {"trainer.epochs": 4}, "b": {"trainer.epochs": 8}}
    assert setting_labels(two, two) == {"a": "trainer.epochs=4", "b": "trainer.epochs=8"}
    # a and b agree on the keys a label shows and differ on one past them: before, every label became
    # "setting <id>", with no key at all
    keys = [f"k{i}" for i in range(MAX_LABEL_KEYS + 1)]
    three = {"a": dict.fromkeys(keys, 1), "b": {**dict.fromkeys(keys, 1), keys[-1]: 2},
             "c": dict.fromkeys(keys, 3)}
    labels = setting_labels(three, three)
    shown = "; ".join(f"{k}=1" for k in keys[:MAX_LABEL_KEYS]) + "; ..."
    assert labels == {"a": f"{shown} (setting a)", "b": f"{shown} (setting b)",
                      "c": "; ".join(f"{k}=3" for k in keys[:MAX_LABEL_KEYS]) + "; ... (setting c)"}, labels
    # identical configs (settings told apart by the data's contents): only the id tells them apart
    plain = {"a": {"trainer.epochs": 4}, "b": {"trainer.epochs": 4}}
    assert setting_labels(plain, plain) == {"a": "setting a", "b": "setting b"}


def test_a_duplicate_trained_at_other_code_says_so(tmp_path):
    """A rerun after a code fix, in another folder, was excluded as a plain "duplicate": the tables
    kept the old code's number with no word that the two differ in code (helper-83)."""
    root = tmp_path / "runs"
    old = make_run(root, "old", "sgd", 0, [30.0, 20.0, 10.0])
    new = make_run(root, "new", "sgd", 0, [30.0, 20.0, 5.0], start="2026-02-01T00:00:00")
    for d, commit, dirty in ((old, "a" * 40, False), (new, "b" * 40, True)):
        record = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**record, "git": {"commit": commit, "dirty": dirty}}))
    rs = load_runs(root)
    assert list(rs.runs.final_top1) == [10.0]  # the first started is kept
    said = rs.problems_frame.set_index("run_dir").problem[str(new)]
    assert f"(same config and seed; trained at commit {'b' * 10} with uncommitted changes, the kept one at " \
           f"{'a' * 10}): excluded" in said, said
    # one commit, other uncommitted changes: said too (the rows carry git.diff_sha1)
    for d, diff in ((old, "aaa"), (new, "bbb")):
        record = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**record, "git": {"commit": "c" * 40, "dirty": True, "diff_sha1": diff}}))
    said = load_runs(root).problems_frame.set_index("run_dir").problem[str(new)]
    assert "with other uncommitted changes than the kept one (run.json git.diff_sha1 bbb against aaa)" in said, said


def test_the_first_started_twin_is_kept_within_one_second(tmp_path):
    """run.json's start_time had whole seconds: two trials started within one second tied and the
    tie went to the run directories' names. Now it has microseconds and is read as an instant, so
    the one started first is kept whatever its folder is called; a record of whole seconds (older
    code) still orders as that second's start."""
    root = tmp_path / "runs"
    make_run(root, "a_later", "sgd", 0, [30.0, 20.0, 5.0], start="2026-01-01T00:00:05.700000+00:00")
    make_run(root, "b_first", "sgd", 0, [30.0, 20.0, 10.0], start="2026-01-01T00:00:05.200000+00:00")
    make_run(root, "c_old_code", "sgd", 0, [30.0, 20.0, 1.0], start="2026-01-01T00:00:06+00:00")
    rs = load_runs(root)
    assert list(rs.runs.run_dir.map(lambda p: p.split("/")[-1])) == ["b_first"]
    assert list(rs.runs.final_top1) == [10.0]
    # the selection's "most recently started" reads instants too: a two-seed configuration begun
    # at .9 of a second is newer than one begun at .1 of it
    root2 = tmp_path / "runs2"
    for s in (0, 1):
        make_run(root2, f"x{s}", "sgd", s, [30.0, 20.0, 10.0], lr=0.1, start="2026-01-01T00:00:05.900000+00:00")
        make_run(root2, f"y{s}", "sgd", s, [30.0, 20.0, 12.0], lr=0.2, start="2026-01-01T00:00:05.100000+00:00")
    from adarem.results.tables import selected_groups
    assert set(selected_groups(load_runs(root2).runs).lr) == {0.1}


def test_run_records_start_time_has_microseconds():
    import datetime

    from adarem.run.record import now
    stamp = datetime.datetime.fromisoformat(now())
    assert stamp.tzinfo is not None and len(now().split("T")[1].split("+")[0]) == len("00:00:00.000000")
