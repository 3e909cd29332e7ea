"""Hostile review (helper h2) of the tables' numbers: each test fails on the code before its fix."""

from __future__ import annotations

import math
from pathlib import Path

from adarem.results import load_runs
from adarem.results.tables import sgd_targets, steps_to_target
from tests.conftest import REPO

STUDY_FINALS = REPO / "results" / "fashion_mnist" / "runs" / "final"


def test_an_evaluation_with_the_targets_number_of_mistakes_reaches_it():
    """Errors are 100 * k / n: SGD's median final error plus a whole number of points is a number of
    mistakes, and an evaluation with exactly that many is at the target. Float rounding made them
    differ in the last bit (on the committed study, 12.580000000000002 after 468 steps against a
    target of 7.579999999999998 + 5): the run was counted as not there yet."""
    rs = load_runs(STUDY_FINALS)
    checked = 0
    for setting, targets in sgd_targets(rs, (1.0, 5.0)).items():
        for target in targets:
            runs = rs.runs[(rs.runs.dataset == setting[0]) & (rs.runs.model == setting[1])]
            for run, (step, _) in zip(runs.itertuples(), steps_to_target(rs, runs, target)):
                ev = rs.evals[rs.evals.run_dir == run.run_dir]
                at = ev[(ev.val_top1_err - target).abs() <= 1e-9 * max(1.0, abs(target))]
                if len(at):
                    checked += 1
                    assert step <= at.step.min(), (run.run_dir, target, at.val_top1_err.tolist(), step)
    assert checked, "the committed study no longer has an evaluation at a target: the test checks nothing"


