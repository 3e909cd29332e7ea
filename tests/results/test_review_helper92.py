"""Hostile review (helper-92, a user's first hours) of the report: each test fails on the code
before its fix."""

from __future__ import annotations

import json

from adarem.results import load_runs
from tests.results.test_tables import make_run

OSC_CLAIM = {"claims": [{"id": "osc", "text": "t", "metric": "flip_fraction", "subject": "adarem",
                         "baseline": "sgd_plain", "better": "lower"}]}


def _trial(root, name, optimizer, seed, flip, epochs, every=None):
    """A selection trial (holdout split) of a setting trained ``epochs`` epochs."""
    d = make_run(root, name, optimizer, seed, [30.0, 20.0, 10.0][-epochs:], osc=[flip, flip],
                 trainer={"epochs": epochs, **({"oscillation_every": every} if every else {})})
    record = json.loads((d / "run.json").read_text())
    record["config"]["data"]["eval_on"] = "holdout"
    (d / "run.json").write_text(json.dumps(record))
    return d


def test_the_shared_lr_section_keeps_the_trials_of_two_settings_apart(tmp_path):
    """Two comparisons in one runs folder (trainer.epochs=2 and 3, the documented default): their
    selection trials were pooled into one row per lr, labelled with the bare dataset name, and the
    pooled row said the opposite of one of the settings."""
    from adarem.results.report import matched_lr_markdown

    root = tmp_path / "runs"
    for s in range(2):
        _trial(root, f"a2_{s}", "adarem", s, 0.30, epochs=2)
        _trial(root, f"b2_{s}", "sgd_plain", s, 0.31, epochs=2)
        _trial(root, f"a3_{s}", "adarem", s, 0.40, epochs=3)
        _trial(root, f"b3_{s}", "sgd_plain", s, 0.31, epochs=3)
    rs = load_runs(root)
    assert set(rs.runs.dataset) == {"toy (trainer.epochs=2)", "toy (trainer.epochs=3)"}
    text = matched_lr_markdown(rs, OSC_CLAIM)
    rows = {r[1]: (r[4], r[5], r[6]) for r in
            ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| osc"))}
    assert rows == {"toy (trainer.epochs=2)": ("adarem (0; 30.00 %, 2)", "sgd_plain (0; 31.00 %, 2)", "yes"),
                    "toy (trainer.epochs=3)": ("adarem (0; 40.00 %, 2)", "sgd_plain (0; 31.00 %, 2)", "no")}, rows


def test_oscillation_recorded_at_different_intervals_is_neither_pooled_nor_compared(tmp_path):
    """Both measures are means over the recorded steps: one AdaRem training gave adarem - sgd_plain
    flips of +0.015 recorded every 10 steps and -0.011 every 60, and the second still got a verdict
    (only path efficiency checked its window); runs of one configuration at two intervals were
    averaged into one cell."""
    from adarem.results import CLAIMS_FILE, write_report
    from adarem.results.claims import evaluate_claims, load_claims
    from adarem.results.tables import MIXED_INTERVAL, oscillation_table
    from tests.results.test_review_integrity import _lines, _write_lines

    def osc(d, flip, every):
        lines = [r for r in _lines(d) if r["type"] != "oscillation"]
        lines += [{"type": "oscillation", "step": every * (i + 1), "flip_fraction": flip, "path_efficiency": 0.5,
                   "path_window": 10} for i in range(30 // every)]
        _write_lines(d, lines)

    root = tmp_path / "runs"
    for s in range(3):
        osc(make_run(root, f"adarem{s}", "adarem", s, [30.0, 15.0, 8.0 + 0.1 * s]), 0.20 + 0.01 * s, every=15)
        osc(make_run(root, f"plain{s}", "sgd_plain", s, [30.0, 15.0, 9.0 + 0.1 * s]), 0.30 + 0.01 * s, every=10)
        osc(make_run(root, f"adarem_m{s}", "adarem_m", s, [30.0, 15.0, 8.0 + 0.1 * s]), 0.1, every=10 if s else 15)
    rs = load_runs(root)
    assert dict(zip(rs.runs.run_dir.str.split("/").str[-1], rs.runs.osc_every))["adarem0"] == "15"
    table = oscillation_table(rs).set_index("optimizer")
    assert table.loc["adarem_m", "update sign-flip fraction"] == MIXED_INTERVAL
    assert table.loc["adarem", "update sign-flip fraction"] == "21.00 ± 1.00 % (every 15)"
    assert table.loc["sgd_plain", "path efficiency"] == "50.00 ± 0.00 % (every 10)"
    verdicts = evaluate_claims(rs, load_claims(CLAIMS_FILE)).set_index("claim").verdict
    for claim in ("oscillates_less_than_sgd_plain", "straighter_path_than_sgd_plain"):
        assert verdicts[claim] == "Not comparable (oscillation recorded at different intervals)", verdicts[claim]
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert "recorded at different intervals (every 10 steps: 2 run(s), every 15 steps: 1 run(s))" in text
    assert "optimizers' sign flips and path efficiency recorded at different intervals" in text


def test_evaluations_every_few_epochs_are_said_and_give_no_area(tmp_path):
    """trainer.eval_every=3 over 4 epochs evaluates at the ends of epochs 3 and 4: the report said
    "Evaluations: 1 per epoch", and the AUC "over evenly spaced evaluations" was the mean of those
    two unevenly spaced points."""
    from adarem.results import CLAIMS_FILE, write_report
    from adarem.results.tables import speed_table
    from tests.results.test_review_integrity import _lines, _write_lines

    root = tmp_path / "runs"
    for opt in ("sgd", "adarem"):
        for s in range(2):
            d = make_run(root, f"{opt}{s}", opt, s, [40.0, 30.0, 20.0, 10.0 + s], trainer={"epochs": 4, "eval_every": 3})
            lines = _lines(d)
            for r in lines:
                if r["type"] == "epoch" and r["epoch"] < 2:  # not evaluated
                    for k in ("val_top1_err", "val_top5_err", "val_loss"):
                        del r[k]
            _write_lines(d, lines)
    rs = load_runs(root)
    assert set(rs.runs.eval_every) == {3} and len(rs.evals) == 2 * 4
    assert set(speed_table(rs)["val-err AUC"]) == {"—"}
    text = write_report(rs, tmp_path / "out", CLAIMS_FILE, "test")
    assert "Evaluations: at every 3rd epoch's end and the last, with" in text
    assert "1 per epoch" not in text


def test_a_claims_file_naming_no_known_optimizer_or_no_claims_is_refused(tmp_path):
    """--claims with 'adaremm' (timm's name) or 'SGD' gave exit 0 and "Insufficient data"; a
    folder was said not to exist; an empty file wrote a report without claims and said nothing
    (--claims '' is how none are asked for)."""
    from tests.results.test_review_h2 import STUDY_FINALS, _make_tables

    cases = {"adaremm": "claims:\n  - {id: t, text: x, metric: final_top1, subject: adaremm, baseline: adam, better: lower}\n",
             "SGD": "claims:\n  - {id: t, text: x, metric: final_top1, subject: adarem, baseline: SGD, better: lower}\n",
             "empty": ""}
    for what, text in cases.items():
        claims, out = tmp_path / f"{what}.yaml", tmp_path / f"out_{what}"
        claims.write_text(text)
        res = _make_tables(STUDY_FINALS, "--out", out, "--claims", claims)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --claims {claims}"), res.stderr
        assert (f"optimizer {what!r} is neither a preset" in lines[0] and "adarem_m" in lines[0] if what != "empty"
                else "holds no claims" in lines[0]), lines[0]
        assert not out.exists()
    res = _make_tables(STUDY_FINALS, "--out", tmp_path / "o", "--claims", tmp_path)
    assert res.returncode == 2 and f"--claims {tmp_path} is a directory" in res.stderr, res.stderr


def test_a_skipped_oscillation_record_keeps_the_runs_interval():
    """Five of the committed study's trials miss one record (a resume from a checkpoint without the
    tracker's state): read off the gaps between records they were 'every 10/20', apart from the rest."""
    from adarem.results.records import _oscillation_every

    lines = lambda steps: [{"type": "oscillation", "step": s} for s in steps]  # noqa: E731
    assert _oscillation_every(lines([10, 20, 40, 50])) == "10"
    assert _oscillation_every(lines([60, 120])) == "60"
    assert _oscillation_every([]) == ""
