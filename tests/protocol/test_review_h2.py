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