def _make_tables(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


CLAIM = "  - {id: x, text: t, metric: final_top1, subject: adarem, baseline: adam, better: %s}\n"


def test_a_bad_claims_file_is_one_line_before_anything_is_read_or_written(tmp_path):
    """A claims file with a bad direction, a list at the top, broken YAML or a repeated id (which
    would count one claim twice in its Holm family) was a traceback after every table was computed,
    or, for the repeated id, two rows of one claim and a family one too large."""
    bad = {"direction": "claims:\n" + CLAIM % "LOWER",
           "not a mapping": "- a\n- b\n",
           "broken yaml": "claims: [\n",
           "repeated id": "claims:\n" + CLAIM % "lower" + CLAIM % "lower"}
    for what, text in bad.items():
        claims, out = tmp_path / f"{what}.yaml", tmp_path / f"out {what}"
        claims.write_text(text)
        res = _make_tables(STUDY_FINALS, "--out", out, "--claims", claims)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --claims"), (what, res.stderr)
        assert str(claims) in lines[0], what
        assert not out.exists(), what
        if what == "direction":
            assert "'LOWER'" in lines[0]


def test_nothing_to_tabulate_leaves_no_empty_output_folder(tmp_path):
    (tmp_path / "runs").mkdir()
    out = tmp_path / "new" / "out"
    res = _make_tables(tmp_path / "runs", "--out", out)
    assert res.returncode == 2 and "no complete run" in res.stderr
    assert not (tmp_path / "new").exists()


def test_train_loss_at_a_point_is_never_an_earlier_windows(tmp_path, env):
    """'train loss @50%' of a 66-step run logged every 20 steps (lines at 20, 22, 40, 44, 60, 66) was
    the window ending at step 22 (a third of the way) for want of a line in (26.4, 33]: a number
    under the name of another point of training. Where no logging window ends in the 10 % before a
    point there is no value (the cell counts it), as where nothing was logged before it."""
    from adarem.results.tables import TRAIN_LOSS_SPAN, train_loss_at
    from tests.conftest import run_train

    run_dir = tmp_path / "run"
    res = run_train(["trainer.epochs=3", "trainer.log_every=20", "optimizer=sgd"], env, run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    rs = load_runs(run_dir)
    (run,) = rs.runs.itertuples()
    steps = rs.iters.step.tolist()
    stale = 0
    for frac in (0.1, 0.25, 0.5, 1.0):
        at = frac * run.budget_steps
        in_span = [s for s in steps if at - TRAIN_LOSS_SPAN * run.budget_steps < s <= at]
        value = train_loss_at(rs, run.run_dir, run.budget_steps, frac)
        if in_span:
            assert math.isfinite(value), frac
        else:
            stale += any(s <= at for s in steps)  # a window ended before the span: the old code read it
            assert math.isnan(value), (frac, at, steps, value)
    assert stale, f"no point of this run has only an earlier window (lines at {steps}): the test checks nothing"


def test_claims_csv_holds_what_decides_every_verdict(tmp_path):
    """claims.csv had p and p_holm but not the opposite direction's Holm-adjusted p that makes a
    claim Contradicted (the committed study's lower_error_than_adamw: p_holm 1.0, verdict
    Contradicted, nothing in the file saying why), nor the claim's direction or an Inconclusive
    claim's mdd, which tables.md shows."""
    import pandas as pd

    from adarem.results import CLAIMS_FILE, write_report
    from adarem.results.claims import load_claims

    write_report(load_runs(STUDY_FINALS), tmp_path / "out", CLAIMS_FILE, "test")
    csv = pd.read_csv(tmp_path / "out" / "claims.csv")
    spec = {c["id"]: c for c in load_claims(CLAIMS_FILE)["claims"]}
    tested = csv[csv.p.notna()]
    assert len(tested) and "Contradicted" in set(tested.verdict)
    for r in tested.itertuples():
        assert r.better == spec[r.claim]["better"]
        expected = "Supported" if r.p_holm < 0.05 else "Contradicted" if r.p_opposite_holm < 0.05 else "Inconclusive"
        assert r.verdict == expected, r
        if r.verdict == "Inconclusive" and r.metric != "steps_to_target":
            assert r.mdd > 0, r


def _study_subset(tmp_path, optimizers, diverged=()):
    """A runs folder of the committed study's finals of these optimizers (symlinked), those of
    ``diverged`` copied with their status set to diverged at their last step."""
    import json
    import shutil

    root = tmp_path / "runs" / "final"
    root.mkdir(parents=True)
    for opt in optimizers:
        if opt not in diverged:
            (root / opt).symlink_to(STUDY_FINALS / opt)
            continue
        shutil.copytree(STUDY_FINALS / opt, root / opt)
        for rec in (root / opt).glob("*/run.json"):
            run = json.loads(rec.read_text())
            run.update(status="diverged", diverged_at_step=run["steps_per_epoch"] * run["config"]["trainer"]["epochs"])
            rec.write_text(json.dumps(run))
    return tmp_path / "runs"


def test_a_setting_without_a_speed_target_says_so_and_counts_its_runs(tmp_path):
    """Without SGD-momentum (optimizers=adarem,adam,adamw) or with every SGD-momentum run diverged,
    the steps-to-target claims read 'adarem (—, 0)' 'Insufficient data', defined as a side with fewer
    than 2 seeds, for sides of 5 runs each; the speed table said 'no SGD baseline' beside SGD's runs."""
    from adarem.results import CLAIMS_FILE
    from adarem.results.claims import evaluate_claims, load_claims
    from adarem.results.tables import speed_table

    for case, diverged in (("none", ()), ("diverged", ("sgd",))):
        opts = ("adarem", "adam", "adamw") + (("sgd",) if diverged else ())
        rs = load_runs(_study_subset(tmp_path / case, opts, diverged))
        assert len(rs.runs) == 5 * len(opts)
        v = evaluate_claims(rs, load_claims(CLAIMS_FILE)).set_index("claim")
        for claim in ("faster_than_adam", "faster_than_adamw"):
            row = v.loc[claim]
            assert row.n_subject == 5 and row.n_baseline == 5, (case, row)
            assert row.verdict.startswith("Insufficient data (") and ("finished" if diverged else "no SGD") in row.verdict
        speed = speed_table(rs).set_index("optimizer")
        cell = speed.loc["adarem", "steps to SGD+1"]
        assert cell == ("no target: none of SGD-momentum's 5 run(s) finished" if diverged else "no SGD baseline"), cell


def test_sides_without_spread_get_no_point_interval(tmp_path):
    """Steps to a target every seed reaches at the first evaluation (the committed study at SGD + 60
    points): each side is one value repeated, and the 95 % CI collapsed onto the difference, [0, 0],
    certainty that 5 seeds cannot give. No interval, and the rank test's p."""
    from adarem.results import CLAIMS_FILE
    from adarem.results.claims import evaluate_claims, load_claims

    rs = load_runs(STUDY_FINALS)
    v = evaluate_claims(rs, load_claims(CLAIMS_FILE), target_offset=60.0).set_index("claim")
    for claim in ("faster_than_adam", "faster_than_adamw"):
        row = v.loc[claim]
        assert row.reached_subject == row.n_subject == 5 and row["diff"] == 0, row
        assert math.isnan(row.ci_low) and math.isnan(row.ci_high), row
        assert row.p == 1.0 and row.verdict == "Inconclusive", row


def test_export_copies_runs_below_a_symlinked_folder(tmp_path):
    """A runs folder whose final/ is a symlink (moved to a bigger disk, as comparisons.py allows):
    export_runs copied the selection trials and none of the finals (rglob does not follow symlinked
    folders), exit 0, so the copy's tables had no test results at all."""
    import shutil

    from adarem.results.export import export_runs

    src = tmp_path / "src"
    (src / "select").mkdir(parents=True)
    trial = next((REPO / "results" / "fashion_mnist" / "runs" / "select" / "sgd").iterdir())
    shutil.copytree(trial, src / "select" / "sgd" / trial.name)
    (src / "final").symlink_to(STUDY_FINALS)
    n = export_runs(src, tmp_path / "dest")
    before, after = load_runs(src).runs, load_runs(tmp_path / "dest").runs
    rel = lambda runs, root: sorted(str(Path(d).relative_to(root)) for d in runs.run_dir)  # noqa: E731
    assert n == len(before) and rel(after, tmp_path / "dest") == rel(before, src)
    assert (after.eval_on == "val").sum() == len(list(STUDY_FINALS.glob("*/*/run.json")))


def test_export_of_a_folder_holding_a_symlinked_runs_folder_keeps_its_manifests(tmp_path):
    """SRC/a is a symlink to a comparison's runs folder: the export refused it, saying its manifests
    were in SRC/a/comparisons, 'outside' SRC; copied without them, its tables would pool runs that
    the manifests keep apart. The copy's runs, manifests included, tabulate as the original's."""
    from adarem.results.comparisons import write_manifest
    from adarem.results.export import export_runs

    runs = tmp_path / "disk" / "runs"
    runs.mkdir(parents=True)
    (runs / "final").symlink_to(STUDY_FINALS)
    adam = sorted((runs / "final" / "adam").iterdir())
    write_manifest(runs, "compare optimizers=adam seeds=3", {}, [], {"adam": {}}, [str(d) for d in adam[:3]])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").symlink_to(runs)
    export_runs(tmp_path / "src", tmp_path / "dest")
    assert len(list((tmp_path / "dest" / "a" / "comparisons").glob("*.json"))) == 1
    before, after = load_runs(tmp_path / "src"), load_runs(tmp_path / "dest")
    for rs in (before, after):
        assert (rs.runs.optimizer == "adam").sum() == 3  # the manifest's seeds only
    assert len(after.runs) == len(before.runs)


def test_a_runs_dir_that_is_a_file_is_not_said_to_be_missing(tmp_path):
    record = next(STUDY_FINALS.glob("*/*/run.json"))
    res = _make_tables(record, "--out", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"runs directory {record} is a file, not a directory" in res.stderr
    assert not (tmp_path / "out").exists()


def test_steps_claims_are_shown_at_every_target_of_the_speed_table(tmp_path):
    """The committed study's "faster than AdamW" is Supported at SGD + 1 point and not at + 5, the
    speed table's second target; only the first target's verdict was reported."""
    from adarem.results import CLAIMS_FILE, write_report

    text = write_report(load_runs(STUDY_FINALS), tmp_path / "out", CLAIMS_FILE, "test", offsets=(1.0, 5.0))
    section = text[text.index("### Steps-to-target claims at each target"):text.index("### Steps-to-target claims on "
                                                                                      "coarser evaluation grids")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[4:6]]
            for line in section.splitlines() if line.startswith("| faster")}
    assert rows == {"faster_than_adam": ["Inconclusive (0.556)", "Inconclusive (0.913)"],
                    "faster_than_adamw": ["Supported (0.0198)", "Inconclusive (1)"]}, rows
    text = write_report(load_runs(STUDY_FINALS), tmp_path / "one", CLAIMS_FILE, "test", offsets=(1.0,))
    assert "### Steps-to-target claims at each target" not in text


def test_the_steps_claims_are_shown_on_coarser_evaluation_grids(tmp_path):
    """helper-87: the committed study's "faster than AdamW" is Supported with its curves sampled 4
    times an epoch, at the smallest p the rank test can give (1/252, every AdaRem seed before every
    AdamW seed), and Inconclusive from the same runs sampled 2 or 1 times an epoch; nothing said so."""
    from adarem.results import CLAIMS_FILE, write_report

    text = write_report(load_runs(STUDY_FINALS), tmp_path / "out", CLAIMS_FILE, "test", offsets=(1.0, 5.0))
    section = text[text.index("### Steps-to-target claims on coarser evaluation grids"):]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[4:8]]
            for line in section.splitlines() if line.startswith("| faster")}
    assert rows["faster_than_adamw"] == ["0.00397", "Supported (0.0198, p at the floor)", "Inconclusive (0.0794)",
                                         "Inconclusive (0.0992)"], rows
    assert rows["faster_than_adam"][1] == "Inconclusive (0.556)"
    assert "keeping every 2nd or 4th evaluation" in section and "smallest p possible (raw)" in section


