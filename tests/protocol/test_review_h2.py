"""Hostile review (helper h2) of compare.py's arguments: each test fails on the code before its fix."""

from __future__ import annotations

import pytest

from tests.protocol.test_compare_prelaunch import QUICK, nothing_written, refused


@pytest.mark.parametrize("bad", ["lr_span=inf", "lr_step=inf", "lr_span=-inf"])
def test_an_infinite_lr_span_or_step_is_one_line(capsys, tmp_path, bad):
    """lr_span=inf was an OverflowError traceback (round(inf)); lr_step=inf was refused as 'not a
    whole number of lr_step=inf steps (0)'."""
    key, value = bad.split("=")
    line = refused(capsys, [*[a for a in QUICK if not a.startswith("lr_grid")], bad, "dry_run=true",
                            f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}"])
    assert f"{key}={float(value)}" in line and "finite" in line, line
    nothing_written(tmp_path)


def test_a_chosen_lr_next_to_a_crashed_trial_is_flagged():
    """A trial that failed (an exception, not a divergence) scores as the worst, like a diverged one,
    but says nothing about its lr: the lr next to it was chosen and reported 'on the edge? no', and
    nothing in tables.md said that a trial had failed."""
    from adarem.protocol.report import edge_summary, selection_table
    from adarem.protocol.search import Search

    s = Search("sgd", 0.1, [1e-4], [0.1, 1, 10], 0.5)
    lo, mid, hi = s.lrs
    for lr, err in ((lo, 20.0), (mid, 10.0), (hi, 5.0)):
        for seed in (1000, 1001):
            s.results[(lr, 1e-4, seed)] = dict(status="finished", err=err, loss=err / 10)
    s.results[(hi, 1e-4, 1001)] = dict(status="failed", error="RuntimeError: worker lost")  # the best lr, crashed
    chosen = {"sgd": s.best([1000, 1001])}
    assert chosen["sgd"][0] == mid and s.edge(mid) == ""
    row = next(line for line in selection_table({"sgd": s}, chosen, [1000, 1001], [0.1, 1, 10]).splitlines()
               if line.startswith("| sgd"))
    assert "the lr above it, 1, did not run to an end on 1 of 2 seed(s) (failed: RuntimeError: worker lost)" in row
    assert any("did not run to an end" in line for line in edge_summary({"sgd": s}, chosen))
    # a diverged neighbour is a result (too high an lr), not flagged
    s.results[(hi, 1e-4, 1001)] = dict(status="diverged", err=float("nan"))
    chosen = {"sgd": s.best([1000, 1001])}
    assert "did not run" not in selection_table({"sgd": s}, chosen, [1000, 1001], [0.1, 1, 10])
    assert edge_summary({"sgd": s}, chosen) == []


def test_a_refused_trial_stops_the_comparison_without_training_the_rest_of_its_stage(tmp_path, env):
    """The first selection trial's directory holds another configuration's run: compare.py refused it
    at once, then trained every other trial of the stage before exiting (the pool's shutdown waited
    for all submitted trials): 'stops the comparison' after hours on a real grid."""
    import json
    import subprocess
    import sys

    from adarem.protocol import cli
    from adarem.protocol.dispatch import compose
    from tests.conftest import REPO

    runs = tmp_path / "runs"
    argv = ["optimizers=sgd", "seeds=1", "select_seeds=1", "lr_span=1", "trainer.epochs=1", "workers=1",
            f"runs={runs}", f"out={tmp_path / 'out'}"]
    own, passthrough = cli.parse(argv)
    base = cli.trial_base(passthrough)
    sgd = compose([*base, "optimizer=sgd"])
    lrs = [float(sgd.optimizer.lr) * f for f in cli.lr_factors(own)]
    first = cli.trial_overrides(base, [], runs, "sgd", lrs[0], float(sgd.optimizer.weight_decay), 1000, "select")
    run_dir = tmp_path / "runs" / "select" / "sgd" / compose(first).run_dir.split("/")[-1]
    run_dir.mkdir(parents=True)
    other = compose([*base, "optimizer=adam"])  # a finished record of another configuration
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config": {
        "optimizer": {"name": "adam", "lr": float(other.optimizer.lr)}, "seed": 0}}))
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "trial refused" in res.stderr, res.stderr[-2000:]
    trained = [d for d in (runs / "select" / "sgd").iterdir() if d != run_dir]
    # at most the trials in flight when the refusal was read (2 x workers submitted at a time): not all 4
    assert len(trained) <= 2, sorted(d.name for d in trained)


@pytest.mark.parametrize("bad", ["optimizer=adam", "data.eval_on=val", "run_dir=/tmp/x"])
def test_a_key_every_trial_sets_is_refused_not_ignored(capsys, tmp_path, bad):
    """optimizer=adam compared the six default optimizers, data.eval_on=val still scored the search
    on the holdout and run_dir= was replaced: each silently (the trial's own value comes last)."""
    line = refused(capsys, [*QUICK, bad, "dry_run=true", f"runs={tmp_path / 'r'}", f"out={tmp_path / 'o'}"])
    assert line.startswith(f"error: {bad} is set by the protocol for every trial"), line
    nothing_written(tmp_path)