def test_coarser_grid_keeps_the_evaluations_a_coarser_run_would_have_made():
    from adarem.results.tables import coarser_grid

    rs = load_runs(STUDY_FINALS)
    run = rs.runs.run_dir.iloc[0]
    every = rs.evals[rs.evals.run_dir == run].step.tolist()
    assert set(rs.runs.evals_per_epoch) == {4} and len(every) == 4 * 8
    half = coarser_grid(rs, 2)
    assert half.evals[half.evals.run_dir == run].step.tolist() == every[1::2]
    assert set(half.runs.evals_per_epoch) == {2}
    ends = coarser_grid(rs, 1).evals
    assert ends[ends.run_dir == run].step.tolist() == every[3::4]  # the epoch ends
    assert coarser_grid(rs, 3) is None  # 4 is no multiple of 3


def test_the_oscillation_claims_are_shown_at_every_shared_learning_rate(tmp_path):
    """helper-87: the oscillation claims pair each optimizer at its own selected lr, and the
    measures move with the lr by more than the claimed effects; the selection trials hold both
    sides at shared lrs. On the committed study the claimed direction holds at each of them."""
    from adarem.results import CLAIMS_FILE, write_report

    text = write_report(load_runs(STUDY_FINALS.parent), tmp_path / "out", CLAIMS_FILE, "test")
    section = text[text.index("### Oscillation claims at shared learning rates"):text.index("## Excluded")]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == 16 and {r[-1] for r in rows} == {"yes"}, rows
    flips = {r[3]: (r[4], r[5]) for r in rows if r[0] == "momentum_variant_oscillates_less_than_sgd"}
    assert flips["0.316"] == ("adarem_m (0.0001; 7.70 %, 2)", "sgd (0.0001; 12.69 %, 2)"), flips


def test_the_shared_lr_section_keeps_weight_decays_apart_and_says_tie(tmp_path):
    """helper-89: under search=lr_wd the selection trials hold several weight decays per lr, which the
    section averaged together; and equal means read "no"."""
    import json

    import yaml

    from adarem.results.report import matched_lr_markdown
    from tests.results.test_tables import make_run

    root = tmp_path / "runs"
    flips = {("adarem", 0.1, 1e-4): 0.2, ("adarem", 0.1, 1e-3): 0.6, ("sgd_plain", 0.1, 1e-4): 0.4,
             ("sgd_plain", 0.1, 1e-3): 0.6}
    for (opt, lr, wd), flip in flips.items():
        for s in range(2):
            d = make_run(root, f"{opt}_{wd}_{s}", opt, s, [30.0, 20.0, 10.0], lr=lr, osc=[flip, flip])
            record = json.loads((d / "run.json").read_text())
            record["config"]["data"]["eval_on"] = "holdout"
            record["config"]["optimizer"]["weight_decay"] = wd
            (d / "run.json").write_text(json.dumps(record))
    claims = tmp_path / "claims.yaml"
    claims.write_text(json.dumps({"claims": [{"id": "osc", "text": "t", "metric": "flip_fraction", "subject": "adarem",
                                              "baseline": "sgd_plain", "better": "lower"}]}))
    text = matched_lr_markdown(load_runs(root), yaml.safe_load(claims.read_text()))
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| osc")]
    got = {(r[4], r[5]): r[6] for r in rows}
    assert got[("adarem (0.0001; 20.00 %, 2)", "sgd_plain (0.0001; 40.00 %, 2)")] == "yes"
    assert got[("adarem (0.001; 60.00 %, 2)", "sgd_plain (0.001; 60.00 %, 2)")] == "tie"
    assert got[("adarem (0.001; 60.00 %, 2)", "sgd_plain (0.0001; 40.00 %, 2)")] == "no"
    assert len(rows) == 4
